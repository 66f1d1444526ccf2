"""Measure what autograd keeps for the backward pass.

``saved_tensor_bytes`` runs a forward under ``torch.autograd.graph.saved_tensors_hooks`` and
adds up the bytes of the distinct storages saved, leaving out those of the parameters (and of
any other tensors passed in ``exclude``): what a recompute mode saves is activations, and the
weights are kept by the model anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

__all__ = ["saved_tensor_bytes"]


def _storage_key(t: torch.Tensor) -> tuple:
    st = t.untyped_storage()
    return (t.device.type, t.device.index, st.data_ptr(), st.nbytes())


def saved_tensor_bytes(
    fn: Callable[[], torch.Tensor | tuple],
    exclude: Iterable[torch.Tensor] = (),
) -> tuple[int, object]:
    """Run ``fn()`` and return ``(bytes saved for backward, fn's result)``.

    Counts each storage once however many views of it are saved. Storages of tensors in
    ``exclude`` (typically ``module.parameters()``) are not counted.
    """
    skip = {_storage_key(t) for t in exclude if isinstance(t, torch.Tensor)}
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.layout == torch.strided and t.device.type != "meta":
            key = _storage_key(t)
            if key not in skip:
                seen[key] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out
