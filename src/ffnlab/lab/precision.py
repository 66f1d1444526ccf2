"""The lab's mixed-precision rule, used by training and by the side measurements alike.

``--dtype bfloat16`` / ``float16`` train with float32 master weights under autocast;
``float32`` and ``float64`` train natively in that dtype.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

__all__ = ["autocast", "param_dtype"]

HALF_DTYPES = (torch.float16, torch.bfloat16)


def autocast(device: torch.device, dtype: torch.dtype) -> AbstractContextManager:
    """``torch.autocast(device.type, dtype)`` for half dtypes, else a context that does nothing."""
    if dtype in HALF_DTYPES:
        return torch.autocast(device.type, dtype=dtype)
    return nullcontext()


def param_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype parameters are kept in: float64 for float64, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32
