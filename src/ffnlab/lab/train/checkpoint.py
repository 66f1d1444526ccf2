"""Training checkpoints for the lab, crash-safe (written with :mod:`ffnlab.files`).

A checkpoint is two files next to each other:

``<stem>.<step>.safetensors``
    every tensor: the model's state dict (``model.<key>``), the optimizer's per-parameter
    state (``optim.<index>.<name>``) and the RNG states (``rng.<name>``, as uint8 tensors).
``<stem>.json``
    small metadata (step, curve so far, ...), the tensor file's name and its sha256.

The tensor file is written first under a new name, then the JSON that points to it, then the
previous tensor file is deleted: a crash between any two steps leaves a consistent pair.

Loading recomputes the sha256 and refuses a file that does not match (truncated, tampered
with, or from a different save than the metadata): :class:`CheckpointError`. Nothing is ever
pickled; ``safetensors`` stores raw tensors only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ... import files

__all__ = [
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "remove_checkpoint",
    "checkpoint_exists",
]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be trusted (missing part, bad hash, unreadable)."""


# --- checkpoints ---------------------------------------------------------------------------


def _meta_path(stem: Path) -> Path:
    return stem.with_name(stem.name + ".json")


def _tensor_files(stem: Path) -> list[Path]:
    return sorted(stem.parent.glob(f"{stem.name}.*.safetensors"))


def _flatten_optimizer(opt_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors and the JSON-able rest."""
    tensors: dict[str, torch.Tensor] = {}
    per_param: dict[str, dict[str, Any]] = {}
    for idx, st in opt_state["state"].items():
        scalars: dict[str, Any] = {}
        for name, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[name] = value
        per_param[str(idx)] = scalars
    return tensors, {"param_groups": opt_state["param_groups"], "scalars": per_param}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, t in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = t
    for idx, scalars in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(scalars)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    stem: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rng: dict[str, torch.Tensor],
    meta: dict[str, Any],
) -> None:
    """Write ``<stem>.<step>.safetensors`` then ``<stem>.json`` (each atomically).

    ``rng`` maps a name to a ``torch.Generator.get_state()`` tensor (uint8). ``meta`` must be
    JSON-able; the sha256 of the tensor file and the optimizer's non-tensor state are added.
    """
    stem = Path(stem)
    st_path = stem.with_name(f"{stem.name}.{int(meta['step'])}.safetensors")
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    tensors.update(opt_tensors)
    tensors.update({f"rng.{k}": v.contiguous().cpu() for k, v in rng.items()})
    blob = st_save(tensors)
    files.atomic_write_bytes(st_path, blob)
    files.atomic_write_json(_meta_path(stem), {**meta, "optimizer": opt_meta, "tensors": st_path.name,
                                         "sha256": files.sha256_bytes(blob)})
    for old in _tensor_files(stem):
        if old != st_path:
            old.unlink(missing_ok=True)


def load_checkpoint(
    stem: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restore ``model`` and ``optimizer`` in place; return ``(meta, rng states)``.

    Raises :class:`CheckpointError` if either file is missing or unreadable, or the tensor
    file's sha256 differs from the one in the metadata; nothing is loaded in that case.
    """
    stem = Path(stem)
    try:
        meta = files.read_json(_meta_path(stem))
        st_path = stem.parent / Path(str(meta["tensors"])).name
        blob = st_path.read_bytes()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {stem} is unreadable: {exc}") from None
    if not isinstance(meta, dict) or meta.get("sha256") != files.sha256_bytes(blob):
        raise CheckpointError(f"checkpoint {st_path.name} does not match its sha256")
    try:
        tensors = st_load(blob)
    except (SafetensorError, ValueError) as exc:  # pragma: no cover - hash checked above
        raise CheckpointError(f"checkpoint {st_path.name} cannot be parsed: {exc}") from None
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {stem} does not fit this model: {exc}") from None
    rng = {k[len("rng."):]: v for k, v in tensors.items() if k.startswith("rng.")}
    return meta, rng


def checkpoint_exists(stem: str | Path) -> bool:
    return _meta_path(Path(stem)).exists()


def remove_checkpoint(stem: str | Path) -> None:
    stem = Path(stem)
    _meta_path(stem).unlink(missing_ok=True)
    for p in _tensor_files(stem):
        p.unlink(missing_ok=True)
