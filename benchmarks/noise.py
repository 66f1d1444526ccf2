"""Where the lab's seed-to-seed spread comes from: train the quick recipe with one source of
randomness changed at a time, side by side in one run.

    .venv/bin/python benchmarks/noise.py benchmarks/sweeps/noise.json

Each job of the spec is a :class:`NoiseJob`: the variant, the seed of the non-FFN weights, the
seed of the FFN weights, the seed of the batch order, an optional tiny perturbation of the
embedding (chaos test), ``shared_ffn`` (every variant of a seed starts from one FFN draw,
sliced to its shape: the plain variants share it exactly, the gated ones take its first rows)
and ``epoch_batches`` (batches as shuffled epochs of disjoint windows instead of independent
random windows). Jobs run on the lab's worker count (one per core, one thread each). The final
val bpb of every job and the spreads per group (the part of ``name`` before ``:``) are printed
and written to ``benchmarks/results/lab-noise-<date>.json``. docs/lab.md quotes the results.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class NoiseJob:
    name: str
    variant: str
    base_seed: int = 0
    ffn_seed: int = 0
    data_seed: int = 0
    perturb: float = 0.0
    shared_ffn: bool = False
    epoch_batches: bool = False


class EpochBatches:
    """Batches of disjoint windows, a new random offset and order every epoch."""

    def __init__(self, train: torch.Tensor, batch_size: int, seq_len: int, seed: int) -> None:
        self.train, self.b, self.t = train, batch_size, seq_len
        self.g = torch.Generator().manual_seed(int(seed))
        self.queue = torch.empty(0, dtype=torch.long)
        self.offsets = torch.arange(seq_len + 1)

    def next(self):
        while self.queue.numel() < self.b:
            o = int(torch.randint(0, self.t, (1,), generator=self.g))
            n = (self.train.numel() - 1 - o) // self.t
            starts = o + torch.arange(n) * self.t
            self.queue = torch.cat([self.queue, starts[torch.randperm(n, generator=self.g)]])
        s, self.queue = self.queue[: self.b], self.queue[self.b :]
        w = self.train[s[:, None] + self.offsets]
        return w[:, :-1], w[:, 1:]


@torch.no_grad()
def _share_ffn(model, mc, seed: int) -> None:
    from ffnlab.lab.train import model as M

    for n, p in model.named_parameters():
        if not M.is_ffn_param(n):
            continue
        layer, which = n.split(".")[1], n.split(".")[-2]
        full = (4 * mc.dim, mc.dim) if which in ("w1", "w3") else (mc.dim, 4 * mc.dim)
        g = torch.Generator().manual_seed(M._seed_from("shared", seed, layer, which))
        z = torch.randn(full, generator=g)[: p.shape[0], : p.shape[1]]
        std = p.shape[1] ** -0.5 / (math.sqrt(2 * mc.n_layers) if which == "w2" else 1.0)
        p.copy_(z * std)


def run_job(job: NoiseJob) -> dict:
    torch.set_num_threads(1)
    from ffnlab.lab.config import resolve_config
    from ffnlab.lab.train import data as D
    from ffnlab.lab.train import loop as T
    from ffnlab.lab.train import model as M
    from ffnlab.lab.train import probes as P

    _, mc, tc = resolve_config("quick")
    corpus = D.load_corpus(None, seq_len=mc.seq_len)
    model = M.TinyGPT(mc, job.variant)
    M.init_parameters(model, job.base_seed)
    if job.ffn_seed != job.base_seed:
        other = M.TinyGPT(mc, job.variant)
        M.init_parameters(other, job.ffn_seed)
        with torch.no_grad():
            for (n, p), (_, q) in zip(model.named_parameters(), other.named_parameters(), strict=True):
                if M.is_ffn_param(n):
                    p.copy_(q)
    if job.shared_ffn:
        _share_ffn(model, mc, job.base_seed)
    if job.perturb:
        g = torch.Generator().manual_seed(int(job.perturb * 1e9))
        with torch.no_grad():
            model.tok.weight.add_(torch.randn(model.tok.weight.shape, generator=g) * job.perturb)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    flat = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                             {"params": flat, "weight_decay": 0.0}], lr=tc.lr, betas=(0.9, 0.95))
    batches = (EpochBatches(corpus.train, tc.batch_size, mc.seq_len, job.data_seed)
               if job.epoch_batches else
               D.BatchSampler(corpus.train, batch_size=tc.batch_size, seq_len=mc.seq_len,
                              seed=job.data_seed))
    windows = D.val_windows(corpus.val, seq_len=mc.seq_len, max_tokens=tc.eval_tokens)
    for step in range(tc.steps):
        for group in opt.param_groups:
            group["lr"] = T.lr_at(step, tc)
        x, y = batches.next()
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
    bpb = P.evaluate_bpb(model, windows, batch_size=tc.batch_size, dtype=torch.float32)
    return {**asdict(job), "val_bpb": bpb}


def main(spec: Path) -> None:
    jobs = [NoiseJob(**j) for j in json.loads(spec.read_text())]
    import os

    rows = []
    with ProcessPoolExecutor(len(os.sched_getaffinity(0))) as pool:
        for row in pool.map(run_job, jobs):
            rows.append(row)
            print(f"{row['name']:<24} {row['val_bpb']:.4f}", flush=True)
    groups: dict[str, list[float]] = {}
    for r in rows:
        groups.setdefault(r["name"].split(":")[0], []).append(r["val_bpb"])
    spread = {k: statistics.stdev(v) for k, v in groups.items() if len(v) > 1}
    for k, s in spread.items():
        print(f"{k:<24} sd {s:.4f} over {len(groups[k])}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"lab-noise-{dt.date.today().isoformat()}.json"
    out.write_text(json.dumps({"torch": torch.__version__, "runs": rows, "spread": spread},
                              indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
