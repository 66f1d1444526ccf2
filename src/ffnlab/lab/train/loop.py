"""Train one (variant, seed) run of the lab's model, resumably (the side measurements are in
:mod:`ffnlab.lab.measure`).

A run is: paired initialisation (``model.init_parameters``), the optimizer of
``TrainConfig.optimizer`` (AdamW, or Muon on the hidden matrices: :mod:`ffnlab.lab.train.optim`) with
linear warm-up then cosine decay to ``min_lr_ratio`` of the peak rate, gradient clipping at norm 1.0, a fixed token budget
(``steps * batch_size * seq_len``), batches from a generator seeded by the seed alone
(``data.BatchSampler``), and evaluation on a fixed validation subset every ``eval_every``
steps. Validation loss is reported in bits per byte: mean cross-entropy in nats / ln 2.

Checkpoints (``io.save_checkpoint``) hold the model, the optimizer, the batch generator's
state, the step and everything accumulated so far, so a resumed run replays exactly the steps
an uninterrupted one would have done and ends with the same numbers.

What the run reads off the model (bits per byte, dead units, expert load) is in
:mod:`.probes`.

An MoE run adds :data:`~ffnlab.lab.train.variant.LOAD_BALANCE_COEF` times the layers' Switch
load-balancing losses to the cross-entropy it minimises (the recorded training loss stays the
cross-entropy, comparable with a dense run's), and ends by measuring its load on the validation
windows (:func:`.probes.expert_load`): tokens per expert, their shares, the coefficient of variation and
max / mean per layer.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ...errors import UsageError, check_choice, check_positive_int
from . import checkpoint as io
from .data import BatchSampler, Corpus, val_windows
from .distributed import SINGLE, DistContext
from .model import ModelConfig, TinyGPT, init_parameters
from .optim import OPTIMIZERS, build_optimizer
from .precision import autocast, param_dtype
from .probes import dead_fraction, evaluate_bpb, expert_load
from .variant import LOAD_BALANCE_COEF, lab_variant

__all__ = ["TrainConfig", "RunState", "train_run", "lr_at", "LOSS_WINDOW"]

LOSS_WINDOW = 10  # final_train_loss = mean of the last 10 steps' losses


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one run (keyword arguments, validated)."""

    steps: int
    batch_size: int
    lr: float
    warmup: int
    eval_every: int
    eval_tokens: int
    ckpt_every: int = 50
    grad_clip: float = 1.0
    weight_decay: float = 0.1
    min_lr_ratio: float = 0.1
    optimizer: str = "adamw"

    def __post_init__(self) -> None:
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        for name in ("steps", "batch_size", "eval_every", "eval_tokens", "ckpt_every"):
            check_positive_int(name, getattr(self, name))
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise UsageError(f"warmup must be a non-negative integer, got {self.warmup!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"lr must be a positive number, got {self.lr!r}")

    def as_dict(self) -> dict:
        return asdict(self)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of step ``step`` (0-based): linear warm-up, then cosine to min_lr_ratio."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    span = max(1, cfg.steps - cfg.warmup)
    progress = min(1.0, (step - cfg.warmup) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * progress))


@dataclass
class RunState:
    """Where a run stands: what a checkpoint saves and a resumed run starts from.

    ``curve``: ``[step, val_bpb]`` pairs (``None`` for a non-finite value); ``recent_losses``:
    the last :data:`LOSS_WINDOW` training losses; ``train_s``: seconds inside training steps;
    ``wall_s``: wall time up to the last checkpoint; ``resumed_from``: the step a resumed run
    started at (0 otherwise; not saved).
    """

    step: int = 0
    curve: list = field(default_factory=list)
    recent_losses: list = field(default_factory=list)
    train_s: float = 0.0
    wall_s: float = 0.0
    diverged: bool = False
    resumed_from: int = 0

    SAVED = ("step", "curve", "recent_losses", "train_s", "wall_s", "diverged")

    def saved(self) -> dict:
        """The fields a checkpoint keeps (JSON values)."""
        return {k: getattr(self, k) for k in self.SAVED}

    @classmethod
    def from_saved(cls, meta: dict) -> RunState:
        """The state a checkpoint's metadata holds (KeyError when a field is missing)."""
        return cls(**{k: meta[k] for k in cls.SAVED}, resumed_from=int(meta["step"]))

    def record_loss(self, loss: float) -> None:
        self.recent_losses = (self.recent_losses + [loss])[-LOSS_WINDOW:]


def _config_key(model_cfg: ModelConfig, train_cfg: TrainConfig) -> dict:
    return {"model": model_cfg.as_dict(), "train": train_cfg.as_dict()}


def train_run(
    variant: str,
    seed: int,
    corpus: Corpus,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    backend: str = "auto",
    checkpoint: str | Path | None = None,
    fingerprint: dict | None = None,
    on_step: Callable[[dict], None] | None = None,
    log: Callable[[str], None] | None = None,
    dist: DistContext = SINGLE,
) -> dict[str, Any]:
    """Train ``variant`` with ``seed``; return the run's record (results.json's ``runs`` item).

    ``checkpoint``: a path stem; when given, the run resumes from the checkpoint there (``io``)
    if it exists, matches ``fingerprint`` and passes its sha256 check (otherwise it starts from
    scratch, saying why through ``log``), and saves there every ``ckpt_every`` steps.
    ``on_step({"step", "loss", "lr"})`` runs after every optimizer step (``step`` counts done
    steps); an exception from it (KeyboardInterrupt) stops the run, leaving the last checkpoint.
    A non-finite training loss stops the run and marks it ``diverged`` instead of raising.

    ``dist`` (``ffnlab.lab.train.distributed``): in a process group, every rank calls this with the
    same arguments; each trains on its shard of every global batch under
    ``DistributedDataParallel``. Rank 0 alone reads and writes the checkpoint (the others get
    its state by broadcast) and computes ``dead_fraction`` (None on the other ranks); the
    loss is averaged over ranks each step, so all ranks agree on divergence and the curve.
    """
    device = torch.device(device)
    v = lab_variant(variant)
    # The run's own model and recipe win over the comparison's fingerprint (a tuning run's
    # learning rate is not the recipe's).
    key = {**(fingerprint or {}), **_config_key(model_cfg, train_cfg),
           "variant": v.name, "seed": int(seed)}

    def fresh():
        """The run's model, optimizer and batch sampler as step 0 has them."""
        model = TinyGPT(model_cfg, v.name, backend=backend).to(device=device,
                                                                dtype=param_dtype(dtype))
        init_parameters(model, seed)
        opt = build_optimizer(model, name=train_cfg.optimizer, lr=train_cfg.lr,
                              weight_decay=train_cfg.weight_decay)
        sampler = BatchSampler(corpus.train, batch_size=train_cfg.batch_size,
                               seq_len=model_cfg.seq_len, seed=seed)
        return model, opt, sampler

    model, opt, sampler = fresh()
    windows = val_windows(corpus.val, seq_len=model_cfg.seq_len, max_tokens=train_cfg.eval_tokens)

    state = RunState()
    if checkpoint is not None and dist.is_main:
        resumed = _try_resume(checkpoint, model, opt, sampler, key, log)
        if resumed is None:  # a damaged checkpoint may have half-loaded any of the three
            model, opt, sampler = fresh()
        elif resumed is not False:
            state = resumed
    if dist.distributed:
        state = _share_resumed_state(dist, state, opt, sampler)
    ddp = dist.wrap(model)  # DDP broadcasts rank 0's weights (the resumed ones) on wrapping

    def evaluate() -> float:
        return evaluate_bpb(model, windows, batch_size=train_cfg.batch_size, dtype=dtype,
                            dist=dist)

    t_start = time.perf_counter()
    wall_before = state.wall_s
    if state.step == 0 and not state.curve:
        state.curve.append([0, evaluate()])
    model.train()
    tokens_per_step = train_cfg.batch_size * model_cfg.seq_len
    moe_layers = model.moe_layers()
    while state.step < train_cfg.steps and not state.diverged:
        step = state.step
        lr = lr_at(step, train_cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = sampler.next()  # the global batch; each rank keeps its rows
        x, y = dist.shard(x), dist.shard(y)
        t0 = time.perf_counter()
        with autocast(device, dtype):
            logits = ddp(x.to(device))
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten())
        objective = loss
        if moe_layers:  # dense runs add nothing: their objective is the cross-entropy itself
            objective = loss + LOAD_BALANCE_COEF * sum(m.aux_losses["load_balance"]
                                                       for m in moe_layers)
        # Equal shards: the mean of the ranks' means is the global batch's mean loss.
        loss_value = dist.all_reduce_sum([float(loss.detach())])[0] / dist.world_size
        if not math.isfinite(loss_value):
            state.diverged = True
            if log:
                log(f"{v.name} seed {seed}: loss became {loss_value} at step {step}; diverged")
            break
        opt.zero_grad(set_to_none=True)
        objective.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        state.train_s += time.perf_counter() - t0
        state.step = done = step + 1
        state.record_loss(loss_value)
        if done % train_cfg.eval_every == 0 or done == train_cfg.steps:
            bpb = evaluate()
            state.curve.append([done, bpb if math.isfinite(bpb) else None])
            if not math.isfinite(bpb):
                state.diverged = True
        if (checkpoint is not None and dist.is_main and done % train_cfg.ckpt_every == 0
                and done < train_cfg.steps):
            state.wall_s = wall_before + time.perf_counter() - t_start
            io.save_checkpoint(checkpoint, model=model, optimizer=opt,
                               rng={"batch": sampler.state()}, meta={**state.saved(), "key": key})
        if on_step is not None:
            on_step({"step": done, "loss": loss_value, "lr": lr})

    diverged = state.diverged
    probe = {"batch_size": train_cfg.batch_size, "dtype": dtype}
    return {
        "seed": int(seed),
        "val_bpb": None if diverged else state.curve[-1][1],
        "curve": state.curve,
        "tokens_per_s": (state.step * tokens_per_step / state.train_s) if state.train_s else 0.0,
        "dead_fraction": (None if diverged or not dist.is_main else
                          dead_fraction(model, windows, **probe)),
        "load_balance": (None if diverged or not dist.is_main or not moe_layers else
                         expert_load(model, windows, **probe)),
        "final_train_loss": (statistics.fmean(state.recent_losses)
                             if state.recent_losses and not diverged else None),
        "wall_s": wall_before + time.perf_counter() - t_start,
        "diverged": diverged,
        "steps_done": state.step,
        "resumed_from": state.resumed_from,
        "key": key,
    }


def _share_resumed_state(dist: DistContext, state: RunState, opt,
                         sampler: BatchSampler) -> RunState:
    """Rank 0's (possibly resumed) run state, optimizer state and batch position on every rank.

    The weights travel when the model is wrapped in DDP; see ``ffnlab.lab.train.distributed``.
    """
    shared = RunState(**dist.broadcast_json(asdict(state)))
    dist.broadcast_optimizer_(opt)
    sampler.set_state(dist.broadcast_tensor_(sampler.state().clone()))
    return shared


def _try_resume(checkpoint, model, opt, sampler, key, log) -> RunState | bool | None:
    """The run state saved at ``checkpoint``, loaded into ``model``, ``opt`` and ``sampler``;
    ``False`` when there is none, ``None`` when it cannot be used (the checkpoint is removed and
    the caller must rebuild all three: any of them may be half-loaded)."""
    stem = Path(checkpoint)
    if not io.checkpoint_exists(stem):
        return False
    try:
        meta, rng = io.load_checkpoint(stem, model=model, optimizer=opt)
        if meta.get("key") != key:
            raise io.CheckpointError(f"checkpoint {stem.name} was made with another configuration")
        sampler.set_state(rng["batch"])
        return RunState.from_saved(meta)
    except (io.CheckpointError, KeyError, TypeError) as exc:
        if log:
            log(f"{exc}; restarting this run from scratch")
        io.remove_checkpoint(stem)
        return None
