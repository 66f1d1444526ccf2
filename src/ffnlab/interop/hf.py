"""Hugging Face transformers interop: run a transformers model's MLPs with ffnlab.

* :func:`patch_hf` replaces each MLP **instance** it recognises in a model by a wrapper from
  :mod:`ffnlab.interop.hf_modules` (``setattr`` on its parent; transformers' classes are never
  touched). Recognition is structural (:mod:`ffnlab.interop.recognise`: the projections, the
  activation, norms, multipliers) and every replacement is checked against the module on a
  probe before it is made (:mod:`ffnlab.interop.verify`), so any class, a subclass or one
  transformers adds later, is safe to patch. The wrappers share the original parameters and
  keep the state-dict keys, so training, ``save_pretrained`` and ``from_pretrained`` behave as
  before.
* :func:`unpatch_hf` puts the original instances back.
* :func:`ffnlab.from_hf` (:mod:`ffnlab.interop.convert`) builds a standalone
  :class:`ffnlab.FeedForward` from one MLP.

Mixture-of-experts blocks (:func:`ffnlab.interop.recognise.is_moe_block`) are replaced whole by
:class:`ffnlab.interop.hf_moe.HFMoE` where :mod:`ffnlab.interop.recognise_moe` describes them and
the probe agrees (:func:`ffnlab.interop.verify_moe.verified_moe_spec`), else left with the reason;
a block whose experts run an experts implementation chosen for the model (``batched_mm``, say:
anything but transformers' defaults ``grouped_mm``/``eager`` and ffnlab's ``"ffnlab"``) is kept,
and a choice made after patching runs in the patched block (:class:`~.hf_moe.HFMoE`). A block
under transformers' expert parallelism stays, router and token dispatch included: its experts
run ``"ffnlab"`` instead of transformers' default, once checked on the ranks
(:class:`~.sharded.ExpertParallelBlocks`). transformers is never imported.
"""

from __future__ import annotations

import math
import re
import warnings

from torch import nn

from ..errors import check_choice
from ..ops.dispatch import BACKENDS, RECOMPUTE_MODES
from .hf_activations import HF_ACTIVATIONS, describe, hf_activation
from .hf_bert import HFBertFeedForward, HFBertOutputTail
from .hf_experts import take_over_experts_choice
from .hf_modules import HFMLP, HFFeedForward
from .hf_moe import HFMoE, experts_choice
from .recognise import _MOE_CLASS, MLPSpec, candidates, is_moe_block, why_not_mlp
from .recognise_moe import router_width, why_not_moe
from .sharded import (
    ExpertParallelBlocks,
    declined_layout,
    expert_parallel_experts,
    give_back_expert_parallel,
    is_switched,
    layout_name,
    sharded_reason,
)
from .verify import TOLERANCE, Probe, verified_spec
from .verify_moe import verified_moe_spec

__all__ = ["HF_ACTIVATIONS", "hf_activation", "patch_hf", "patch_hf_report", "unpatch_hf"]

# Class and attribute names that look like an FFN; such a module that is not patched is
# reported (other modules that fail the check, attention blocks say, are not MLPs).
LOOKS_LIKE_MLP = re.compile(r"(MLP|Mlp|FeedForward|FFN|ActDense|Intermediate)$")
_MLP_ATTR = re.compile(r"^(mlp|ffn|ff|feed_forward|shared_mlp|ffns?|mlp\d*)$")


def _why(diff: float) -> str:
    """The reason a candidate module is left, from the smallest difference measured."""
    if math.isnan(diff):
        return "its parameters are on the meta device"
    if math.isinf(diff):
        return ("no candidate matches it: none runs on the probe or uses every parameter "
                "it has, such as a scale or adapter parameter of its own")  # fmt: skip
    return f"no candidate matches it: smallest relative difference {diff:.2g} > {TOLERANCE:g}"


def _looks_like_mlp(name: str, module: nn.Module) -> bool:
    if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
        return False  # a container of layers: its items are looked at one by one
    return bool(LOOKS_LIKE_MLP.search(type(module).__name__) or _MLP_ATTR.match(name)
                or _MLP_ATTR.match(name.rstrip("0123456789")))  # fmt: skip


def build_wrapper(module: nn.Module, spec: MLPSpec, backend: str,
                  recompute: str = "activation") -> HFMLP:  # fmt: skip
    """The :class:`HFMLP` computing ``module`` as ``spec`` says."""
    act = spec.activation if spec.activation is not None else getattr(module, spec.act_attr)
    return HFMLP(module, spec, activation=act, backend=backend, recompute=recompute)


def _signature(module: nn.Module) -> tuple:
    """What decides a module's function: its class, its parameters' shapes and dtypes, its
    children's classes and its scalar attributes (multipliers, dropout p, sparsity)."""
    scalars = tuple(sorted((k, v) for k, v in vars(module).items()
                           if isinstance(v, (bool, int, float, str, type(None)))))  # fmt: skip
    params = tuple((n, tuple(p.shape), p.dtype, str(p.device))
                   for n, p in module.named_parameters())  # fmt: skip
    children = tuple(
        (
            n,
            type(c),
            tuple(
                sorted((k, v) for k, v in vars(c).items() if isinstance(v, (bool, int, float, str)))
            ),
        )  # fmt: skip
        for n, c in module.named_modules()
        if n
    )
    return type(module), scalars, params, children


class _Patcher:
    def __init__(self, backend: str, recompute: str) -> None:
        self.backend = backend
        self.recompute = recompute
        self.cache: dict[tuple, tuple[MLPSpec | None, float]] = {}
        self.skipped: list[str] = []
        self.count = 0
        self.moes: list[HFMoE] = []
        self.expert_parallel = ExpertParallelBlocks()

    def spec_for(self, module: nn.Module) -> tuple[MLPSpec | None, float]:
        if any(p.is_meta for p in module.parameters()):
            return None, math.nan
        key = _signature(module)
        if key not in self.cache:
            self.cache[key] = verified_spec(module, lambda m, s: build_wrapper(m, s, "reference"))
        return self.cache[key]

    def walk(self, parent: nn.Module, prefix: str) -> None:
        handled: set[str] = set()
        if _is_bert_layer(parent):
            handled = {"intermediate", "output"}
            self._patch_bert(parent, prefix)
        for name, child in list(parent.named_children()):
            path = f"{prefix}.{name}" if prefix else name
            if name in handled or isinstance(child, HFFeedForward) or _is_ffnlab(child):
                continue
            if is_moe_block(child):
                self._patch_moe(parent, name, child, path)
                continue
            if next(candidates(child), None) is not None:
                declined = declined_layout(child)  # distributed as no wrapper can run it
                spec, diff = (None, math.inf) if declined else self.spec_for(child)
                if spec is not None:
                    wrapper = build_wrapper(child, spec, self.backend, self.recompute)
                    declined = sharded_reason(child, wrapper)  # runs on the ranks' shards?
                if spec is not None and declined is None:
                    setattr(parent, name, wrapper)
                    self.count += 1
                elif declined is not None and _looks_like_mlp(name, child):
                    self.skipped.append(f"{path} ({type(child).__name__}: {declined})")
                elif not _looks_like_mlp(name, child):
                    pass  # e.g. an attention block with three square projections: not an MLP
                else:
                    self.skipped.append(f"{path} ({type(child).__name__}: {_why(diff)})")
                continue
            if _looks_like_mlp(name, child):
                self.skipped.append(f"{path} ({type(child).__name__}: {why_not_mlp(child)})")
                continue
            self.walk(child, path)

    def _patch_moe(self, parent: nn.Module, name: str, block: nn.Module, path: str) -> None:
        """Replace a mixture-of-experts block by an :class:`HFMoE` when a spec verifies."""
        cls = type(block).__name__
        experts = expert_parallel_experts(block)
        # expert- or tensor-parallel experts: routing, dispatch and the layout's hooks stay
        # transformers'; the experts' choice may change (checked on the ranks)
        if experts is not None:
            kept = None if is_switched(experts) else _kept_choice(block)
            if kept is not None:
                self.skipped.append(f"{path} ({cls}: {kept}, under {layout_name(experts)})")
            elif not is_switched(experts):  # patched before: nothing to do
                self.expert_parallel.add(block, experts, path)
            return
        reason = declined_layout(block, moe=True) or why_not_moe(block)
        if reason is None:
            reason = _kept_choice(block)
        if reason is None and any(p.is_meta for p in block.parameters()):
            reason = _why(math.nan)
        spec = None
        if reason is None:
            key = ("moe", *_signature(block))
            if key not in self.cache:
                self.cache[key] = verified_moe_spec(block, router_width(block))
            spec, diff = self.cache[key]
            if spec is None:
                reason = (_why(diff) if math.isfinite(diff) else
                          "no router, expert layout or return form of ffnlab runs on the probe")  # fmt: skip
        if spec is None:
            # JetMoE's mixture of attention heads also routes to "experts": not an FFN
            if _looks_like_mlp(name, block) or _MOE_CLASS.search(cls):
                self.skipped.append(f"{path} ({cls}: {reason})")
            return
        shared = None
        if spec.shared is not None:
            module = block._modules[spec.shared]
            shared_spec, _ = self.spec_for(module)
            shared = (None if shared_spec is None
                      else build_wrapper(module, shared_spec, self.backend, self.recompute))  # fmt: skip
        moe = HFMoE(block, spec, backend=self.backend, shared=shared)
        moe.recompute = self.recompute  # the routed experts' fused op (HFMoE.forward)
        setattr(parent, name, moe)
        self.moes.append(moe)
        self.count += 1

    def _patch_bert(self, layer: nn.Module, prefix: str) -> None:
        inter, out = layer.intermediate, layer.output
        act_obj = inter.intermediate_act_fn
        act = hf_activation(act_obj) or act_obj
        tail = HFBertOutputTail(out, activation=act, backend=self.backend)
        head = HFBertFeedForward(inter, tail, activation=act, backend=self.backend,
                                 recompute=self.recompute)  # fmt: skip
        diff = _bert_difference(layer, act)
        if diff > TOLERANCE:
            self.skipped.append(f"{prefix}.intermediate ({type(inter).__name__} with "
                                f"{describe(act_obj)}: relative difference {diff:.2g})")  # fmt: skip
            return
        layer.intermediate, layer.output = head, tail
        self.count += 1


#: Experts implementations a mixture-of-experts block is replaced under: transformers' defaults
#: (``grouped_mm``; ``eager``) and ffnlab's own. Any other was chosen for the model and is kept.
REPLACED_EXPERTS = ("grouped_mm", "eager", "ffnlab")


def _kept_choice(block: nn.Module) -> str | None:
    """Why ``block`` is kept for the experts implementation chosen for it, or None."""
    experts = next((c for c in block.children() if experts_choice(c) is not None), None)
    chosen = experts_choice(experts)
    if chosen is None or chosen in REPLACED_EXPERTS:
        return None
    return (f"its experts run experts_implementation={chosen!r}, chosen for this model: kept "
            f"(patch_hf replaces blocks under {', '.join(map(repr, REPLACED_EXPERTS))})")  # fmt: skip


def _bert_difference(layer: nn.Module, act) -> float:
    """A BERT layer's ``feed_forward_chunk`` against the patched pair, on a probe copy."""

    class _Chunk(nn.Module):
        def __init__(self, inter: nn.Module, out: nn.Module) -> None:
            super().__init__()
            self.inter, self.out = inter, out

        def forward(self, x):
            return self.out(self.inter(x), x)

    pair = _Chunk(layer.intermediate, layer.output)
    probe = Probe(pair, dim=layer.output.dense.weight.shape[0])
    copy_inter, copy_out = probe.module.inter, probe.module.out
    act_copy = act if isinstance(act, str) else copy_inter.intermediate_act_fn
    tail = HFBertOutputTail(copy_out, activation=act_copy, backend="reference")
    head = HFBertFeedForward(copy_inter, tail, activation=act_copy, backend="reference")
    return probe.difference(_Chunk(head, tail))


def _is_bert_layer(module: nn.Module) -> bool:
    """A BERT-shaped layer: ``intermediate`` (``dense`` + ``intermediate_act_fn``, perhaps a
    ``LayerNorm`` first) and ``output`` (``dense``, perhaps ``dropout`` and ``LayerNorm``) used
    as ``output(intermediate(x), x)`` by the layer's ``feed_forward_chunk``. Whether the pair
    computes what the wrappers compute is checked on a probe before patching."""
    inter = getattr(module, "intermediate", None)
    out = getattr(module, "output", None)
    return (
        isinstance(getattr(inter, "dense", None), nn.Linear)
        and hasattr(inter, "intermediate_act_fn")
        and isinstance(getattr(out, "dense", None), nn.Linear)
        and hasattr(module, "feed_forward_chunk")
        and not isinstance(inter, HFFeedForward)
    )


def patch_hf(model: nn.Module, *, backend: str = "auto", recompute: str = "activation") -> int:
    """Replace every MLP instance of ``model`` that it recognises by an ffnlab module; return
    how many.

    The replacements compute the same function (checked on a probe as each is made, forward
    and backward, see :mod:`ffnlab.interop.verify`), share the original ``nn.Parameter``
    objects (packed, transposed or scaled weights are used through views) and keep
    ``model.state_dict()``'s keys. A BERT layer's ``intermediate``/``output`` pair counts as one
    MLP, and a mixture-of-experts block (router, experts and shared experts) as one: it becomes
    an :class:`~ffnlab.interop.hf_moe.HFMoE`. Modules already patched are skipped, so patching
    twice returns 0 the second time. MLP-like modules and MoE blocks that are left alone (no
    candidate matches, with the measured difference) are listed in one warning; a model with no
    MLP it recognises gets one warning saying so.

    transformers' experts implementation: a block whose experts run one chosen for the model
    (``batched_mm``, anything but the defaults ``grouped_mm``/``eager`` and ``"ffnlab"``) is
    kept and listed in the warning. The configs of the blocks it replaces are set to
    ``"ffnlab"`` (:func:`ffnlab.register_hf` is called), so ``model.get_experts_implementation()``
    says what runs and ``model.set_experts_implementation(name)`` afterwards runs ``name``'s
    experts in the patched blocks (on ffnlab's routing); :func:`unpatch_hf` puts the replaced
    choice back. Under transformers' expert parallelism (``DistributedConfig(ep_size=N)``) the
    block and its token dispatch stay, and the experts run ``"ffnlab"`` instead of the default
    on each rank's experts, after a check on the ranks against the previous choice (see
    :mod:`ffnlab.interop.sharded`). Each such block counts as one patched MLP, and
    :func:`unpatch_hf` gives the previous implementation back.

    Args:
        model: any ``nn.Module`` (typically a ``PreTrainedModel``).
        backend: the ffnlab backend the replacements use (see :mod:`ffnlab.ops.dispatch`).
        recompute: what the replacements' fused op keeps for backward: ``"none"``,
            ``"activation"`` (the default, as ``FeedForward``'s) or ``"full"``
            (:mod:`ffnlab.ops.function`); the routed experts of a mixture of experts take it
            too. Any other value is a UsageError naming the choices.

    The options after ``model`` are keyword-only, as :func:`ffnlab.from_hf`'s
    (``patch_hf(model, backend="fused", recompute="full")``); a second positional argument is
    Python's TypeError.
    """
    count, left = patch_hf_report(model, backend=backend, recompute=recompute)
    already = any(isinstance(m, HFFeedForward) or is_switched(m) for m in model.modules())
    if left:
        warnings.warn(
            f"ffnlab.patch_hf left {len(left)} MLP module(s) unchanged: " + "; ".join(left),
            stacklevel=2,
        )
    elif count == 0 and not already:
        warnings.warn(
            f"ffnlab.patch_hf found no MLP in {type(model).__name__}: no module holds two or "
            f"three projections shaped as an MLP's, and no mixture-of-experts block fused 3-D "
            f"experts with a router",
            stacklevel=2,
        )
    return count


def patch_hf_report(
    model: nn.Module, *, backend: str = "auto", recompute: str = "activation"
) -> tuple[int, list[str]]:
    """:func:`patch_hf` without the warning: ``(patched, left)``, ``left`` the MLP-like modules
    left unchanged as ``"path (Class: reason)"`` (what the warning lists)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"patch_hf expects an nn.Module, got {type(model).__name__}")
    check_choice("backend", backend, BACKENDS)
    check_choice("recompute mode", recompute, RECOMPUTE_MODES)
    patcher = _Patcher(backend, recompute)
    patcher.walk(model, "")
    take_over_experts_choice(model, patcher.moes)
    switched, left = patcher.expert_parallel.finish()
    return patcher.count + switched, patcher.skipped + left


def _is_ffnlab(module: nn.Module) -> bool:
    return type(module).__module__.startswith("ffnlab.")


def unpatch_hf(model: nn.Module) -> int:
    """Put back the original transformers modules replaced by :func:`patch_hf`; return how many
    MLPs were restored (a BERT pair counts as one). Their ``train``/``eval`` mode follows the
    wrappers', and a submodule replaced on a wrapper after patching (an adapter, say) is
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
    # Innermost first: a mixture-of-experts wrapper's patched shared expert is restored onto
    # the wrapper before the wrapper itself is compared with its block.
    for parent, name, wrapper in reversed(found):
        original = wrapper.original
        for child_name, child in wrapper.named_children():
            if child_name in original._modules and original._modules[child_name] is not child:
                setattr(original, child_name, child)
        # a mixture-of-experts block's own buffers: .to() replaced them on the wrapper only
        for buf_name in original._buffers:
            if buf_name in wrapper._buffers:
                original._buffers[buf_name] = wrapper._buffers[buf_name]
        original.train(wrapper.training)
        if isinstance(wrapper, HFMoE):
            wrapper.give_back_experts_choice()
        setattr(parent, name, original)
        count += int(wrapper.counts_as_mlp)
    return count + give_back_expert_parallel(model)
