"""This device's ceilings (copy bandwidth, matmul rate) and where a measurement was taken.

Every bench row is read as a share of a ceiling: an FFN's matmuls are compute-bound, its
elementwise middle is bandwidth-bound.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import sys
from collections.abc import Callable

import torch

from .timing import time_call

__all__ = [
    "best_ceilings",
    "copy_bandwidth",
    "device_ceilings",
    "machine_info",
    "matmul_rate",
]


def _best_of(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()  # warm-up: first-touch page faults, cuBLAS heuristics, allocator growth
    return min(time_call(fn, device) for _ in range(repeats))


def copy_bandwidth(
    device: torch.device, *, nbytes: int | None = None, repeats: int = 5
) -> dict[str, float]:
    """Bytes per second of ``dst.copy_(src)`` (read + written) on a large buffer.

    The buffer is 256 MiB on CUDA and 64 MiB on the CPU: both far larger than any cache
    (an H100's L2 is 50 MiB), so this is DRAM/HBM bandwidth, the ceiling for an elementwise kernel.
    Uses the fastest of ``repeats`` calls: a ceiling, not a typical value.
    """
    if nbytes is None:
        nbytes = (256 if device.type == "cuda" else 64) * 2**20
    n = nbytes // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    seconds = _best_of(lambda: dst.copy_(src), device, repeats)
    moved = 2 * n * 4  # every byte is read once and written once
    return {"bytes_per_s": moved / seconds, "buffer_bytes": n * 4, "seconds": seconds}


def matmul_rate(
    device: torch.device, dtype: torch.dtype, *, n: int | None = None, repeats: int = 5
) -> dict[str, float]:
    """FLOP/s of one square ``[n, n] @ [n, n]`` product in ``dtype`` (``2 n^3`` FLOPs).

    ``n`` defaults to 8192 on CUDA (about 1.1 TFLOP, long enough for the GPU to reach its
    sustained clock) and 2048 on the CPU (17 GFLOP). A smaller product under-reports the CPU's
    rate (docs/benchmarks.md, "Measurements behind the defaults", has the measurement).
    """
    if n is None:
        n = 8192 if device.type == "cuda" else 2048
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, generator=gen, device=device).to(dtype)
    b = torch.randn(n, n, generator=gen, device=device).to(dtype)
    seconds = _best_of(lambda: torch.mm(a, b), device, repeats)
    return {"flops_per_s": 2 * n**3 / seconds, "n": n, "seconds": seconds}


def device_ceilings(device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """This device's copy bandwidth (bytes/s) and matmul rate (FLOP/s in ``dtype``)."""
    copy = copy_bandwidth(device)
    mm = matmul_rate(device, dtype)
    return {
        "copy_bytes_per_s": copy["bytes_per_s"],
        "copy_buffer_bytes": copy["buffer_bytes"],
        "matmul_flops_per_s": mm["flops_per_s"],
        "matmul_n": mm["n"],
        "matmul_dtype": str(dtype).removeprefix("torch."),
    }


def best_ceilings(*measured: dict[str, float]) -> dict[str, float]:
    """The higher of each ceiling over several :func:`device_ceilings` results.

    The benchmark measures them before and after its rows: on a shared machine one
    measurement can land in a busy moment and come out below what the rows then reach
    (docs/benchmarks.md, "Measurements behind the defaults").
    """
    best = dict(measured[0])
    for m in measured[1:]:
        for key in ("copy_bytes_per_s", "matmul_flops_per_s"):
            best[key] = max(best[key], m[key])
    return best


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(distribution: str) -> str | None:
    """The installed version of a distribution, without importing it (None if absent)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(device: torch.device) -> dict[str, object]:
    """Where a measurement was taken: device, CPU, GPU, library versions and the date (UTC)."""
    info: dict[str, object] = {
        "device": device.type,
        "device_name": _cpu_model(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": None,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "triton": _version("triton"),
        "liger_kernel": _version("liger-kernel"),
        "cuda": torch.version.cuda,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["device_name"] = props.name
        info["gpu_memory_bytes"] = props.total_memory
    return info
