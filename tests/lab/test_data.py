import hashlib

import pytest
import torch

from ffnlab.cli import main
from ffnlab.errors import UsageError
from ffnlab.lab.train.data import BatchSampler, default_corpus_bytes, load_corpus, val_windows


def _write(path, text):
    path.write_bytes(text.encode())
    return path


def test_default_corpus_is_deterministic_prose():
    a, b = default_corpus_bytes(), default_corpus_bytes()
    assert a == b and len(a) > 300_000
    assert b"the" in a[:10_000]


def test_split_and_identity(tmp_path):
    data = bytes(range(256)) * 8  # 2048 bytes
    (tmp_path / "c.txt").write_bytes(data)
    c = load_corpus(tmp_path / "c.txt", seq_len=16)
    assert c.bytes == 2048 and c.val.numel() == 204 and c.train.numel() == 2048 - 204
    assert c.sha256 == hashlib.sha256(data).hexdigest()
    # the validation split is the last 10% of the bytes, in order
    assert bytes(c.val.tolist()) == data[-204:]
    assert bytes(c.train.tolist()) == data[:-204]
    ident = c.identity()
    assert ident == {"name": "c.txt", "bytes": 2048, "sha256": c.sha256,
                     "train_bytes": 1844, "val_bytes": 204}
    assert load_corpus(tmp_path / "c.txt", seq_len=16).sha256 == c.sha256


def test_folder_recursive_sorted_skips_hidden(tmp_path):
    (tmp_path / "b").mkdir()
    _write(tmp_path / "b" / "z.txt", "Z" * 400)
    _write(tmp_path / "a.txt", "A" * 400)
    _write(tmp_path / ".hidden.txt", "H" * 400)
    (tmp_path / ".git").mkdir()
    _write(tmp_path / ".git" / "x", "G" * 400)
    c = load_corpus(tmp_path, seq_len=8)
    allbytes = bytes(c.train.tolist() + c.val.tolist())
    assert allbytes == b"A" * 400 + b"Z" * 400


@pytest.mark.parametrize(
    "setup, needle",
    [
        (lambda p: p / "missing.txt", "does not exist"),
        (lambda p: _write(p / "empty.txt", ""), "is empty"),
        (lambda p: _write(p / "small.txt", "x" * 100), "too few"),
    ],
)
def test_bad_data_one_line_exit_2(tmp_path, capsys, setup, needle):
    path = setup(tmp_path)
    rc = main(["compare", "--preset", "smoke", "--data", str(path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_too_small_message_names_the_need(tmp_path):
    _write(tmp_path / "s.txt", "y" * 300)
    with pytest.raises(UsageError, match=r"300 bytes.*at least \d+ bytes at seq_len 64"):
        load_corpus(tmp_path / "s.txt", seq_len=64)


def test_batches_depend_on_seed_only(tmp_path):
    train = torch.arange(1000) % 256
    s1 = BatchSampler(train, batch_size=4, seq_len=8, seed=3)
    s2 = BatchSampler(train, batch_size=4, seq_len=8, seed=3)
    torch.manual_seed(123)  # the global RNG must not matter
    x1, y1 = s1.next()
    torch.rand(10)
    x2, y2 = s2.next()
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (4, 8) and torch.equal(x1[:, 1:], y1[:, :-1])
    other = BatchSampler(train, batch_size=4, seq_len=8, seed=4).next()[0]
    assert not torch.equal(other, x1)


def test_sampler_state_roundtrip():
    s = BatchSampler(torch.arange(500) % 256, batch_size=2, seq_len=5, seed=0)
    s.next()
    st = s.state()
    a = s.next()[0]
    s.set_state(st)
    assert torch.equal(s.next()[0], a)


def test_val_windows_fixed_and_capped():
    val = torch.arange(101)
    w = val_windows(val, seq_len=10)
    assert w.shape == (10, 11) and w[1, 0] == 10 and w[0, -1] == 10
    assert val_windows(val, seq_len=10, max_tokens=30).shape == (3, 11)
