"""ReLU² and leaky ReLU² backward from the output: the fused op keeps y, not the pre-activation.

For ``y = relu(h)²`` the derivative is ``2·relu(h) = 2·sqrt(y)``, so the plain relu2 FFN can
keep ``y`` (which W2's gradient needs anyway) and drop ``h`` (modded-nanogpt's ReLU² kernel
does the same). For ``y = leaky_relu(h, s)²``, ``y`` alone loses the sign of ``h``: the
backward needs ``leaky_relu(h) = ±sqrt(y)`` and the slope on the negative side, so one bool
per element (``h > 0``) is kept beside ``y``.

Equivalent PyTorch of :func:`backward_from_output`, ``dm = dL/dy`` ``[N, hidden]``::

    r = torch.sqrt(y)                              # = |leaky_relu(h)|, relu(h) for relu2
                                                   # (computed as y * rsqrt(max(y, tiny)))
    dh = dm * 2 * r                                # relu2
    dh = dm * torch.where(pos, 2 * r, -2 * s * r)  # leaky_relu2: l = -r and dl/dh = s if h <= 0

Only in recompute mode ``"none"``, where the point is to keep rather than recompute: what
the plain fused op keeps per hidden element (``ffnlab.ops.memory.saved_tensor_bytes``, float32,
2048 rows x 256 units, ``tests/ops/test_square_output.py``) goes from 8 B (h and y) to 4 B (y)
for relu2 and 5 B (y and the bool) for leaky_relu2, 4.19 MB -> 2.10 MB and 2.62 MB per call.
Mode ``"activation"`` keeps h (4 B, as small as y) and recomputes: on this CPU recovering
relu(h) from y costs ~0.24 ms per 2048 x 256 float32 elements (rsqrt and two passes) against
~0.05 ms for relu, so it only pays where it saves bytes; on a GPU both are free next to the
memory traffic.

Only float32 and float64: ``sqrt(fl(r²))`` is then within an ulp of ``r`` (and r² only
overflows beyond 1.8e19 in float32); in float16 / bfloat16, ``y`` rounded to the input dtype
would cost ``r`` 2^-9 to 2^-12 relative and overflow from r = 256 (float16), so half inputs
keep ``h`` as before.
"""

from __future__ import annotations

import torch

__all__ = ["ACTIVATIONS", "keeps_output", "backward_from_output"]

ACTIVATIONS = ("relu2", "leaky_relu2")
_DTYPES = (torch.float32, torch.float64)


def keeps_output(activation: str, gated: bool, dtype: torch.dtype, recompute: str) -> tuple[str, ...]:
    """The names the plain fused op keeps under ``recompute`` when the output trick applies
    (``("m",)`` or ``("m", "pos")``), else ``()`` (the usual list applies)."""
    if gated or activation not in ACTIVATIONS or dtype not in _DTYPES:
        return ()
    if recompute != "none":
        return ()
    return ("m",) if activation == "relu2" else ("m", "pos")


def backward_from_output(
    activation: str,
    dm: torch.Tensor,
    y: torch.Tensor,
    pos: torch.Tensor | None,
    slope: float = 0.5,
) -> torch.Tensor:
    """``dL/dh [N, hidden]`` from ``dm = dL/dy``, the kept output ``y`` and, for leaky_relu2,
    ``pos = h > 0`` (bool). Overwrites ``dm`` (the fused op's scratch) and returns it."""
    # sqrt(y) as y * rsqrt(max(y, tiny)): exact zeros where y = 0, within ~2 ulp elsewhere,
    # and on this CPU 0.24 ms per 2048 x 256 float32 where torch.sqrt(y) took 2.3 ms
    # (its slow path: half of y is zero).
    tiny = torch.finfo(y.dtype).tiny
    r = torch.clamp_min(y, tiny).rsqrt_().mul_(y)
    if activation == "relu2":
        return dm.mul_(r).mul_(2.0)
    two = torch.tensor(2.0, dtype=r.dtype, device=r.device)
    return dm.mul_(r.mul_(torch.where(pos, two, -slope * two)))
