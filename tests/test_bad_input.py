"""Bad input at every entry point: one clear line and exit 2 (CLI), or one ValueError/TypeError (API).

Every row of ``CLI_CASES`` is a command line (``{tmp}`` is replaced by the test's folder, where
``setup`` has made whatever files the row needs) and a piece of the message the user must see.
``docs/robustness.md`` lists the same rows with the full messages.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import ffnlab
from ffnlab import FeedForward
from ffnlab.cli import main
from ffnlab.lab import config as config_mod
from ffnlab.lab.measure import memory as measure_mod
from ffnlab.lab.train.data import load_corpus
from ffnlab.lab.train.loop import TrainConfig
from ffnlab.ops.function import fused_feed_forward

TEXT = "a small corpus of plain text for the lab; " * 40  # 1680 bytes: enough for smoke

# compare fails before any training in every row below; smoke keeps a mistaken pass short.
COMPARE = ["compare", "--preset", "smoke", "--steps", "2", "--variants", "relu",
           "--backend", "reference", "--data", "{tmp}/corpus.txt", "--out", "{tmp}/out"]
BENCH = ["bench", "--dim", "8", "--tokens", "4", "--repeats", "1", "--warmup", "0",
         "--variants", "relu", "--providers", "reference", "--no-elementwise", "--out", "{tmp}/out"]


def _compare(**change: str) -> list[str]:
    """COMPARE with ``--flag value`` replaced or appended (``flag`` with _ for -)."""
    argv = list(COMPARE)
    for flag, value in change.items():
        opt = "--" + flag.replace("_", "-")
        if opt in argv:
            argv[argv.index(opt) + 1] = value
        else:
            argv += [opt, value]
    return argv


def _bench(*extra: str) -> list[str]:
    return [*BENCH, *extra]


def _setup(tmp: Path) -> None:
    (tmp / "corpus.txt").write_text(TEXT)
    (tmp / "empty.txt").write_bytes(b"")
    (tmp / "short.txt").write_text("too short")
    (tmp / "emptydir").mkdir()
    (tmp / "afile").write_text("not a folder")
    (tmp / "bad.json").write_text("{not json")
    (tmp / "list.json").write_text("[1, 2, 3]")
    (tmp / "novariants.json").write_text(json.dumps({"config": {}}))
    (tmp / "badvariant.json").write_text(json.dumps({"variants": [{"name": 3}]}))
    (tmp / "binary.json").write_bytes(b"\xff\xfe\x00garbage")


# (id, argv, message fragment)
CLI_CASES = [
    # variants
    ("variants: misspelt variant", ["variants", "--variants", "swigl"], "did you mean 'swiglu'"),
    ("variants: --dim 0", ["variants", "--dim", "0"], "--dim must be a positive integer, got 0"),
    ("variants: --dim -8", ["variants", "--dim", "-8"], "--dim must be a positive integer, got -8"),
    ("variants: --dim not a number", ["variants", "--dim", "x"], "invalid int value: 'x'"),
    ("variants: --multiple-of 0", ["variants", "--multiple-of", "0"],
     "--multiple-of must be a positive integer"),
    ("unknown command", ["frobnicate"], "invalid choice: 'frobnicate'"),
    # plot
    ("plot: --out is a file", ["plot", "--out", "{tmp}/afile"], "is a file, not a folder"),
    ("plot: --out under a file", ["plot", "--out", "{tmp}/afile/sub"], "cannot write to output folder"),
    ("plot: --range 0", ["plot", "--range", "0", "--out", "{tmp}/out"], "--range must be > 0"),
    # bench
    ("bench: --dim 0", _bench("--dim", "0"), "--dim must be a positive integer"),
    ("bench: --dim -1", _bench("--dim", "-1"), "--dim must be a positive integer"),
    ("bench: --tokens 0", _bench("--tokens", "0"), "--tokens must be a positive integer"),
    ("bench: --tokens not a number", _bench("--tokens", "4,many"), "--tokens takes positive integers"),
    ("bench: --hidden -3", _bench("--hidden", "-3"), "--hidden must be a positive integer"),
    ("bench: --hidden empty", _bench("--hidden", ","), "--hidden is empty"),
    ("bench: --repeats 0", _bench("--repeats", "0"), "--repeats must be a positive integer"),
    ("bench: --dtype int8", _bench("--dtype", "int8"), "unknown dtype 'int8'"),
    ("bench: --dtype complex64", _bench("--dtype", "complex64"), "unknown dtype 'complex64'"),
    ("bench: --dtype misspelt", _bench("--dtype", "bfloat61"), "did you mean 'bfloat16'"),
    ("bench: --device tpu", _bench("--device", "tpu"), "device 'tpu'"),
    ("bench: misspelt variant", _bench("--variants", "gegl"), "did you mean 'geglu'"),
    ("bench: misspelt provider", _bench("--providers", "refrence"), "did you mean 'reference'"),
    ("bench: MoE top_k above its experts", _bench("--variants", "moe:swiglu:2x4"),
     "'moe:swiglu:2x4': top_k=4 exceeds the 2 experts"),
    ("bench: MoE with other variants", _bench("--variants", "relu,moe:swiglu:4x2"),
     "give --variants moe:swiglu:4x2 alone"),
    ("bench: --out is a file", [*BENCH[:-1], "{tmp}/afile"], "is a file, not a folder"),
    # compare
    ("compare: misspelt preset", _compare(preset="quik"), "did you mean 'quick'"),
    ("compare: --steps 0", _compare(steps="0"), "--steps must be a positive integer, got 0"),
    ("compare: --steps -5", _compare(steps="-5"), "--steps must be a positive integer, got -5"),
    ("compare: --seeds 0", _compare(seeds="0"), "--seeds must be a positive integer, got 0"),
    ("compare: --seed -1", _compare(seed="-1"), "--seed must be a non-negative integer"),
    ("compare: misspelt variant", _compare(variants="relu,swigl"), "did you mean 'swiglu'"),
    ("compare: empty variant list", _compare(variants=","), "no variant named in ','"),
    ("compare: MoE of a misspelt variant", _compare(variants="moe:swigl:8x2"),
     "did you mean 'swiglu'"),
    ("compare: MoE top_k above its experts", _compare(variants="moe:swiglu:2x4"),
     "top_k=4 exceeds the 2 experts"),
    ("compare: MoE without ExK", _compare(variants="moe:swiglu:8"),
     "the experts part must be <experts>x<top_k>"),
    ("compare: misspelt backend", _compare(backend="fusd"), "did you mean 'fused'"),
    ("compare: misspelt optimizer", _compare(optimizer="mun"), "did you mean 'muon'"),
    ("compare: --dtype int32", _compare(dtype="int32"), "unknown dtype 'int32'"),
    ("compare: --data missing", _compare(data="{tmp}/nope.txt"), "does not exist"),
    ("compare: --data empty file", _compare(data="{tmp}/empty.txt"), "is empty"),
    ("compare: --data empty folder", _compare(data="{tmp}/emptydir"), "is empty"),
    ("compare: --data shorter than a sequence", _compare(data="{tmp}/short.txt"),
     "has 9 bytes, too few"),
    ("compare: --out is a file", _compare(out="{tmp}/afile"), "is a file, not a folder"),
    ("compare: --out under a file", _compare(out="{tmp}/afile/out"), "cannot write to output folder"),
    # advise
    ("advise: missing results", ["advise", "--results", "{tmp}/nope.json"], "no such file"),
    ("advise: results not JSON", ["advise", "--results", "{tmp}/bad.json"], "is not valid JSON"),
    ("advise: results not UTF-8", ["advise", "--results", "{tmp}/binary.json"], "cannot read"),
    ("advise: results a list", ["advise", "--results", "{tmp}/list.json"], "is not a lab results file"),
    ("advise: results without variants", ["advise", "--results", "{tmp}/novariants.json"],
     "is not a lab results file"),
    ("advise: malformed variant entry", ["advise", "--results", "{tmp}/badvariant.json"],
     "is not a lab results file"),
    ("advise: results is a folder", ["advise", "--results", "{tmp}/emptydir"],
     "is a folder; give its results.json"),
]
if not torch.cuda.is_available():
    CLI_CASES += [
        ("bench: --device cuda without a GPU", _bench("--device", "cuda"), "no CUDA GPU is available"),
        ("compare: --device cuda without a GPU", _compare(device="cuda"), "no CUDA GPU is available"),
    ]


def run_cli(argv: list[str], tmp: Path, capsys) -> tuple[int, str]:
    """``(exit code, stderr)`` of ``ffnlab argv`` with ``{tmp}`` filled in."""
    capsys.readouterr()
    rc = main([a.replace("{tmp}", str(tmp)) for a in argv])
    return rc, capsys.readouterr().err


def assert_one_line(err: str, needle: str) -> None:
    assert needle in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("ffnlab"), err


@pytest.mark.parametrize("argv, needle", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input_exits_2_with_one_line(argv, needle, tmp_path, capsys):
    _setup(tmp_path)
    rc, err = run_cli(argv, tmp_path, capsys)
    assert rc == 2
    assert_one_line(err, needle)
    # Refused before any work: nothing written to the output folder.
    out = tmp_path / "out"
    assert not (out / "results.json").exists() and not (out / "bench.json").exists()


def test_compare_unreadable_corpus(tmp_path, capsys):
    _setup(tmp_path)
    locked = tmp_path / "locked.txt"
    locked.write_text(TEXT)
    locked.chmod(0)
    try:
        readable = os.access(locked, os.R_OK)  # root (and CAP_DAC_OVERRIDE) reads it anyway
        if readable:
            pytest.skip("running with permission to read a chmod 000 file (root)")
        rc, err = run_cli(_compare(data=str(locked)), tmp_path, capsys)
    finally:
        locked.chmod(0o644)
    assert rc == 2
    assert_one_line(err, "cannot read")


@pytest.mark.skipif(not Path("/proc/self/mem").is_file(), reason="needs Linux /proc")
def test_compare_corpus_that_fails_to_read(tmp_path, capsys):
    """Readable by permissions (even for root) but every read fails with EIO."""
    _setup(tmp_path)
    rc, err = run_cli(_compare(data="/proc/self/mem"), tmp_path, capsys)
    assert rc == 2
    assert_one_line(err, "cannot read '/proc/self/mem': Input/output error")


def test_compare_unwritable_out(tmp_path, capsys):
    _setup(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running with permission to write a 0555 folder (root)")
        rc, err = run_cli(_compare(out=str(ro / "out")), tmp_path, capsys)
    finally:
        ro.chmod(0o755)
    assert rc == 2
    assert_one_line(err, "cannot write to output folder")


def test_compare_refuses_a_run_bigger_than_memory(tmp_path, capsys, monkeypatch):
    """The estimate is checked before anything is allocated, and the message says how much."""
    _setup(tmp_path)
    monkeypatch.setattr(measure_mod, "available_memory_bytes", lambda device: 2**30)
    rc, err = run_cli(_compare(preset="full", steps="2"), tmp_path, capsys)
    assert rc == 2
    assert_one_line(err, "preset 'full' needs about")
    assert "GiB but only 1.0 GiB is available on cpu" in err
    assert not (tmp_path / "out").exists()


def test_compare_full_preset_estimate_is_stated_in_gib():
    preset, model, train = config_mod.resolve_config("full")
    need = measure_mod.estimate_memory_bytes(model, batch_size=train.batch_size,
                                          dtype=torch.float32)
    # 256-wide, 4 layers, batch 32 x 256 tokens: about 2.0 GiB, so a 1 GiB machine is refused
    assert 2**30 < need < 4 * 2**30


# --- the library ------------------------------------------------------------------------------

def _ffn(**kw):
    return lambda: FeedForward(**{"dim": 8, **kw})


def _forward(x, **kw):
    def go():
        FeedForward(8, 16, **kw)(x)
    return go


def _fused(**shapes):
    def go():
        x = torch.randn(3, shapes.get("dim", 8))
        w1 = torch.randn(16, 8)
        w2 = torch.randn(*shapes.get("w2", (8, 16)))
        w3 = torch.randn(*shapes["w3"]) if "w3" in shapes else None
        fused_feed_forward(x, w1, w2, w3, activation="silu" if w3 is not None else "relu")
    return go


API_CASES = [
    ("dim 0", _ffn(dim=0), ValueError, "dim must be a positive integer, got 0"),
    ("dim -4", _ffn(dim=-4), ValueError, "dim must be a positive integer, got -4"),
    ("dim float", _ffn(dim=8.0), ValueError, "dim must be a positive integer, got 8.0"),
    ("hidden_dim 0", _ffn(hidden_dim=0), ValueError, "hidden_dim must be a positive integer"),
    ("hidden_dim -1", _ffn(hidden_dim=-1), ValueError, "hidden_dim must be a positive integer"),
    ("unknown variant", _ffn(variant="swigl"), ValueError, "did you mean 'swiglu'"),
    ("variant in hidden_dim's place", lambda: FeedForward(8, "geglu"), ValueError,
     "hidden_dim is a size, got the string 'geglu': the variant comes after the sizes, "
     "FeedForward(dim, hidden_dim=None, variant='swiglu', *, ...); pass variant='geglu'"),
    ("MoE: variant in n_experts' place", lambda: ffnlab.MoEFeedForward(8, 12, "swiglu", 4, 2),
     ValueError, "n_experts is a size, got the string 'swiglu': the variant comes after the "
     "sizes, MoEFeedForward(dim, hidden_dim, n_experts, top_k, variant='swiglu', *, ...)"),
    ("MoE: option of no variant", lambda: ffnlab.MoEFeedForward(8, 12, 4, 2, act_kwargs={"L": 7}),
     ValueError, "unknown act_kwargs 'L' for activation 'swish'; accepted keys: none"),
    ("unknown backend", _ffn(backend="tritn"), ValueError, "did you mean 'triton'"),
    ("unknown recompute", _ffn(recompute="ful"), ValueError, "did you mean 'full'"),
    ("dropout 1", _ffn(dropout=1.0), ValueError, "dropout must be a probability in [0, 1)"),
    ("beta nan", _ffn(variant="swish", beta=float("nan")), ValueError, "beta must be finite"),
    ("integer parameters", _ffn(dtype=torch.int32), TypeError, "need a float dtype"),
    ("wrong last dim", _forward(torch.randn(2, 7)), ValueError, "expects input [..., 8], got shape [2, 7]"),
    ("0-d input", _forward(torch.tensor(1.0)), ValueError, "expects input [..., 8]"),
    ("integer input", _forward(torch.ones(2, 8, dtype=torch.int64)), TypeError,
     "needs a float input, got dtype torch.int64"),
    ("complex input", _forward(torch.ones(2, 8, dtype=torch.complex64)), TypeError,
     "needs a float input, got dtype torch.complex64"),
    ("dtype mismatch", _forward(torch.ones(2, 8, dtype=torch.float64)), TypeError,
     "does not match the parameters' torch.float32"),
    ("not a tensor", _forward([[1.0] * 8]), TypeError, "expects a torch.Tensor, got list"),
    ("get_variant unknown", lambda: ffnlab.get_variant("rlu"), ValueError, "did you mean 'relu'"),
    ("llama_hidden_dim dim 0", lambda: ffnlab.llama_hidden_dim(0), ValueError,
     "dim must be a positive integer"),
    ("llama_hidden_dim multiple_of 0", lambda: ffnlab.llama_hidden_dim(64, multiple_of=0),
     ValueError, "multiple_of must be a positive integer"),
    ("llama_hidden_dim negative multiplier",
     lambda: ffnlab.llama_hidden_dim(64, ffn_dim_multiplier=-1.0), ValueError,
     "ffn_dim_multiplier must be > 0"),
    ("fused: wrong input dim", _fused(dim=5), ValueError, "input must be [..., 8], got [3, 5]"),
    ("fused: wrong w2", _fused(w2=(8, 15)), ValueError, "w2 must be [out, 16]"),
    ("fused: wrong w3", _fused(w3=(15, 8)), ValueError, "w3 must have w1's shape"),
    ("TrainConfig steps 0", lambda: TrainConfig(steps=0, batch_size=2, lr=1e-3, warmup=0,
                                                 eval_every=1, eval_tokens=8),
     ValueError, "steps must be a positive integer, got 0"),
    ("TrainConfig lr -1", lambda: TrainConfig(steps=2, batch_size=2, lr=-1.0, warmup=0,
                                               eval_every=1, eval_tokens=8),
     ValueError, "lr must be a positive number"),
    ("resolve_config steps 0", lambda: config_mod.resolve_config("smoke", steps=0), ValueError,
     "--steps must be a positive integer"),
    ("load_corpus missing", lambda: load_corpus("/nonexistent/ffnlab.txt", seq_len=8), ValueError,
     "does not exist"),
]


@pytest.mark.parametrize("call, exc, needle", [c[1:] for c in API_CASES],
                         ids=[c[0] for c in API_CASES])
def test_api_bad_input_raises_one_clear_error(call, exc, needle):
    with pytest.raises(exc) as info:
        call()
    msg = str(info.value)
    assert needle in msg, msg
    assert "\n" not in msg, msg
