"""Structural recognition of transformers' mixture-of-experts blocks.

A block is recognised from its children, whatever its class is called:

* a **router**: a child whose own ``weight`` (or whose single ``nn.Linear``'s) is ``[E, dim]``,
  perhaps with a logit ``bias [E]`` (GPT-OSS) and a selection bias buffer
  ``e_score_correction_bias [E]`` (DeepSeek-V3);
* the **experts**: a child holding 3-D ``gate_up_proj`` and ``down_proj`` (transformers 5.x's
  fused storage), perhaps with ``gate_up_proj_bias [E, 2I]`` and ``down_proj_bias [E, dim]``,
  or, for plain (ungated) experts, 3-D ``up_proj`` and ``down_proj`` (Nemotron-H's ReLU²), or
  two children holding one 3-D ``weight`` each, ``[E, 2I, dim]`` in and ``[E, dim, I]`` out
  (JetMoE's ``input_linear``/``output_linear``, with the block's ``activation`` and output
  ``bias``), perhaps with a per-expert output norm: a child of the experts holding ``weight
  [E, dim]`` and an ``eps`` (Ergo's ``post_expert_norm``, an RMSNorm of each route's output);
* optionally **shared experts**: one dense MLP child (``shared_expert``, ``shared_experts``,
  ``shared_mlp`` ...) and a ``[1, dim]`` ``nn.Linear`` gating it (Qwen-MoE's
  ``shared_expert_gate``);
* optionally a **norm of the block's output** (routed plus shared experts): a 1-D norm child
  (A.X-K1's ``post_mlp_layernorm``), run as the block's own module.

How the experts store gate and up (the only per-layout table, :data:`LAYOUTS`): ``gate_up_proj``
is ``[E, 2I, dim]`` (``F.linear`` layout: Mixtral, Qwen-MoE, OLMoE, DeepSeek) or ``[E, dim, 2I]``
(``x @ w`` layout: GPT-OSS, Llama 4), its halves concatenated (gate first) or interleaved
(GPT-OSS: ``gate = [..., ::2]``). Experts classes decorated by transformers'
``use_experts_implementation`` state it on the instance (``is_transposed``, ``is_concatenated``,
``has_bias``); otherwise the shapes decide, both layouts tried where ``dim == 2I``.

:func:`moe_candidates` yields every :class:`MoESpec` the structure allows, most likely first
(the router's ``norm_topk_prob``, ``routed_scaling_factor``, ``n_group``/``topk_group`` and
correction bias order them); :mod:`ffnlab.interop.hf_moe` keeps the first that computes the
block's function on a float64 probe. :func:`why_not_moe` says why a block yields none.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, replace

from torch import nn

from .hf_activations import hf_activation
from .recognise import _is_norm, candidates

__all__ = ["LAYOUTS", "MoESpec", "moe_candidates", "moe_parts", "router_width", "why_not_moe"]

#: ``(transposed, interleaved)`` -> where W1 (gate) and W3 (up) sit in ``gate_up_proj``.
LAYOUTS = {
    (False, False): "[E, 2I, dim], gate rows first (F.linear layout)",
    (False, True): "[E, 2I, dim], gate and up rows interleaved",
    (True, False): "[E, dim, 2I], gate columns first (x @ w layout)",
    (True, True): "[E, dim, 2I], gate and up columns interleaved (GPT-OSS)",
}
_SELECTION_BIAS = ("e_score_correction_bias", "expert_bias", "score_correction_bias")
# Multiplicative input noise in training mode (Mixtral's, PhiMoE's): random numbers ffnlab
# would have to draw exactly as the block does. (PhiMoE's router_jitter_noise is its
# sparsemixer's threshold, not noise: ffnlab's router="sparsemixer" takes it as jitter_eps.)
_JITTER = ("jitter_noise", "input_jitter_noise")
# Group-limited routing, (group_score, group_fill) of ffnlab's routers, most likely first:
# DeepSeek-V3's (GLM-4.5, dots1, Kimi ...), Mistral 4's and A.X-K2's, DeepSeek-V2's
# group_limited_greedy (its router's topk_method says so and puts it first).
_GROUP_RULES = (("top2", "-inf"), ("top2", "zero"), ("max", "zero_gates"))


@dataclass(frozen=True)
class MoESpec:
    """How one block computes ``[..., dim] -> [..., dim]``, in terms of its own children.

    ``y = Σ_j g_j · FFN_{e_j}(x) + sigmoid(shared_gate(x)) · shared(x)`` with the routing of
    ``router`` (``kind`` one of :data:`ffnlab.routers.ROUTERS`, its options as the fields say).

    Attributes:
        router, experts: child names; ``up``, ``down`` the paths of the stacked expert weights
            (``"experts.gate_up_proj"``; JetMoE's ``"input_linear.weight"``), ``output_bias``
            a bias ``[dim]`` of the block added to its output (JetMoE's ``bias``);
            ``router_weight`` the weight's path in the block
            (``"gate.weight"``, ``"router.layer.weight"``), ``logit_bias`` the path of a bias
            added to the logits, ``selection_bias`` of the buffer added to the scores for the
            choice only (the router's, or the block's own).
        kind, top_k, norm_topk, n_group, topk_group, routed_scaling: the ffnlab router;
            ``router_options`` its further keyword arguments as ``(name, value)`` pairs
            (``group_score``/``group_fill`` of group-limited routing, sparsemixer's
            ``jitter_eps``).
        transposed, interleaved, gate_first: the layout of ``gate_up_proj`` (:data:`LAYOUTS`).
        activation, options: the experts' ffnlab activation name and its option values.
        biases: the experts hold ``gate_up_proj_bias`` and ``down_proj_bias``.
        gated: the experts hold ``gate_up_proj`` (else a plain ``up_proj``: W1 only).
        shared, shared_gate: child names or None.
        out_norm: a norm child applied to the block's output (routed plus shared), or None.
        expert_norm, norm_eps, norm_float32: the path of a per-expert RMSNorm scale ``[E, dim]``
            on each route's output (Ergo's ``"experts.post_expert_norm.weight"``), its epsilon,
            and whether the block computes it in float32 whatever the input dtype.
        returns: what follows the output in the block's return value: None (a tensor),
            ``"logits"`` (``(y, router_logits [T, E])``) or ``"gates"`` (``(y, gates [T, k])``).
        flat: the output is ``[T, dim]`` whatever the input's leading dims (Llama 4).
        router_call: how the block calls its router, seen on the probe: ``"flat"`` (tokens
            ``[T, dim]``), ``"input"`` (the block's input as it came) and ``+bias`` where the
            block passes its own correction bias second (MiniMax-M2, AFMoE).
        float32: where the block rounds its routing to float32 whatever the input dtype:
            None (it does not), ``"routing"`` (the scores: ``softmax(logits.float())``,
            Mixtral, Qwen-MoE) or ``"logits"`` (input and weight cast first, DeepSeek).
    """

    router: str
    experts: str
    up: str = "experts.gate_up_proj"
    down: str = "experts.down_proj"
    output_bias: str | None = None
    router_weight: str = "gate.weight"
    logit_bias: str | None = None
    selection_bias: str | None = None
    kind: str = "softmax"
    top_k: int = 1
    norm_topk: bool = True
    n_group: int = 1
    topk_group: int = 1
    routed_scaling: float = 1.0
    router_options: tuple[tuple[str, object], ...] = ()
    transposed: bool = False
    interleaved: bool = False
    gate_first: bool = True
    activation: str = "swish"
    options: tuple[float, ...] = ()
    biases: bool = False
    gated: bool = True
    shared: str | None = None
    shared_gate: str | None = None
    returns: str | None = None
    flat: bool = False
    router_call: str = "flat"
    float32: str | None = None
    expert_norm: str | None = None
    out_norm: str | None = None
    norm_eps: float = 1e-6
    norm_float32: bool = False


def _router_weight(child: nn.Module) -> str | None:
    w = child._parameters.get("weight")
    if w is not None and w.dim() == 2:
        return "weight"
    linears = [(n, c) for n, c in child.named_children() if isinstance(c, nn.Linear)]
    if len(linears) == 1 and not child._parameters:
        return f"{linears[0][0]}.weight"
    return None


def router_width(block: nn.Module) -> int:
    """``dim``: the input width of the router of a block :func:`moe_parts` recognises."""
    router = block._modules[moe_parts(block)[0]["router"]]
    return _get(router, _router_weight(router)).shape[1]


def _get(module: nn.Module, path: str):
    for part in path.split("."):
        module = getattr(module, part)
    return module


def moe_parts(block: nn.Module) -> tuple[dict[str, str], str | None]:
    """``(parts, None)`` with the child names of ``router``, ``experts``, ``shared``,
    ``shared_gate`` and ``out_norm`` (the last three may be absent), or ``({}, reason)``."""
    parts: dict[str, str] = {}
    experts = [n for n, c in block.named_children() if _up_name(c) is not None]
    if len(experts) > 1:
        return {}, f"holds {len(experts)} stacks of 3-D experts ({', '.join(experts)})"
    pair = _weight_pair(block) if not experts else None
    if pair is not None:
        parts["experts"], parts["down_experts"] = pair
        n_experts = block._modules[pair[0]].weight.shape[0]
    elif not experts:
        per_expert = [n for n, c in block.named_children() if isinstance(c, nn.ModuleList)]
        if per_expert:
            return {}, f"its experts are a list of modules ({per_expert[0]}), not fused 3-D tensors"
        return {}, "holds no experts with fused 3-D gate_up_proj (or up_proj) and down_proj"
    else:
        parts["experts"] = experts[0]
        ex = block._modules[experts[0]]
        n_experts = getattr(ex, _up_name(ex)).shape[0]
    for name, child in block.named_children():
        if name in (parts["experts"], parts.get("down_experts")) or not any(
            True for _ in child.parameters()
        ):
            continue
        path = _router_weight(child) if "router" not in parts else None
        if path is not None and _get(child, path).shape[0] == n_experts and not list(
            candidates(child)
        ):
            parts["router"] = name
        elif isinstance(child, nn.Linear) and child.weight.shape[0] == 1:
            parts["shared_gate"] = name
        elif next(candidates(child), None) is not None and "shared" not in parts:
            parts["shared"] = name
        elif _is_norm(child) and "out_norm" not in parts:
            parts["out_norm"] = name
        else:
            return {}, f"its child {name} ({type(child).__name__}) has no known role"
    if "router" not in parts:
        return {}, f"no child holds a router weight [{n_experts}, dim]"
    if "shared_gate" in parts and "shared" not in parts:
        return {}, "a shared-expert gate without a shared expert"
    return parts, None


def _weight_pair(block: nn.Module) -> tuple[str, str] | None:
    """JetMoE's storage: two children holding one 3-D ``weight`` each, ``[E, 2I or I, dim]``
    (in) and ``[E, dim, I]`` (out); their names, or None."""
    lone = {n: c.weight for n, c in block.named_children()
            if set(c._parameters) == {"weight"} and c.weight.dim() == 3}  # fmt: skip
    for (a, wa), (b, wb) in itertools.permutations(lone.items(), 2):
        if (wa.shape[0] == wb.shape[0] and wa.shape[2] == wb.shape[1]
                and wa.shape[1] in (wb.shape[2], 2 * wb.shape[2])):  # fmt: skip
            return a, b
    return None


def _up_name(experts: nn.Module) -> str | None:
    """``"gate_up_proj"`` (gated) or ``"up_proj"`` (plain) where ``experts`` holds it 3-D with a
    3-D ``down_proj``, else None."""
    params = experts._parameters
    down = params.get("down_proj")
    if down is None or down.dim() != 3:
        return None
    for name in ("gate_up_proj", "up_proj"):
        if params.get(name) is not None and params[name].dim() == 3:
            return name
    return None


def _expert_norm(experts: nn.Module, prefix: str, n_experts: int,
                 dim: int) -> tuple[str | None, float]:  # fmt: skip
    """``(path, eps)`` of a child of ``experts`` holding a per-expert norm scale ``weight [E,
    dim]`` and a float ``eps`` (Ergo's ``post_expert_norm``), or ``(None, 0.0)``."""
    for name, child in experts.named_children():
        w = child._parameters.get("weight")
        eps = _first("eps", "variance_epsilon", owners=(child,))
        if (w is not None and tuple(w.shape) == (n_experts, dim)
                and isinstance(eps, float)):  # fmt: skip
            return f"{prefix}.{name}.weight", eps
    return None, 0.0


def why_not_moe(block: nn.Module) -> str | None:
    """Why ``block`` cannot be described by any :class:`MoESpec` (None when it can)."""
    parts, reason = moe_parts(block)
    if reason:
        return reason
    for owner in (block, block._modules[parts["router"]]):
        for attr in _JITTER:
            if float(getattr(owner, attr, 0.0) or 0.0) > 0:
                return (f"training-mode input jitter ({attr}={getattr(owner, attr)}) is not "
                        "reproduced")
    experts = block._modules[parts["experts"]]
    if _activation(experts) is None and _activation(block) is None:
        act = getattr(experts, "act_fn", None)
        if act is None:
            return (f"its experts ({type(experts).__name__}) hold no activation module ffnlab "
                    "can name (their own gate function)")  # fmt: skip
        return f"its experts' activation {type(act).__name__} has no ffnlab equivalent"
    return None


def _activation(experts: nn.Module) -> tuple[str, tuple[float, ...]] | None:
    """The ffnlab activation and options of ``experts`` (or of a block holding the activation
    itself, JetMoE's ``activation``), or None."""
    act = getattr(experts, "act_fn", None)
    if act is None:
        act = getattr(experts, "activation", None)
    if not callable(act):  # absent, or a config string
        act = None
    if act is not None:
        name = hf_activation(act)
        return None if name is None else (name, ())
    if hasattr(experts, "alpha") and hasattr(experts, "limit"):  # GPT-OSS's clamped SwiGLU
        return "clamped_swish", (float(experts.alpha), float(experts.limit))
    return None


def _first(*names, owners) -> object:
    for owner in owners:
        for n in names:
            v = getattr(owner, n, None)
            if v is not None:
                return v
    return None


def moe_candidates(block: nn.Module, returns: tuple[str | None, ...] = (None,),
                   flat: bool = False) -> Iterator[MoESpec]:  # fmt: skip
    """Every :class:`MoESpec` that ``block``'s structure allows, most likely first.

    ``returns``: what may follow the output in its return value (seen on a probe), ``flat``:
    the output is ``[T, dim]``."""
    if why_not_moe(block):
        return
    parts, _ = moe_parts(block)
    router, experts = block._modules[parts["router"]], block._modules[parts["experts"]]
    owners = (router, block)
    if "down_experts" in parts:  # JetMoE: [E, 2I, dim] in, [E, dim, I] out
        up_path, down_path = f"{parts['experts']}.weight", f"{parts['down_experts']}.weight"
        gated = _get(block, up_path).shape[1] == 2 * _get(block, down_path).shape[2]
    else:
        up = _up_name(experts)
        up_path, down_path = f"{parts['experts']}.{up}", f"{parts['experts']}.down_proj"
        gated = up == "gate_up_proj"
    n_experts, dim = _get(block, up_path).shape[0], _get(router, _router_weight(router)).shape[1]
    norm, eps = _expert_norm(experts, parts["experts"], n_experts, dim)
    top_k = int(_first("top_k", "num_experts_per_tok", owners=owners) or 0)
    if not 1 <= top_k <= n_experts:
        return
    rname = parts["router"]
    # the correction bias is the router's (DeepSeek-V3), a child's of the router (ERNIE-4.5's
    # moe_statics) or the block's (MiniMax-M2, AFMoE)
    owners_of_bias = [(f"{rname}.", router)] + [
        (f"{rname}.{n}.", c) for n, c in router.named_children()] + [("", block)]  # fmt: skip
    sel = next((f"{prefix}{n}" for prefix, owner in owners_of_bias for n in _SELECTION_BIAS
                if getattr(owner, n, None) is not None), None)  # fmt: skip
    logit_bias = f"{rname}.bias" if getattr(router, "bias", None) is not None else None
    act, options = _activation(experts) or _activation(block)
    out_bias = block._parameters.get("bias")
    out_bias = "bias" if out_bias is not None and tuple(out_bias.shape) == (dim,) else None
    hint_norm = _first("norm_topk_prob", owners=owners)
    scaling = float(_first("routed_scaling_factor", "router_scaling_factor", "route_scale",
                           owners=owners) or 1.0)  # fmt: skip
    n_group = int(_first("num_group", "n_group", owners=owners) or 1)
    method = _first("topk_method", owners=owners)
    if method == "greedy" or n_experts % n_group:  # DeepSeek-V2's default: no groups
        n_group = 1
    topk_group = min(int(_first("topk_group", owners=owners) or n_group), n_group)
    base = MoESpec(
        router=rname, experts=parts["experts"], router_weight=f"{rname}.{_router_weight(router)}",
        logit_bias=logit_bias, selection_bias=sel, top_k=top_k, n_group=n_group,
        topk_group=topk_group, routed_scaling=scaling, activation=act, options=options,
        up=up_path, down=down_path, output_bias=out_bias, gated=gated,
        biases=_has(block, f"{up_path}_bias") and _has(block, f"{down_path}_bias"),
        shared=parts.get("shared"), shared_gate=parts.get("shared_gate"), flat=flat,
        expert_norm=norm, norm_eps=eps, out_norm=parts.get("out_norm"),
    )  # fmt: skip
    kinds = ("sigmoid", "softmax", "sigmoid_input") if sel else ("softmax", "sigmoid",
                                                                  "sigmoid_input")  # fmt: skip
    jitter = _first("router_jitter_noise", owners=owners)  # PhiMoE's sparsemixer threshold
    kinds = ("sparsemixer", *kinds) if jitter is not None else (*kinds, "sparsemixer")
    groups = [()] if n_group == 1 else [
        (("group_score", score), ("group_fill", fill)) for score, fill in sorted(
            _GROUP_RULES, key=lambda r: method == "group_limited_greedy" and r[0] != "max")]
    norms = (True, False) if hint_norm is None or hint_norm else (False, True)
    halves = (True, False) if base.gated else (True,)
    layouts = _layouts(experts, dim) if "down_experts" not in parts else (
        [(False, False), (False, True)] if gated else [(False, False)])  # fmt: skip
    norm32s = (False, True) if norm is not None else (False,)
    for kind, norm_topk, group, layout, gate_first, ret, f32, norm32 in itertools.product(
        kinds, norms, groups, layouts, halves, returns, (None, "routing", "logits"), norm32s
    ):
        if kind == "sigmoid_input" and (norm_topk or scaling != 1.0):
            continue
        options, k = group, top_k
        if kind == "sparsemixer":
            # transformers' sparsemixer runs two rounds whatever num_experts_per_tok says
            if norm_topk or sel or n_group > 1 or n_experts < 2:
                continue
            k = 2
            options = (("jitter_eps", float(0.01 if jitter is None else jitter)),)
        yield replace(base, kind=kind, norm_topk=norm_topk, transposed=layout[0],
                      interleaved=layout[1], gate_first=gate_first, returns=ret,
                      float32=f32, norm_float32=norm32, router_options=options,
                      top_k=k)  # fmt: skip


def _has(module: nn.Module, path: str) -> bool:
    try:
        return _get(module, path) is not None
    except AttributeError:
        return False


def _layouts(experts: nn.Module, dim: int) -> list[tuple[bool, bool]]:
    """``(transposed, interleaved)`` pairs ``gate_up_proj [E, a, b]`` (or a plain ``up_proj``,
    never interleaved) may be stored in."""
    gated = _up_name(experts) == "gate_up_proj"
    if hasattr(experts, "is_transposed") and hasattr(experts, "is_concatenated"):
        return [(bool(experts.is_transposed), gated and not experts.is_concatenated)]
    _, a, b = getattr(experts, _up_name(experts)).shape
    out = []
    if b == dim and (a % 2 == 0 or not gated):
        out += [(False, False), (False, True)] if gated else [(False, False)]
    if a == dim and (b % 2 == 0 or not gated):
        out += [(True, False), (True, True)] if gated else [(True, False)]
    return out
