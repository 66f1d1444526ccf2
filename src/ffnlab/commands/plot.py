"""Plot every activation and its derivative, Swish for several beta, and GELU approximation errors.

Writes PNG and SVG files into ``--out`` and prints their paths.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .. import activations as A
from .common import add_common, prepare_out_dir

CURVES = ("relu", "gelu", "gelu_tanh", "quick_gelu", "swish", "sigmoid", "tanh", "relu2")
BETAS = (0.1, 0.5, 1.0, 2.0, 10.0)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p, out="runs/plots", variants=False, device=False, json_flag=False)
    p.add_argument("--range", type=float, default=4.0, help="x from -R to R (default: 4)")


def _figure(title: str):
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.set_title(title)
    ax.axhline(0, color="0.7", lw=0.8)
    ax.axvline(0, color="0.7", lw=0.8)
    ax.grid(alpha=0.3)
    return plt, fig, ax


def _save(plt, fig, out: Path, stem: str) -> list[Path]:
    paths = [out / f"{stem}.png", out / f"{stem}.svg"]
    fig.tight_layout()
    for path in paths:
        fig.savefig(path)
    plt.close(fig)
    return paths


def write_plots(out: Path, r: float = 4.0) -> list[Path]:
    """Write the activation plots into ``out``; returns the files written."""
    if not r > 0:
        raise ValueError(f"--range must be > 0, got {r}")
    x = torch.linspace(-r, r, 801, dtype=torch.float64)
    written: list[Path] = []

    for kind in ("function", "derivative"):
        plt, fig, ax = _figure(f"Activations: {kind}")
        for name in CURVES:
            act = A.get_activation(name)
            y = act.fn(x) if kind == "function" else act.grad(x)
            ax.plot(x, y, label=name, lw=1.6)
        ax.set_xlabel("x")
        ax.set_ylim(-1.5, r if kind == "function" else 2.5)
        ax.legend(ncol=2, fontsize=8)
        written += _save(plt, fig, out, "activations" if kind == "function" else "derivatives")

    plt, fig, ax = _figure("Swish x·σ(βx) for several β (β→0: x/2, β→∞: ReLU)")
    for b in BETAS:
        ax.plot(x, A.swish(x, b), label=f"β={b:g}", lw=1.6)
    ax.plot(x, A.relu(x), "k--", lw=0.8, label="ReLU")
    ax.set_xlabel("x")
    ax.legend(fontsize=8)
    written += _save(plt, fig, out, "swish_beta")

    plt, fig, ax = _figure("GELU approximations: error against exact x·Φ(x)")
    exact = A.gelu(x)
    ax.plot(x, A.gelu_tanh(x) - exact, label="tanh form (gelu_tanh)", lw=1.6)
    ax.plot(x, A.quick_gelu(x) - exact, label="x·σ(1.702x) (quick_gelu)", lw=1.6)
    ax.set_xlabel("x")
    ax.set_ylabel("approximation − exact")
    ax.legend(fontsize=8)
    written += _save(plt, fig, out, "gelu_error")
    return written


def run(args: argparse.Namespace) -> int:
    out = prepare_out_dir(args.out)
    for path in write_plots(out, args.range):
        print(path)
    return 0
