"""Tiny random-weight transformers models, one per MLP family (no downloads), for the tests.

The tests get this module through the ``hf_models`` fixture (test files are imported in
importlib mode, so they cannot import a sibling helper by name). Every builder returns
``(model, inputs, mlp_count)``; ``inputs`` is a dict for ``model(**inputs)``. Tests that use
it are skipped when transformers (the ``hf`` extra) is not installed.
Dropout is off unless asked for, so that train-mode forwards are deterministic.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import pytest
import torch


class _Lazy:
    """``transformers``, imported (or the test skipped) on first use."""

    def __getattr__(self, name):
        return getattr(pytest.importorskip("transformers"), name)


transformers = _Lazy()

VOCAB = 100
LAYERS = 2


def _ids(seq: int = 7) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, seq), generator=torch.Generator().manual_seed(3))


def _causal(config_cls, **kw):
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                 pad_token_id=0, bos_token_id=1, eos_token_id=2)  # fmt: skip
    small.update(kw)
    return transformers.AutoModelForCausalLM.from_config(config_cls(**small))


def llama(**kw):
    return _causal(transformers.LlamaConfig, **kw), {"input_ids": _ids()}, LAYERS


def mistral(**kw):
    return _causal(transformers.MistralConfig, **kw), {"input_ids": _ids()}, LAYERS


def qwen2(**kw):
    return _causal(transformers.Qwen2Config, **kw), {"input_ids": _ids()}, LAYERS


def gemma(**kw):
    kw = {"head_dim": 8, "hidden_act": "gelu_pytorch_tanh", **kw}
    return _causal(transformers.GemmaConfig, **kw), {"input_ids": _ids()}, LAYERS


def phi3(**kw):
    return _causal(transformers.Phi3Config, **kw), {"input_ids": _ids()}, LAYERS


def gpt2(dropout: float = 0.0, **kw):
    cfg = transformers.GPT2Config(n_embd=32, n_layer=LAYERS, n_head=4, vocab_size=VOCAB,
                                  bos_token_id=1, eos_token_id=2, resid_pdrop=dropout,
                                  embd_pdrop=dropout, attn_pdrop=dropout, **kw)  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg), {"input_ids": _ids()}, LAYERS


def t5(dropout: float = 0.0, **kw):
    cfg = transformers.T5Config(d_model=32, d_ff=64, d_kv=8, num_layers=LAYERS, num_heads=4,
                                vocab_size=VOCAB, dropout_rate=dropout, **kw)  # fmt: skip
    ids = _ids()
    inputs = {"input_ids": ids, "decoder_input_ids": ids[:, :5]}
    return transformers.T5ForConditionalGeneration(cfg), inputs, 2 * LAYERS  # encoder + decoder


def t5_gated(dropout: float = 0.0):
    return t5(dropout, feed_forward_proj="gated-gelu")


def bert(dropout: float = 0.0, **kw):
    cfg = transformers.BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                                  num_attention_heads=4, vocab_size=VOCAB,
                                  hidden_dropout_prob=dropout,
                                  attention_probs_dropout_prob=dropout, **kw)  # fmt: skip
    return transformers.BertModel(cfg), {"input_ids": _ids()}, LAYERS


FAMILIES = {
    "llama": llama,
    "mistral": mistral,
    "qwen2": qwen2,
    "gemma": gemma,
    "phi3": phi3,
    "gpt2": gpt2,
    "t5": t5,
    "t5_gated": t5_gated,
    "bert": bert,
}


def build(family: str, **kw):
    """``(model, inputs, mlp_count)`` for ``family``, in float32 and eval mode, seeded."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # config notices about the tiny vocab
        model, inputs, count = FAMILIES[family](**kw)
    return model.float().eval(), inputs, count


def output(model, inputs) -> torch.Tensor:
    """The model's main float output (logits, or BERT's last hidden state)."""
    out = model(**inputs)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def families():
    """``scripts/interop_families.py`` as a module: tiny models of every causal-LM family."""
    pytest.importorskip("transformers")
    spec = importlib.util.spec_from_file_location(
        "interop_families", ROOT / "scripts" / "interop_families.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("interop_families", module)  # dataclasses look their module up
    spec.loader.exec_module(sys.modules["interop_families"])
    return sys.modules["interop_families"]


@pytest.fixture(scope="session")
def hf_models():
    """This module: ``build``, ``output``, ``FAMILIES`` and the builders."""
    return sys.modules[__name__]
