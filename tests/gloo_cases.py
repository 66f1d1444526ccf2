"""Named cases on the gloo ranks of this machine: what the distributed test files share.

A test file lists its cases (``{name: fn(mesh)}``) and runs itself as a script in a subprocess
(:func:`ranks_results`, from a module-scoped fixture), so that a crash or a hang of the process
group cannot take pytest with it; the script's ``__main__`` calls :func:`run_ranks`, which forks
``world`` ranks, runs every case on each (seeded alike, the outcome of each caught), and writes
rank 0's outcomes to the file pytest reads back.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

__all__ = ["ranks_results", "run_ranks"]

Cases = dict[str, Callable]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, out: str, world: int, cases: Cases) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    # what torchrun would set (transformers' distributed helpers read them)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)  # fmt: skip
    try:
        mesh = init_device_mesh("cpu", (world,))
        results = {}
        for name, fn in cases.items():
            torch.manual_seed(0)
            try:
                fn(mesh)
                results[name] = "ok"
            except Exception:  # reported per case by the test
                results[name] = traceback.format_exc()
        if rank == 0:
            Path(out).write_text(json.dumps(results))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_ranks(cases: Cases, *, world: int = 2) -> None:
    """The script side (``argv: PORT OUT``): every case on ``world`` ranks with one thread each.
    Import what the cases need before calling: forked ranks inherit the imported modules
    instead of importing torch again (about 8 s each on a busy 2-core machine); no torch work
    has run yet, so no thread pool is copied."""
    port, out = int(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    torch.multiprocessing.start_processes(
        _rank, args=(port, out, world, cases), nprocs=world, join=True, start_method=method
    )


def ranks_results(script: str, tmp: Path, *, timeout: float = 240) -> dict[str, str]:
    """The pytest side: run ``script`` as a subprocess and read back ``{case: "ok" or the
    traceback}``; skips where torch has no gloo."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    out = Path(tmp) / "results.json"
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parent)  # the script imports this module too
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # stay on loopback
    proc = subprocess.run([sys.executable, script, str(_free_port()), str(out)], env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert proc.returncode == 0 and out.exists(), proc.stderr[-4000:]
    return json.loads(out.read_text())
