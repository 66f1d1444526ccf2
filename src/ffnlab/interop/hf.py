"""Hugging Face transformers interop: run a transformers model's MLPs with ffnlab.

* :func:`patch_hf` replaces each recognised MLP **instance** in a model by a wrapper from
  :mod:`ffnlab.interop.hf_modules` (``setattr`` on its parent; transformers' classes are never
  touched). The wrappers share the original parameters and keep the state-dict keys, so
  training, ``save_pretrained`` and ``from_pretrained`` behave as before.
* :func:`unpatch_hf` puts the original instances back.
* :func:`ffnlab.from_hf` (:mod:`ffnlab.interop.convert`) builds a standalone
  :class:`ffnlab.FeedForward` from one MLP.

The recognised modules and their weights' roles are listed in :mod:`ffnlab.interop.recognise`.
transformers is never imported here.
"""

from __future__ import annotations

import warnings

from torch import nn

from ..errors import check_choice
from ..ops.dispatch import BACKENDS
from .hf_modules import HFBertFeedForward, HFBertOutputTail, HFFeedForward
from .recognise import (
    ACT_ATTR,
    HF_ACTIVATIONS,
    LOOKS_LIKE_MLP,
    WRAPPERS,
    describe,
    family,
    hf_activation,
    is_bert_layer,
)

__all__ = ["HF_ACTIVATIONS", "hf_activation", "patch_hf", "unpatch_hf"]


def patch_hf(model: nn.Module, backend: str = "auto") -> int:
    """Replace every recognised MLP instance in ``model`` by an ffnlab module; return how many.

    The replacements compute the same function (same outputs to float rounding, forward and
    backward), share the original ``nn.Parameter`` objects (Phi-3's packed and GPT-2's
    transposed weights are used through views) and keep ``model.state_dict()``'s keys.
    A BERT layer's ``intermediate``/``output`` pair counts as one MLP. Modules already patched
    are skipped, so patching twice returns 0 the second time. MLP-like modules that are left
    alone (unknown class, or an activation ffnlab does not have) are listed in one warning.

    Args:
        model: any ``nn.Module`` (typically a ``PreTrainedModel``).
        backend: the ffnlab backend the replacements use (see :mod:`ffnlab.ops.dispatch`).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"patch_hf expects an nn.Module, got {type(model).__name__}")
    check_choice("backend", backend, BACKENDS)
    skipped: list[str] = []
    count = _patch(model, "", backend, skipped)
    if skipped:
        warnings.warn(
            f"ffnlab.patch_hf left {len(skipped)} MLP module(s) unchanged: " + "; ".join(skipped),
            stacklevel=2,
        )
    return count


def _patch(parent: nn.Module, prefix: str, backend: str, skipped: list[str]) -> int:
    count = 0
    handled: set[str] = set()
    if is_bert_layer(parent):
        handled = {"intermediate", "output"}
        inter, out = parent.intermediate, parent.output
        act = hf_activation(inter.intermediate_act_fn)
        if act is None:
            skipped.append(
                f"{prefix}.intermediate ({type(inter).__name__}: activation "
                f"{describe(inter.intermediate_act_fn)} has no ffnlab equivalent)"
            )
        else:
            tail = HFBertOutputTail(out, activation=act, backend=backend)
            parent.intermediate = HFBertFeedForward(inter, tail, activation=act, backend=backend)
            parent.output = tail
            count += 1
    for name, child in list(parent.named_children()):
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(child, HFFeedForward) or name in handled:
            continue
        kind = family(child)
        if kind is not None:
            act_obj = getattr(child, ACT_ATTR[kind], None)
            act = hf_activation(act_obj)
            if act is None:
                skipped.append(
                    f"{path} ({type(child).__name__}: activation {describe(act_obj)} "
                    f"has no ffnlab equivalent)"
                )
            else:
                setattr(parent, name, WRAPPERS[kind](child, activation=act, backend=backend))
                count += 1
            continue
        if LOOKS_LIKE_MLP.search(type(child).__name__) and not _is_ffnlab(child):
            skipped.append(f"{path} ({type(child).__name__}: not a recognised MLP)")
            continue
        count += _patch(child, path, backend, skipped)
    return count


def _is_ffnlab(module: nn.Module) -> bool:
    return type(module).__module__.startswith("ffnlab.")


def unpatch_hf(model: nn.Module) -> int:
    """Put back the original transformers modules replaced by :func:`patch_hf`; return how many
    MLPs were restored (a BERT pair counts as one). Their ``train``/``eval`` mode follows the
    wrappers', and a projection replaced on a wrapper after patching (an adapter, say) is
    carried over to the original module. A model that was never patched returns 0."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"unpatch_hf expects an nn.Module, got {type(model).__name__}")
    count = 0
    # Collect first: replacing children while iterating named_modules would skip some.
    found = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, HFFeedForward)
    ]
    for parent, name, wrapper in found:
        original = wrapper.original
        for child_name, child in wrapper.named_children():
            if child_name in original._modules and original._modules[child_name] is not child:
                setattr(original, child_name, child)
        original.train(wrapper.training)
        setattr(parent, name, original)
        count += int(wrapper.counts_as_mlp)
    return count
