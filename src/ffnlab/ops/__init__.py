"""FFN operators: the reference oracle, the fused autograd op, Triton kernels, dispatch."""

from .reference import ffn_reference, hidden_activation

__all__ = ["ffn_reference", "hidden_activation"]
