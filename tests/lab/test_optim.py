"""The lab's optimizers: which parameters Muon gets, the combined state dict, resume with Muon,
and the refusals (a mixture of experts, an unknown name)."""

from __future__ import annotations

import copy

import pytest
import torch

from ffnlab import files
from ffnlab.errors import UsageError
from ffnlab.lab.config import CompareConfig
from ffnlab.lab.train import checkpoint as io
from ffnlab.lab.train.data import load_corpus
from ffnlab.lab.train.loop import TrainConfig, train_run
from ffnlab.lab.train.model import ModelConfig, TinyGPT, init_parameters
from ffnlab.lab.train.muon import Muon
from ffnlab.lab.train.optim import MuonAdamW, build_optimizer, muon_parameter_names

MODEL = ModelConfig(dim=16, n_layers=2, n_heads=2, seq_len=16)
TEXT = ("Attention mixes tokens; the feed-forward block maps each one on its own. " * 60)
TRAIN = TrainConfig(steps=10, batch_size=4, lr=1e-2, warmup=2, eval_every=5, eval_tokens=256,
                    ckpt_every=3, optimizer="muon")


def _model(variant="swiglu", seed=0):
    m = TinyGPT(MODEL, variant, backend="reference")
    init_parameters(m, seed)
    return m


def _train_steps(model, opt, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randint(0, 256, (3, MODEL.seq_len), generator=g)
        loss = model(x).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def test_muon_takes_the_block_matrices_only():
    names = muon_parameter_names(_model())
    assert names == [f"blocks.{i}.{p}.weight" for i in range(2)
                     for p in ("attn.qkv", "attn.proj", "ffn.w1", "ffn.w2", "ffn.w3")]
    opt = build_optimizer(_model(), name="muon", lr=1e-3, weight_decay=0.1)
    assert isinstance(opt, MuonAdamW)
    assert isinstance(opt.muon, Muon) and isinstance(opt.adamw, torch.optim.AdamW)
    # embeddings decay, gains do not; every parameter is in exactly one group
    wd = [g["weight_decay"] for g in opt.param_groups]
    assert wd == [0.1, 0.1, 0.0]
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in _model_params(opt))


def _model_params(opt):
    return [p for g in opt.param_groups for p in g["params"]]


def test_adamw_is_plain_adamw():
    opt = build_optimizer(_model(), name="adamw", lr=1e-3, weight_decay=0.1)
    assert type(opt) is torch.optim.AdamW
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


def test_muon_changes_the_training():
    a, b = _model(), _model()
    _train_steps(a, build_optimizer(a, name="muon", lr=1e-2, weight_decay=0.1), 3)
    _train_steps(b, build_optimizer(b, name="adamw", lr=1e-2, weight_decay=0.1), 3)
    w_a, w_b = a.blocks[0].ffn.w1.weight, b.blocks[0].ffn.w1.weight
    assert not torch.equal(w_a, w_b)


def test_state_dict_round_trip_continues_bit_for_bit():
    """Save after 3 steps, load into a fresh optimizer, take 2 more: the same weights as 5
    uninterrupted steps."""
    straight = _model()
    opt = build_optimizer(straight, name="muon", lr=1e-2, weight_decay=0.1)
    _train_steps(straight, opt, 3)
    saved = copy.deepcopy(opt.state_dict())  # the state tensors are updated in place
    weights = {k: v.clone() for k, v in straight.state_dict().items()}
    _train_steps(straight, opt, 2, seed=1)

    resumed = _model()
    resumed.load_state_dict(weights)
    opt2 = build_optimizer(resumed, name="muon", lr=1e-2, weight_decay=0.1)
    opt2.load_state_dict(saved)
    _train_steps(resumed, opt2, 2, seed=1)
    for (name, p), q in zip(straight.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q), name
    # indices run across both parts: Muon's first, then AdamW's
    n_muon = len(opt.muon.param_groups[0]["params"])
    assert sorted(saved["state"]) == list(range(len(_model_params(opt))))
    assert "momentum_buffer" in saved["state"][0] and "exp_avg" in saved["state"][n_muon]


def test_load_state_dict_rejects_another_layout():
    opt = build_optimizer(_model(), name="muon", lr=1e-2, weight_decay=0.1)
    adamw = build_optimizer(_model(), name="adamw", lr=1e-2, weight_decay=0.1)
    with pytest.raises(ValueError, match="parameter groups"):
        opt.load_state_dict(adamw.state_dict())


def test_checkpoint_files_hold_muon_state(tmp_path):
    model = _model()
    opt = build_optimizer(model, name="muon", lr=1e-2, weight_decay=0.1)
    _train_steps(model, opt, 2)
    stem = tmp_path / "run"
    io.save_checkpoint(stem, model=model, optimizer=opt, rng={}, meta={"step": 2})
    other = _model(seed=5)
    opt2 = build_optimizer(other, name="muon", lr=1e-2, weight_decay=0.1)
    io.load_checkpoint(stem, model=other, optimizer=opt2)
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["state"].keys() == b["state"].keys()
    for idx in a["state"]:
        for name, value in a["state"][idx].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][idx][name]))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "t.txt"
    path.write_text(TEXT)
    return load_corpus(path, seq_len=MODEL.seq_len)


def test_resume_with_muon_matches_uninterrupted(corpus, tmp_path):
    def go(**kw):
        return train_run("geglu", 2, corpus, MODEL, TRAIN, backend="reference", **kw)

    straight = go()
    stem = tmp_path / "ck" / "geglu-s2"

    def stop(ev):
        if ev["step"] == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        go(checkpoint=stem, on_step=stop)
    assert files.read_json(stem.with_name("geglu-s2.json"))["step"] == 6
    resumed = go(checkpoint=stem)
    assert resumed["resumed_from"] == 6
    keep = ("val_bpb", "curve", "final_train_loss", "steps_done")
    assert {k: resumed[k] for k in keep} == {k: straight[k] for k in keep}
    assert straight["key"]["train"]["optimizer"] == "muon"
    adamw = train_run("geglu", 2, corpus, MODEL, TrainConfig(**{**TRAIN.as_dict(),
                                                                "optimizer": "adamw"}),
                      backend="reference")
    assert adamw["val_bpb"] != straight["val_bpb"]


def test_unknown_optimizer_is_refused_with_close_matches():
    with pytest.raises(ValueError, match="adamw"):
        TrainConfig(**{**TRAIN.as_dict(), "optimizer": "adam"})
    with pytest.raises(UsageError, match="optimizer"):
        CompareConfig(preset="smoke", optimizer="sgd")


def test_mixture_of_experts_and_muon():
    """Muon takes the experts' 3-D stacks (each expert's matrix on its own) and the router; a
    comparison with an MoE keeps the preset's Muon for every run."""
    moe = TinyGPT(MODEL, "moe:swiglu:4x2", backend="reference")
    names = set(muon_parameter_names(moe))
    stacks = {n for n, p in moe.named_parameters() if p.dim() == 3}
    assert stacks and stacks <= names
    assert {n for n in names if n.endswith("router.weight")}
    opt = build_optimizer(moe, name="muon", lr=1e-2, weight_decay=0.1)
    before = {n: p.detach().clone() for n, p in moe.named_parameters()}
    x = torch.randint(0, 256, (2, MODEL.seq_len))
    torch.nn.functional.cross_entropy(moe(x).flatten(0, 1), x.flatten()).backward()
    opt.step()
    for n, p in moe.named_parameters():
        if n in stacks:  # every expert's matrix moved by an orthogonalised step
            step = (p.detach() - before[n]).flatten(1).norm(dim=1)
            assert (step > 0).all(), n
    assert CompareConfig(preset="quick", variants=("swiglu", "moe:swiglu:4x2")).optimizer_name \
        == "muon"
    assert CompareConfig(preset="quick", variants=("swiglu", "moe:swiglu:4x2"),
                         optimizer="muon").optimizer_name == "muon"
    assert CompareConfig(preset="quick", variants=("swiglu", "relu")).optimizer_name == "muon"
    assert CompareConfig(preset="quick", optimizer="adamw").resolved()[2].optimizer == "adamw"
