"""The lab's MoE spelling ``moe:<variant>:<E>x<k>``: parsing, bad input, sizing, the model's
MoE block, paired initialisation of 3-D expert weights, and MoE training runs."""

from __future__ import annotations

import math

import pytest
import torch

from ffnlab import MoEFeedForward
from ffnlab.cli import main
from ffnlab.errors import UsageError
from ffnlab.lab.config import CompareConfig
from ffnlab.lab.names import file_stem, is_moe, moe_base
from ffnlab.lab.train import loop as train_mod
from ffnlab.lab.train.data import load_corpus, val_windows
from ffnlab.lab.train.loop import TrainConfig, train_run
from ffnlab.lab.train.model import ModelConfig, TinyGPT, init_parameters
from ffnlab.lab.train.probes import dead_fraction, expert_load
from ffnlab.lab.train.variant import canonical_name, lab_variant, parse_lab_variants
from ffnlab.sizing import default_hidden_dim, ffn_params

# --- spelling -------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "want"), [
    ("moe:swiglu:8x2", "moe:swiglu:8x2"),
    (" MoE: swiglu : 4 x 1 ", "moe:swiglu:4x1"),
    ("moe:silu:2x2", "moe:swish:2x2"),  # an alias of the registry becomes its canonical name
    ("relu", "relu"),
])
def test_canonical_names(text, want):
    assert canonical_name(text) == want
    assert is_moe(want) == want.startswith("moe:")
    assert moe_base(want) == lab_variant(want).base


def test_parse_list_keeps_order_and_drops_repeats():
    assert parse_lab_variants("swiglu, moe:swiglu:8x2,moe:swiglu:8x2 ,relu") == [
        "swiglu", "moe:swiglu:8x2", "relu"]
    assert CompareConfig(preset="smoke", variants=("swiglu", "moe: swiglu:8x2")).variants == (
        "swiglu", "moe:swiglu:8x2")


@pytest.mark.parametrize(("text", "needle"), [
    ("moe:swigl:8x2", "did you mean 'swiglu'"),
    ("moe:swiglu:0x1", "the number of experts must be at least 1, got 0"),
    ("moe:swiglu:4x0", "top_k must be at least 1, got 0"),
    ("moe:swiglu:2x3", "top_k=3 exceeds the 2 experts"),
    ("moe:swiglu:8", "must be <experts>x<top_k>"),
    ("moe:swiglu:8x-2", "must be <experts>x<top_k>"),
    ("moe:swiglu", "is not a mixture of experts spelling"),
    ("moe::8x2", "is not a mixture of experts spelling"),
    ("moe:swiglu:8x2:1", "is not a mixture of experts spelling"),
])
def test_bad_spellings_name_the_problem(text, needle):
    with pytest.raises(ValueError, match=None) as exc:
        canonical_name(text)
    assert isinstance(exc.value, UsageError) and needle in str(exc.value)


@pytest.mark.parametrize(("spelling", "needle"), [
    ("swiglu,moe:swigl:4x2", "did you mean 'swiglu'"),
    ("swiglu,moe:swiglu:0x2", "the number of experts must be at least 1"),
    ("swiglu,moe:swiglu:2x4", "top_k=4 exceeds the 2 experts"),
    ("swiglu,moe:swiglu:x2", "must be <experts>x<top_k>"),
])
def test_cli_refuses_bad_moe_spelling_with_one_line(spelling, needle, tmp_path, capsys):
    (tmp_path / "c.txt").write_text("a small corpus of plain text for the lab; " * 40)
    out = tmp_path / "out"
    rc = main(["compare", "--preset", "smoke", "--steps", "2", "--variants", spelling,
               "--data", str(tmp_path / "c.txt"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ffnlab") and needle in err, err
    assert not out.exists()


def test_the_lab_names_mixtures_as_the_parser_spells_them():
    from ffnlab import moe_spelling
    from ffnlab.lab import names

    assert names.MOE_PREFIX == moe_spelling.MOE_PREFIX
    assert names.is_moe(canonical_name("MoE:swiglu:8X2"))


def test_file_stem_has_no_colon():
    assert file_stem("moe:swiglu:8x2") == "moe-swiglu-8x2"
    assert file_stem("swiglu") == "swiglu"


# --- sizing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("spelling", "dim"), [("moe:swiglu:8x2", 64), ("moe:swiglu:4x2", 32),
                                               ("moe:relu:3x3", 20), ("moe:geglu:5x1", 24)])
def test_active_expert_weights_match_the_dense_ffn(spelling, dim):
    lv = lab_variant(spelling)
    dense = default_hidden_dim(lv.base, dim, multiple_of=1)
    assert lv.hidden(dim) == (dense + lv.top_k // 2) // lv.top_k
    expert = ffn_params(lv.base, dim, lv.hidden(dim), bias=False)
    router = lv.n_experts * dim
    assert lv.params_total(dim) == lv.n_experts * expert + router
    assert lv.params_active(dim) == lv.top_k * expert + router
    # The k experts of a token hold the dense weights, within k/2 hidden units of rounding.
    gap = abs(lv.top_k * lv.hidden(dim) - dense)
    assert gap <= lv.top_k // 2
    assert lv.params_total(dim) > lv.params_active(dim) or lv.n_experts == lv.top_k


def test_swiglu_8x2_at_dim_64_is_exact():
    lv = lab_variant("moe:swiglu:8x2")
    assert (lv.hidden(64), lv.params_active(64) - 8 * 64) == (85, 3 * 170 * 64)
    assert lv.params_total(64) == 8 * 3 * 85 * 64 + 8 * 64


# --- the model --------------------------------------------------------------------------------

CFG = ModelConfig(dim=16, n_layers=2, n_heads=2, seq_len=16)


def test_block_is_an_moe_with_the_sized_experts():
    model = TinyGPT(CFG, "moe:swiglu:4x2", backend="reference")
    assert model.variant == "moe:swiglu:4x2" and model.is_moe
    assert len(model.moe_layers()) == CFG.n_layers
    m = model.moe_layers()[0]
    assert isinstance(m, MoEFeedForward) and (m.n_experts, m.top_k) == (4, 2)
    assert m.hidden_dim == lab_variant("moe:swiglu:4x2").hidden(16)
    ffn = sum(p.numel() for n, p in model.named_parameters() if ".ffn." in n)
    assert ffn == CFG.n_layers * lab_variant("moe:swiglu:4x2").params_total(16)
    assert TinyGPT(CFG, "swiglu").moe_layers() == []


def test_init_pairs_the_non_ffn_weights_and_scales_expert_weights_by_fan_in():
    dense, moe = TinyGPT(CFG, "swiglu"), TinyGPT(CFG, "moe:swiglu:8x2")
    init_parameters(dense, 3)
    init_parameters(moe, 3)
    d, m = dict(dense.named_parameters()), dict(moe.named_parameters())
    shared = [n for n in d if ".ffn." not in n]
    assert shared and all(torch.equal(d[n], m[n]) for n in shared)
    w1 = m["blocks.0.ffn.experts.w1"]  # [E, hidden, dim]
    w2 = m["blocks.0.ffn.experts.w2"]  # [E, dim, hidden]
    assert w1.dim() == 3 and w1.shape[0] == 8
    assert w1.std().item() == pytest.approx(16 ** -0.5, rel=0.1)
    residual = 1 / math.sqrt(2 * CFG.n_layers)
    assert w2.std().item() == pytest.approx(w2.shape[-1] ** -0.5 * residual, rel=0.1)
    # 128 router weights per layer: the std of the sample std is about 6 %, so 30 % is 5 sigma
    assert m["blocks.0.ffn.router.weight"].std().item() == pytest.approx(16 ** -0.5, rel=0.3)
    again = TinyGPT(CFG, "moe:swiglu:8x2")
    init_parameters(again, 3)
    assert all(torch.equal(p, m[n]) for n, p in again.named_parameters())
    other = TinyGPT(CFG, "moe:swiglu:8x2")
    init_parameters(other, 4)
    assert not torch.equal(dict(other.named_parameters())["blocks.0.ffn.experts.w1"], w1)


def test_dead_units_and_gate_capture_skip_moe_cleanly():
    model = TinyGPT(CFG, "moe:swiglu:4x2", backend="reference")
    init_parameters(model, 0)
    windows = torch.randint(0, 256, (3, CFG.seq_len + 1))
    assert dead_fraction(model, windows, batch_size=2, dtype=torch.float32) is None
    with pytest.raises(UsageError, match="per expert"), model.capture_gate_preactivations():
        pass


def test_expert_load_counts_every_routed_slot():
    model = TinyGPT(CFG, "moe:swiglu:4x2", backend="reference")
    init_parameters(model, 0)
    windows = torch.randint(0, 256, (5, CFG.seq_len + 1), generator=torch.Generator().manual_seed(0))
    load = expert_load(model, windows, batch_size=2, dtype=torch.float32)
    assert len(load["share"]) == CFG.n_layers
    for counts, share, cv, mom in zip(load["tokens_per_expert"], load["share"], load["cv"],
                                      load["max_over_mean"], strict=True):
        assert sum(counts) == 5 * CFG.seq_len * 2
        assert sum(share) == pytest.approx(1.0)
        c = torch.tensor(counts, dtype=torch.float64)
        assert cv == pytest.approx(float(c.std(correction=0) / c.mean()))
        assert mom == pytest.approx(float(c.max() / c.mean()))
    assert expert_load(TinyGPT(CFG, "swiglu"), windows, batch_size=2, dtype=torch.float32) is None


# --- training ---------------------------------------------------------------------------------

TEXT = ("The quick brown fox jumps over the lazy dog. A feed-forward block maps each token "
        "on its own; attention mixes tokens. ") * 40
SMALL = ModelConfig(dim=16, n_layers=1, n_heads=2, seq_len=16)
TRAIN = TrainConfig(steps=8, batch_size=4, lr=1e-2, warmup=2, eval_every=4, eval_tokens=256)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "t.txt"
    path.write_text(TEXT)
    return load_corpus(path, seq_len=SMALL.seq_len)


def test_moe_run_is_deterministic_and_records_its_load(corpus):
    a = train_run("moe:swiglu:4x2", 0, corpus, SMALL, TRAIN, backend="reference")
    b = train_run("moe:swiglu:4x2", 0, corpus, SMALL, TRAIN, backend="reference")
    assert a["curve"] == b["curve"] and a["load_balance"] == b["load_balance"]
    assert a["dead_fraction"] is None and a["key"]["variant"] == "moe:swiglu:4x2"
    n_windows = val_windows(corpus.val, seq_len=SMALL.seq_len, max_tokens=TRAIN.eval_tokens).shape[0]
    assert sum(a["load_balance"]["tokens_per_expert"][0]) == n_windows * SMALL.seq_len * 2
    dense = train_run("swiglu", 0, corpus, SMALL, TRAIN, backend="reference")
    assert dense["load_balance"] is None and dense["dead_fraction"] is not None


def test_the_balancing_loss_is_part_of_the_objective(corpus, monkeypatch):
    with_aux = train_run("moe:swiglu:4x2", 1, corpus, SMALL, TRAIN, backend="reference")
    monkeypatch.setattr(train_mod, "LOAD_BALANCE_COEF", 0.0)
    without = train_run("moe:swiglu:4x2", 1, corpus, SMALL, TRAIN, backend="reference")
    # Same batches and initial weights: only the router's extra gradient differs.
    assert with_aux["curve"][0] == without["curve"][0]
    assert with_aux["curve"][-1] != without["curve"][-1]


def test_memory_estimate_counts_every_expert():
    from ffnlab.lab.measure.memory import estimate_memory_bytes

    dense = estimate_memory_bytes(SMALL, batch_size=4, dtype=torch.float32)
    assert estimate_memory_bytes(SMALL, batch_size=4, dtype=torch.float32,
                                 ffn_params=lab_variant("swiglu").params_total(16)) == dense
    moe = lab_variant("moe:swiglu:16x1").params_total(16)
    extra = (moe - 8 * 16 * 16) * 4 * 4 * 1.5  # x4 copies (weights, grads, 2 moments), fp32
    assert estimate_memory_bytes(SMALL, batch_size=4, dtype=torch.float32,
                                 ffn_params=moe) == pytest.approx(dense + extra, abs=2)


def test_moe_run_resumes_to_the_same_numbers(corpus, tmp_path):
    kw = {"backend": "reference"}
    straight = train_run("moe:swiglu:4x2", 2, corpus, SMALL, TRAIN, **kw)
    stem = tmp_path / "ck" / "moe-swiglu-4x2-s2"
    small_ckpt = TrainConfig(**{**TRAIN.as_dict(), "ckpt_every": 3})

    def stop(ev):
        if ev["step"] == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run("moe:swiglu:4x2", 2, corpus, SMALL, small_ckpt, checkpoint=stem, on_step=stop,
                  **kw)
    resumed = train_run("moe:swiglu:4x2", 2, corpus, SMALL, small_ckpt, checkpoint=stem, **kw)
    assert resumed["resumed_from"] == 3
    assert resumed["curve"] == straight["curve"]
    assert resumed["load_balance"] == straight["load_balance"]
