"""Training a patched model with transformers' ``Trainer``: the losses it logs are the unpatched
model's (float64), and ``recompute="activation"`` keeps less for backward than the original.

Tiny random models (width 32, two layers), one in-memory batch of 4 rows seen at each of four
AdamW steps, CPU; the same seed for both runs.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import ffnlab
from ffnlab.interop.hf_moe import HFMoE
from ffnlab.ops.memory import saved_tensor_bytes

transformers = pytest.importorskip("transformers")

pytest.importorskip("accelerate")  # transformers' Trainer needs it (the hf extra installs it)

VOCAB, SEQ, ROWS = 64, 12, 4  # one batch of 4 rows: every step sees it, the loss falls


def _model(family: str):
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                 pad_token_id=0, bos_token_id=1, eos_token_id=2)  # fmt: skip
    config = {
        "llama": lambda: transformers.LlamaConfig(**small),
        "mixtral": lambda: transformers.MixtralConfig(**small, num_local_experts=4,
                                                      num_experts_per_tok=2),
        "qwen3_moe": lambda: transformers.Qwen3MoeConfig(**small, moe_intermediate_size=16,
                                                         num_experts=4, num_experts_per_tok=2,
                                                         head_dim=8),
    }[family]()  # fmt: skip
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.AutoModelForCausalLM.from_config(config).double()
    if hasattr(model, "set_experts_implementation"):
        model.set_experts_implementation("eager")  # grouped_mm has no float64 CPU kernel
    return model


def _dataset() -> list[dict[str, torch.Tensor]]:
    ids = torch.randint(3, VOCAB, (ROWS, SEQ), generator=torch.Generator().manual_seed(7))
    return [{"input_ids": row, "labels": row} for row in ids]


def _train(model, tmp_path) -> list[float]:
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=4,
        learning_rate=1e-2, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
        seed=0, disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_dataset())
    trainer.train()
    return [log["loss"] for log in trainer.state.log_history if "loss" in log]


@pytest.mark.parametrize("family", ["llama", "qwen3_moe"])
def test_trainer_losses_equal_the_unpatched_run(family, tmp_path):
    want = _train(_model(family), tmp_path / "plain")
    model = _model(family)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every MLP and MoE block patched
        assert ffnlab.patch_hf(model) == 2
    assert (family != "llama") == any(isinstance(m, HFMoE) for m in model.modules())
    got = _train(model, tmp_path / "patched")
    assert len(got) == len(want) == 4
    assert want[-1] < want[0]  # it trains
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def _saved(model) -> int:
    """Bytes autograd keeps for one training forward (loss) of a batch, parameters excluded."""
    batch = {"input_ids": torch.stack([r["input_ids"] for r in _dataset()[:4]])}
    batch["labels"] = batch["input_ids"]
    model.train()
    nbytes, loss = saved_tensor_bytes(lambda: model(**batch).loss, exclude=model.parameters())
    loss.backward()
    return nbytes


@pytest.mark.parametrize("family", ["llama", "mixtral"])
def test_recompute_activation_keeps_less_than_the_original(family):
    """``recompute="activation"`` keeps the FFN's pre-activations and recomputes the rest:
    fewer bytes than the unpatched model and than ``recompute="none"``. Measured (float64,
    4 x 12 tokens, whole model): Llama 442,564 plain / 442,564 none / 344,260 activation /
    245,956 full; Mixtral 794,692 / 797,028 / 600,420 / 403,812. The fused op is forced: at
    these few tokens ``backend="auto"`` runs the original's plain computation (faster there,
    :func:`ffnlab.ops.dispatch.choose`), which keeps what the original keeps; from 2^20 hidden
    elements a call (a real training batch) takes the fused op, and the saving, by itself."""
    plain = _saved(_model(family))
    saved = {}
    for mode in ("none", "activation"):
        model = _model(family)
        ffnlab.patch_hf(model, recompute=mode, backend="fused")
        saved[mode] = _saved(model)
    assert saved["activation"] < saved["none"]
    assert saved["activation"] < plain
