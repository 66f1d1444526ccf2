"""The lab's data: a byte-level corpus, its train/validation split and the batch sampler.

Tokens are bytes (vocabulary 256), so the loss converts directly to **bits per byte**
(mean cross-entropy in nats / ln 2) and no tokenizer can favour one variant.

Corpus
    Default: ``pydoc_data.topics``, the Python reference documentation that ships with every
    CPython (about 0.47 MB of English prose and code): the ``topics`` dict's values joined in
    sorted key order, UTF-8 encoded, so every machine gets the same bytes. ``--data PATH``: a
    text file, or a folder of them (read recursively in sorted path order, hidden files and
    folders skipped, bytes taken as they are and concatenated).

Split
    The last ``val_fraction`` (10%) of the bytes is validation, the rest training: one
    contiguous block each, so no validation window overlaps a training one.

Identity
    ``Corpus.sha256`` is the sha256 of all the bytes used (train + validation). A resumed run
    checks it, so a changed corpus is never mixed with an old one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from ...errors import UsageError

__all__ = ["VOCAB", "Corpus", "load_corpus", "default_corpus_bytes", "BatchSampler", "val_windows"]

VOCAB = 256
DEFAULT_NAME = "pydoc_data.topics"
VAL_FRACTION = 0.1


@dataclass(frozen=True)
class Corpus:
    """A byte corpus split into training and validation tokens.

    ``train``, ``val``: int64 tensors of byte values, shapes ``[train_bytes]``, ``[val_bytes]``.
    """

    name: str
    sha256: str
    train: torch.Tensor
    val: torch.Tensor

    @property
    def bytes(self) -> int:
        return self.train.numel() + self.val.numel()

    def identity(self) -> dict:
        """What results.json records under ``corpus``."""
        return {
            "name": self.name,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "train_bytes": self.train.numel(),
            "val_bytes": self.val.numel(),
        }


def default_corpus_bytes() -> bytes:
    """The embedded corpus: ``pydoc_data.topics`` values in sorted key order, UTF-8."""
    from pydoc_data.topics import topics  # imported on use: 0.5 MB we only need here

    return "".join(topics[k] for k in sorted(topics)).encode("utf-8")


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"--data: cannot read {str(path)!r}: {exc.strerror or exc}") from None


def read_corpus(path: str | Path | None) -> tuple[str, bytes]:
    """``(name, bytes)`` of the default corpus (``path=None``), a file or a folder of files."""
    if path is None:
        return DEFAULT_NAME, default_corpus_bytes()
    p = Path(path)
    if not p.exists():
        raise UsageError(f"--data: {str(p)!r} does not exist")
    if p.is_file():
        return p.name, _read(p)
    if not p.is_dir():
        raise UsageError(f"--data: {str(p)!r} is neither a file nor a folder")
    files = sorted(f for f in p.rglob("*") if f.is_file() and not _is_hidden(f, p))
    return p.name + "/", b"".join(_read(f) for f in files)


def load_corpus(
    path: str | Path | None = None,
    *,
    seq_len: int,
    val_fraction: float = VAL_FRACTION,
    train_fraction: float = 1.0,
) -> Corpus:
    """Read, split and check a corpus for sequences of ``seq_len`` tokens.

    ``train_fraction`` in (0, 1] keeps that share of the training split (its first bytes); the
    validation split stays whole, so runs on less data are scored on the same bytes.

    Both parts must hold at least one window of ``seq_len + 1`` bytes (inputs plus the next
    byte as target); otherwise a :class:`UsageError` says how many bytes are needed.
    """
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    if not 0.0 < train_fraction <= 1.0:
        raise UsageError(f"--data-fraction must be in (0, 1], got {train_fraction!r}")
    name, data = read_corpus(path)
    where = "the default corpus" if path is None else f"--data {str(path)!r}"
    if not data:
        raise UsageError(f"{where} is empty (no bytes to train on)")
    need_part = seq_len + 1
    n_val = int(len(data) * val_fraction)
    n_train = len(data) - n_val
    if n_val < need_part or n_train < need_part:
        # n_val >= need_part  <=>  len >= need_part / val_fraction (up to rounding)
        need = max(int(need_part / val_fraction) + 1, 2 * need_part)
        raise UsageError(
            f"{where} has {len(data)} bytes, too few: one training sequence and the "
            f"{val_fraction:.0%} validation split need at least {need} bytes at seq_len {seq_len}"
        )
    tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64)
    keep = n_train if train_fraction == 1.0 else int(n_train * train_fraction)
    if keep < need_part:
        raise UsageError(f"--data-fraction {train_fraction:g} leaves {keep} training bytes of "
                         f"{where}; at seq_len {seq_len} at least {need_part} are needed")
    return Corpus(
        name=name,
        sha256=hashlib.sha256(data).hexdigest(),
        train=tokens[:keep],
        val=tokens[n_train:],
    )


class BatchSampler:
    """Random training windows, drawn from a ``torch.Generator`` seeded by the seed alone.

    Every variant trained with the same seed therefore sees the same batches in the same order
    (the generator never touches the model). ``state()``/``set_state()`` save and restore the
    position for resuming.
    """

    def __init__(self, train: torch.Tensor, *, batch_size: int, seq_len: int, seed: int) -> None:
        if train.numel() < seq_len + 1:
            raise UsageError(f"training split ({train.numel()} bytes) is shorter than seq_len+1")
        self.train = train
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(int(seed))
        self._offsets = torch.arange(seq_len + 1)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, targets)``, int64 ``[batch_size, seq_len]``; targets are inputs shifted by one."""
        high = self.train.numel() - self.seq_len  # last valid start + 1
        starts = torch.randint(0, high, (self.batch_size,), generator=self.generator)
        win = self.train[starts[:, None] + self._offsets]  # [B, T+1]
        return win[:, :-1], win[:, 1:]

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


def val_windows(val: torch.Tensor, *, seq_len: int, max_tokens: int | None = None) -> torch.Tensor:
    """The fixed validation subset: consecutive non-overlapping windows, ``[N, seq_len + 1]``.

    Windows start every ``seq_len`` bytes (each window's last byte is the next one's first, so
    every byte after the first is predicted once). ``max_tokens`` caps ``N * seq_len`` by taking
    the first windows; the subset is the same for every variant, seed and step.
    """
    n = (val.numel() - 1) // seq_len
    if max_tokens is not None:
        n = min(n, max(1, max_tokens // seq_len))
    starts = torch.arange(n) * seq_len
    return val[starts[:, None] + torch.arange(seq_len + 1)]
