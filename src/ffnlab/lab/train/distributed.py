"""Data-parallel lab runs: one process per device, ``DistributedDataParallel`` between them.

Two ways to start them::

    torchrun --nproc-per-node 2 -m ffnlab compare ...   # torchrun sets RANK, WORLD_SIZE, ...
    ffnlab compare --nproc 2 ...                        # starts 2 such processes on 127.0.0.1

Every rank draws the *global* batch from the same seeded generator (``data.BatchSampler``) and
keeps its own contiguous slice of ``batch_size / world_size`` rows (:meth:`DistContext.shard`).
DDP averages the gradients, and the mean of equal-sized shards' mean losses is the global
batch's mean loss, so a run on N processes computes the 1-process run's steps; only the
order of floating-point reductions differs (tested to 1e-4 relative in bits per byte).

Rank 0 owns the files: it reads checkpoints and broadcasts what the others need (training
state as JSON, sampler and optimizer state as tensors), writes run files, checkpoints,
results.json and the report, and shows progress; the other ranks print nothing. Every
collective runs under the process group's timeout (``--dist-timeout``, default 600 s), so a
rank that dies or stalls makes the others fail instead of waiting forever (torchrun usually
stops them sooner: it tears the whole group down when one worker exits with an error).

Communication: gloo on CPU, nccl on CUDA (each rank on ``cuda:LOCAL_RANK``). Broadcasts carry
raw tensors and UTF-8 JSON, never pickles (``broadcast_object_list`` would pickle).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...errors import UsageError, check_positive_int

__all__ = [
    "DistContext",
    "PeerError",
    "SINGLE",
    "env_world_size",
    "env_rank",
    "check_world_size",
    "init_from_env",
    "shutdown",
    "torchrun_command",
    "launch",
    "child_env",
    "DEFAULT_TIMEOUT_S",
]

DEFAULT_TIMEOUT_S = 600.0


class PeerError(UsageError):
    """Raised on ranks other than 0 when rank 0 refused the run (rank 0 prints the reason)."""


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it, 1 outside torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    """``RANK`` as torchrun sets it, 0 outside torchrun."""
    return int(os.environ.get("RANK", "0"))


def check_world_size(world_size: int, batch_size: int) -> int:
    """The per-rank batch ``batch_size // world_size``, or a UsageError if it does not split."""
    if world_size > batch_size:
        raise UsageError(
            f"{world_size} processes but the global batch holds only {batch_size} sequences; "
            f"use at most {batch_size} processes"
        )
    if batch_size % world_size:
        divisors = [d for d in range(1, batch_size + 1) if batch_size % d == 0]
        raise UsageError(
            f"the global batch of {batch_size} sequences does not split evenly over "
            f"{world_size} processes; use one of {', '.join(map(str, divisors))}"
        )
    return batch_size // world_size


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the group; ``world_size == 1`` means no group at all.

    All collective methods are no-ops (returning their input) on a single process, so the
    training code calls them unconditionally.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    # --- data ---------------------------------------------------------------------------------

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous rows of a global batch ``[B, ...]`` -> ``[B / world, ...]``.

        Equivalent PyTorch: ``batch.chunk(world_size)[rank]`` with ``B % world_size == 0``.
        """
        if not self.distributed:
            return batch
        per = check_world_size(self.world_size, batch.shape[0])
        return batch[self.rank * per : (self.rank + 1) * per]

    def split_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's part of ``rows [N, ...]`` for evaluation; parts may differ by one row."""
        if not self.distributed:
            return rows
        return torch.tensor_split(rows, self.world_size)[self.rank]

    # --- collectives --------------------------------------------------------------------------

    def _comm(self, t: torch.Tensor) -> torch.Tensor:
        # nccl moves only CUDA tensors; gloo takes CPU ones.
        return t.to(self.device) if self.device.type == "cuda" else t

    def all_reduce_sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum over ranks of a few float64 scalars."""
        if not self.distributed:
            return list(values)
        import torch.distributed as dist

        t = self._comm(torch.tensor(list(values), dtype=torch.float64))
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu().tolist()

    def broadcast_tensor_(self, t: torch.Tensor) -> torch.Tensor:
        """Overwrite ``t`` on every rank with rank 0's ``t`` (same shape and dtype everywhere)."""
        if not self.distributed:
            return t
        import torch.distributed as dist

        buf = self._comm(t.detach().contiguous())
        dist.broadcast(buf, src=0)
        if buf is not t:
            with torch.no_grad():
                t.copy_(buf.to(t.device))
        return t

    def broadcast_bytes(self, data: bytes | None) -> bytes:
        """Rank 0's ``data`` on every rank (the others pass None): length, then the bytes."""
        if not self.distributed:
            return b"" if data is None else data
        n = torch.tensor([len(data) if self.is_main and data is not None else 0], dtype=torch.int64)
        self.broadcast_tensor_(n)
        buf = torch.zeros(int(n.item()), dtype=torch.uint8)
        if self.is_main and data:
            buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        if buf.numel():
            self.broadcast_tensor_(buf)
        return buf.numpy().tobytes()

    def broadcast_json(self, obj: Any = None) -> Any:
        """Rank 0's JSON-able ``obj`` on every rank."""
        if not self.distributed:
            return obj
        data = json.dumps(obj).encode("utf-8") if self.is_main else None
        return json.loads(self.broadcast_bytes(data).decode("utf-8"))

    def agree(self, fn, *args, **kwargs) -> Any:
        """Run ``fn`` on rank 0 only and return its JSON-able result on every rank.

        A UsageError on rank 0 is raised there and as :class:`PeerError` on the others, so
        every rank stops with the same exit status and only rank 0 prints the message.
        """
        if not self.distributed:
            return fn(*args, **kwargs)
        err = None
        result = None
        if self.is_main:
            try:
                result = fn(*args, **kwargs)
            except UsageError as exc:
                err = exc
        reply = self.broadcast_json({"error": str(err)} if err is not None else {"ok": result})
        if err is not None:
            raise err
        if "error" in reply:
            raise PeerError(reply["error"])
        return reply["ok"]

    def broadcast_module_(self, module: torch.nn.Module) -> None:
        """Every parameter and buffer of ``module`` set to rank 0's values."""
        for t in list(module.parameters()) + list(module.buffers()):
            self.broadcast_tensor_(t.data)

    def broadcast_optimizer_(self, opt: torch.optim.Optimizer) -> None:
        """Rank 0's optimizer state (e.g. AdamW's ``step``, ``exp_avg``, ``exp_avg_sq``) on all.

        The layout (per parameter index: tensor names, shapes, dtypes; non-tensor values) goes
        as JSON, then each tensor by broadcast; the others rebuild the state dict and load it.
        """
        if not self.distributed:
            return
        sd = opt.state_dict()
        layout = None
        if self.is_main:
            layout = {
                str(idx): {
                    name: ({"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
                           if isinstance(v, torch.Tensor) else {"value": v})
                    for name, v in st.items()
                }
                for idx, st in sd["state"].items()
            }
        layout = self.broadcast_json(layout)
        state: dict[int, dict[str, Any]] = {}
        for idx, names in layout.items():
            for name, spec in names.items():
                if "value" in spec:
                    state.setdefault(int(idx), {})[name] = spec["value"]
                    continue
                t = (sd["state"][int(idx)][name].detach().cpu().contiguous() if self.is_main else
                     torch.empty(spec["shape"], dtype=getattr(torch, spec["dtype"])))
                state.setdefault(int(idx), {})[name] = self.broadcast_tensor_(t)
        if not self.is_main:
            opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``DistributedDataParallel(model)`` in a group (it broadcasts rank 0's weights), else
        ``model`` itself."""
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)


SINGLE = DistContext()


def init_from_env(device: torch.device, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> DistContext:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``MASTER_PORT``); :data:`SINGLE` outside torchrun.

    gloo for ``device`` cpu, nccl for cuda (the rank then uses ``cuda:LOCAL_RANK``). Every
    collective afterwards fails after ``timeout_s`` seconds instead of hanging.
    """
    world = env_world_size()
    if world <= 1:
        return DistContext(device=device)
    if not timeout_s > 0:
        raise UsageError(f"--dist-timeout must be a positive number of seconds, got {timeout_s!r}")
    import torch.distributed as dist

    rank, local_rank = env_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"local rank {local_rank} has no GPU: this machine has "
                             f"{torch.cuda.device_count()}; use fewer processes per node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        kw = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, timeout=dt.timedelta(seconds=timeout_s), **kw)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device)


def shutdown(ctx: DistContext, *, orderly: bool = False) -> None:
    """Leave the process group (if this process joined one).

    ``orderly`` (the run ended normally on this rank): wait at a barrier first, so that no
    rank tears its gloo connections down while a peer still uses them (without it a rank can
    abort at exit after finishing its work; docs/lab.md). A peer that already left makes the
    barrier fail, which is ignored: the group is destroyed either way.
    """
    if ctx.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            if orderly:
                try:
                    dist.barrier()
                except Exception:  # a peer failed or left first: nothing to wait for
                    pass
            dist.destroy_process_group()


# --- the --nproc launcher ---------------------------------------------------------------------


def torchrun_command(nproc: int, module_args: Sequence[str], *,
                     module: str = "ffnlab") -> list[str]:
    """The torchrun command line for ``nproc`` local processes on 127.0.0.1, each running
    ``python -m <module> <module_args>``.

    Equivalent to ``torchrun --standalone --nproc-per-node N -m <module> ...`` except that the
    rendezvous store listens on 127.0.0.1 (``--standalone`` says ``localhost``, which may
    resolve elsewhere) on a free port (port 0: the store picks one, so there is no race).
    """
    check_positive_int("--nproc", nproc)
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "1", "--nproc-per-node", str(nproc),
        "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0",
        "--rdzv-id", f"ffnlab-{uuid.uuid4().hex[:12]}", "--local-addr", "127.0.0.1",
        "--max-restarts", "0",
        "-m", module, *module_args,
    ]


def child_env(nproc: int) -> dict[str, str]:
    """The environment for torchrun and its ``nproc`` workers (this one plus the lines below)."""
    env = dict(os.environ)
    # torchrun sets OMP_NUM_THREADS=1 (and prints a banner) when it is unset; sharing the cores
    # out is the better default: two 2-thread processes on 2 cores mostly wait for each other.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    # Keep gloo's sockets on the loopback interface for a one-machine run.
    if Path("/sys/class/net/lo").exists():
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    # The children must import this ffnlab, whatever the current directory is.
    src = str(next(p for p in Path(__file__).resolve().parents
                   if (p / "ffnlab" / "__init__.py").is_file()))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    return env


def launch(nproc: int, module_args: Sequence[str], *, module: str = "ffnlab") -> int:
    """Run ``python -m <module> <module_args>`` on ``nproc`` processes; their exit status.

    A worker killed by a signal gives ``128 + signal`` (130 for Ctrl-C), as a shell would.
    """
    proc = subprocess.Popen(torchrun_command(nproc, module_args, module=module),
                            env=child_env(nproc))
    try:
        rc = proc.wait()
    except KeyboardInterrupt:
        # Ctrl-C reached torchrun and its workers too: give them time to write the partial
        # results and stop (torchrun's own shutdown grace is 30 s) before forcing it.
        try:
            proc.wait(timeout=60)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            proc.terminate()
            proc.wait()
        return 130
    return 128 - rc if rc < 0 else rc
