"""The lab's mixed-precision rule, used by training and by the side measurements alike.

``--dtype bfloat16`` / ``float16`` train with float32 master weights under autocast;
``float32`` and ``float64`` train natively in that dtype.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

__all__ = ["FLOAT_DTYPES", "autocast", "dtype_by_name", "param_dtype"]

HALF_DTYPES = (torch.float16, torch.bfloat16)

FLOAT_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64,
                                        "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The dtypes the lab trains in, by the name results.json records."""


def dtype_by_name(name: str) -> torch.dtype:
    """``"bfloat16" -> torch.bfloat16``; a ValueError naming the accepted names otherwise."""
    try:
        return FLOAT_DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r} (use one of {', '.join(FLOAT_DTYPES)})") from None


def autocast(device: torch.device, dtype: torch.dtype) -> AbstractContextManager:
    """``torch.autocast(device.type, dtype)`` for half dtypes, else a context that does nothing."""
    if dtype in HALF_DTYPES:
        return torch.autocast(device.type, dtype=dtype)
    return nullcontext()


def param_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype parameters are kept in: float64 for float64, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32
