"""FFN operators: the reference oracle, the fused autograd op, Triton kernels, dispatch.

``reference`` (plain torch, the oracle), ``function`` (the fused custom op and its recompute
modes), ``cpu`` (its torch elementwise engine), ``triton_kernels`` (its Triton engine, imported
only on demand: importing ffnlab never imports triton), ``dispatch`` (which backend runs) and
``memory`` (bytes saved for backward).
"""

from .dispatch import BACKENDS, RECOMPUTE_MODES, feed_forward, resolve_backend, why_not
from .function import fused_feed_forward
from .reference import ffn_reference, hidden_activation

__all__ = [
    "BACKENDS",
    "RECOMPUTE_MODES",
    "feed_forward",
    "ffn_reference",
    "fused_feed_forward",
    "hidden_activation",
    "resolve_backend",
    "why_not",
]
