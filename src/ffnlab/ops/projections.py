"""One forward for FFN blocks built from projection modules, plain or not.

A block such as :class:`ffnlab.FeedForward` or a patched transformers MLP holds its W1/W2/W3 as
modules. When every one is a plain ``nn.Linear`` (or transformers' ``Conv1D``) with no forward
hook, a backend may read their weights and run the whole FFN as one op; otherwise (a LoRA
adapter, a quantised Linear, a hook) each module must see its own call, so the block runs
through the modules with the reference elementwise middle. :func:`projected_feed_forward`
makes that choice for every such block.

Shapes: ``x [..., dim]``; the weights as :func:`ffnlab.ops.reference.ffn_reference` takes them
(``w1, w3 [hidden, dim]``, ``w2 [out, hidden]``); output ``[..., out]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from .dispatch import feed_forward
from .reference import ActivationArg, hidden_activation

__all__ = ["Weights", "projections_are_plain", "projected_feed_forward"]

Weights = tuple[
    torch.Tensor,
    torch.Tensor,
    "torch.Tensor | None",
    "torch.Tensor | None",
    "torch.Tensor | None",
    "torch.Tensor | None",
]
"""``(w1, w2, w3, b1, b2, b3)``; ``w3`` and the biases may be None."""


def projections_are_plain(*modules: nn.Module | None) -> bool:
    """Whether a backend may read these projections' weights instead of calling them.

    True when each module (None entries are skipped) is exactly an ``nn.Linear`` or
    transformers' ``Conv1D`` and carries no forward (pre-)hook and no ``forward`` of its own
    instance (transformers' tensor parallelism installs its layouts that way). A subclass or a
    replacement (a LoRA adapter, a quantised Linear), a hook or such a forward must see its own
    call, so callers then run the block through the modules themselves.
    """
    for m in modules:
        if m is None:
            continue
        t = type(m)
        known = t is nn.Linear or (
            t.__name__ == "Conv1D" and t.__module__.startswith("transformers.")
        )
        if not known or m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__:
            return False
    return True


def projected_feed_forward(
    x: torch.Tensor,
    projections: Iterable[nn.Module | None],
    weights: Callable[[], Weights],
    branches: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]],
    down: Callable[[torch.Tensor], torch.Tensor],
    *,
    activation: ActivationArg,
    beta: float | torch.Tensor = 1.0,
    backend: str = "auto",
    recompute: str = "activation",
    options: tuple[float, ...] = (),
) -> torch.Tensor:
    """The FFN of a block of projection modules: ``x [..., dim]`` -> ``[..., out]``.

    Args:
        projections: the modules whose weights ``weights`` reads.
        weights: returns ``(w1, w2, w3, b1, b2, b3)`` (called only when the projections are
            plain, so a replaced module need not have a ``weight``).
        branches: ``x -> (h1, h3)`` by calling the modules (``h1 = W1 x + b1``, ``h3 = W3 x +
            b3`` or None for plain variants), each ``[..., hidden]``.
        down: ``m [..., hidden] -> [..., out]`` by calling the down projection module.
        activation, beta, backend, recompute, options: as
            :func:`ffnlab.ops.dispatch.feed_forward`.

    Plain projections run ``feed_forward(x, *weights(), ...)`` with the chosen backend;
    otherwise ``down(hidden_activation(activation, *branches(x), beta))``.
    """
    if projections_are_plain(*projections):
        w1, w2, w3, b1, b2, b3 = weights()
        return feed_forward(
            x, w1, w2, w3, b1, b2, b3,
            activation=activation, beta=beta, backend=backend, recompute=recompute,
            options=options,
        )  # fmt: skip
    h1, h3 = branches(x)
    return down(hidden_activation(activation, h1, h3, beta, options))
