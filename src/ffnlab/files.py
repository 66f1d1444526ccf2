"""Crash-safe files: the output folder, atomic writes, strict JSON.

Every file ffnlab writes (results, reports, benchmark tables, checkpoints) goes through
:func:`atomic_write_bytes`: write a temporary file in the same folder, fsync it, then
``os.replace`` it over the target. A crash at any moment leaves either the old file or the new
one, never half of one (``os.replace`` is atomic on POSIX and Windows when both paths are on the
same file system, which the same folder guarantees).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import UsageError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "json_safe",
    "prepare_out_dir",
    "read_json",
    "remove_stale_temps",
    "sha256_bytes",
]


def prepare_out_dir(path: str | Path) -> Path:
    """Create the output folder, or a UsageError if it is a file or not writable."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".ffnlab-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"cannot write to output folder {str(out)!r}: {exc.strerror}") from None
    return out


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; results and reports are meant to be read by others (0644).
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Includes KeyboardInterrupt: never leave temp files behind.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temporary files a killed writer left under ``folder``; return them.

    A SIGKILL or power cut between the temp file's creation and ``os.replace`` leaves a hidden
    ``.<name>.<random>.tmp`` next to the target (the naming of this module's writers). The
    target itself is intact, so the leftover is only garbage. Call this only when no other
    process writes into ``folder`` (``compare`` does, once, before its runs).
    """
    stale = [p for p in Path(folder).rglob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """``obj`` as indented JSON (strict: NaN/inf are refused, they are not JSON)."""
    text = json.dumps(obj, indent=2, allow_nan=False)
    return atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def json_safe(obj: Any) -> Any:
    """NaN/inf -> None, recursively: strict JSON has no NaN (use before :func:`atomic_write_json`)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))
