"""FFN operators: the reference oracle, the fused autograd op, its elementwise engines, dispatch.

``reference`` (plain torch, the oracle), ``function`` (the fused custom op and its recompute
modes), ``engines`` (the table of its elementwise engines: what each supports and why not),
``engine_aten``, ``engine_inductor`` and ``engine_triton`` (the engines themselves; the Triton
one is imported only on demand: importing ffnlab never imports triton), ``dispatch`` (which
backend runs) and ``memory`` (bytes saved for backward).
"""

from .dispatch import (
    BACKENDS,
    RECOMPUTE_MODES,
    backend_unsupported_reasons,
    feed_forward,
    plan,
)
from .engines import ENGINES
from .function import fused_feed_forward
from .reference import ffn_reference, hidden_activation

__all__ = [
    "BACKENDS",
    "ENGINES",
    "RECOMPUTE_MODES",
    "backend_unsupported_reasons",
    "feed_forward",
    "ffn_reference",
    "fused_feed_forward",
    "hidden_activation",
    "plan",
]
