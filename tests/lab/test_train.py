import math

import pytest
import torch

from ffnlab import files
from ffnlab.lab.train.data import load_corpus, val_windows
from ffnlab.lab.train.loop import TrainConfig, lr_at, train_run
from ffnlab.lab.train.model import ModelConfig, TinyGPT, init_parameters
from ffnlab.lab.train.probes import dead_fraction


def run(*args, **kwargs):
    # The reference backend: under TRITON_INTERPRET=1 (make test) "auto" would pick the Triton
    # interpreter, which is exact but ~100x slower; the backends' agreement is tested in tests/ops.
    return train_run(*args, backend="reference", **kwargs)


TEXT = (
    "The quick brown fox jumps over the lazy dog. A feed-forward block maps each token "
    "on its own; attention mixes tokens. Pack my box with five dozen liquor jugs. "
) * 40
MODEL = ModelConfig(dim=16, n_layers=1, n_heads=2, seq_len=16)
TRAIN = TrainConfig(steps=12, batch_size=4, lr=1e-2, warmup=2, eval_every=4,
                    eval_tokens=256, ckpt_every=3)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "t.txt"
    path.write_text(TEXT)
    return load_corpus(path, seq_len=MODEL.seq_len)


@pytest.fixture(scope="module")
def straight(corpus):
    """Uninterrupted runs, computed once per (variant, seed) for the module."""
    cache = {}

    def get(variant, seed, optimizer="adamw"):
        if (variant, seed, optimizer) not in cache:
            cfg = TrainConfig(**{**TRAIN.as_dict(), "optimizer": optimizer})
            cache[variant, seed, optimizer] = run(variant, seed, corpus, MODEL, cfg)
        return cache[variant, seed, optimizer]

    return get


def _comparable(rec):
    keep = ("val_bpb", "curve", "dead_fraction", "final_train_loss", "diverged", "steps_done")
    return {k: rec[k] for k in keep}


def test_lr_schedule():
    cfg = TrainConfig(steps=100, batch_size=1, lr=1.0, warmup=10, eval_every=10, eval_tokens=1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.55)  # halfway through the cosine: (1 + 0.1) / 2
    assert lr_at(100, cfg) == pytest.approx(0.1)
    lrs = [lr_at(s, cfg) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))


def test_bad_train_config():
    with pytest.raises(ValueError, match="lr must be a positive number"):
        TrainConfig(steps=1, batch_size=1, lr=float("nan"), warmup=0, eval_every=1, eval_tokens=1)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        TrainConfig(steps=0, batch_size=1, lr=1.0, warmup=0, eval_every=1, eval_tokens=1)


def test_loss_decreases_and_record_fields(corpus):
    cfg = TrainConfig(steps=40, batch_size=8, lr=1e-2, warmup=4, eval_every=20, eval_tokens=512)
    rec = run("swiglu", 0, corpus, MODEL, cfg)
    steps = [s for s, _ in rec["curve"]]
    assert steps == [0, 20, 40]
    first, last = rec["curve"][0][1], rec["curve"][-1][1]
    assert first > 7.0  # ~8 bits/byte = uniform over 256 bytes at init
    assert last < first - 2.0, rec["curve"]
    assert rec["val_bpb"] == last and not rec["diverged"]
    assert rec["tokens_per_s"] > 0 and 0.0 <= rec["dead_fraction"] <= 1.0
    assert rec["final_train_loss"] / math.log(2) < first


def test_resume_after_interrupt_matches_uninterrupted(corpus, straight, tmp_path):
    stem = tmp_path / "ck" / "reglu-s1"

    def stop(ev):
        if ev["step"] == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run("reglu", 1, corpus, MODEL, TRAIN, checkpoint=stem, on_step=stop)
    meta = files.read_json(stem.with_name("reglu-s1.json"))
    assert meta["step"] == 6  # the last checkpoint before the interruption
    # only the latest tensor file is kept
    assert [p.name for p in stem.parent.glob("*.safetensors")] == ["reglu-s1.6.safetensors"]
    resumed = run("reglu", 1, corpus, MODEL, TRAIN, checkpoint=stem)
    assert resumed["resumed_from"] == 6
    assert _comparable(resumed) == _comparable(straight("reglu", 1))


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
@pytest.mark.parametrize("damage", ["truncate", "flip", "meta_sha"])
def test_corrupted_checkpoint_is_detected_and_retrained(corpus, straight, tmp_path, damage,
                                                        optimizer):
    stem = tmp_path / "gelu-s0"
    cfg = TrainConfig(**{**TRAIN.as_dict(), "optimizer": optimizer})

    def stop(ev):
        if ev["step"] == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run("gelu", 0, corpus, MODEL, cfg, checkpoint=stem, on_step=stop)
    (st,) = tmp_path.glob("gelu-s0.*.safetensors")
    blob = bytearray(st.read_bytes())
    if damage == "truncate":
        st.write_bytes(bytes(blob[: len(blob) // 2]))
    elif damage == "flip":
        blob[-5] ^= 0xFF  # a tensor byte: still parses, wrong numbers
        st.write_bytes(bytes(blob))
    else:
        meta = files.read_json(tmp_path / "gelu-s0.json")
        meta["sha256"] = "0" * 64
        files.atomic_write_json(tmp_path / "gelu-s0.json", meta)
    messages = []
    rec = run("gelu", 0, corpus, MODEL, cfg, checkpoint=stem, log=messages.append)
    assert rec["resumed_from"] == 0
    assert any("sha256" in m and "from scratch" in m for m in messages), messages
    assert _comparable(rec) == _comparable(straight("gelu", 0, optimizer))


def test_checkpoint_from_other_config_is_not_loaded(corpus, tmp_path):
    stem = tmp_path / "relu-s0"
    with pytest.raises(KeyboardInterrupt):
        run("relu", 0, corpus, MODEL, TRAIN, checkpoint=stem,
                  on_step=lambda ev: (_ for _ in ()).throw(KeyboardInterrupt) if ev["step"] == 4 else None)
    messages = []
    other = TrainConfig(**{**TRAIN.as_dict(), "lr": 5e-3})
    rec = run("relu", 0, corpus, MODEL, other, checkpoint=stem, log=messages.append)
    assert rec["resumed_from"] == 0 and any("another configuration" in m for m in messages)


def test_divergence_is_recorded_not_raised(corpus):
    cfg = TrainConfig(**{**TRAIN.as_dict(), "lr": 1e30})
    rec = run("bilinear", 0, corpus, MODEL, cfg)
    assert rec["diverged"] is True and rec["val_bpb"] is None
    assert rec["steps_done"] < cfg.steps or rec["curve"][-1][1] is None


@pytest.mark.parametrize("variant, dead_rows", [("relu", 16), ("gelu", 16), ("swiglu", 10)])
def test_dead_fraction_counts_silenced_units(corpus, variant, dead_rows):
    m = TinyGPT(MODEL, variant)
    init_parameters(m, 0)
    ffn = m.blocks[0].ffn
    with torch.no_grad():
        ffn.w1.weight[:dead_rows] = 0.0  # act(0) == 0 for relu, gelu and swish
    w = val_windows(corpus.val, seq_len=MODEL.seq_len)
    frac = dead_fraction(m, w, batch_size=8, dtype=torch.float32)
    assert frac == pytest.approx(dead_rows / ffn.hidden_dim)


def test_variants_see_the_same_batches(corpus, monkeypatch):
    import ffnlab.lab.train.loop as train_mod

    seen: dict[str, list[torch.Tensor]] = {}

    class Spy(train_mod.BatchSampler):
        def next(self):
            x, y = super().next()
            seen.setdefault(self.tag, []).append(x.clone())
            return x, y

    for variant in ("relu", "swiglu"):
        Spy.tag = variant
        monkeypatch.setattr(train_mod, "BatchSampler", Spy)
        torch.manual_seed(len(variant))  # the global RNG must not matter
        run(variant, 5, corpus, MODEL, TrainConfig(**{**TRAIN.as_dict(), "steps": 4}))
    assert len(seen["relu"]) == 4
    assert all(torch.equal(a, b) for a, b in zip(seen["relu"], seen["swiglu"], strict=True))


def test_atomic_json_write(tmp_path):
    path = files.atomic_write_json(tmp_path / "a" / "r.json", {"x": [1, 2.5]})
    assert files.read_json(path) == {"x": [1, 2.5]}
    assert (path.stat().st_mode & 0o777) == 0o644
    with pytest.raises(ValueError):
        files.atomic_write_json(path, {"x": float("nan")})  # not JSON: refused, old file kept
    assert files.read_json(path) == {"x": [1, 2.5]}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temp files left


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_evaluating_on_the_way_changes_nothing_in_training(corpus, straight, optimizer):
    """Tuning runs evaluate only at the start and the end (``CompareRunner.job``): their final
    bpb, loss and dead share equal those of the same run evaluated every 4 steps."""
    once = run("swiglu", 0, corpus, MODEL,
               TrainConfig(**{**TRAIN.as_dict(), "eval_every": TRAIN.steps, "optimizer": optimizer}))
    every = straight("swiglu", 0, optimizer)
    assert [s for s, _ in once["curve"]] == [0, TRAIN.steps]
    assert len(every["curve"]) > 2
    for k in ("val_bpb", "final_train_loss", "dead_fraction"):
        assert once[k] == every[k], k
