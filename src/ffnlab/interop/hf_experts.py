"""ffnlab's grouped experts as an experts implementation of transformers (``"ffnlab"``).

transformers 5 runs the experts of its mixture-of-experts models through an *experts interface*:
an experts class decorated with ``@use_experts_implementation(...)`` looks the function up in
``transformers.integrations.moe.ExpertsInterface`` by ``config._experts_implementation`` at every
forward (``from_pretrained(..., experts_implementation=...)``, ``model.set_experts_implementation``)
and calls it as ``fn(experts, hidden_states [T, dim], top_k_index [T, k], top_k_weights [T, k])
-> [T, dim]``. The decorator states the experts' storage on the instance:

==========================  ======================================================================
``has_gate``                ``gate_up_proj`` (gated; the middle is ``experts._apply_gate``) or a
                            plain ``up_proj`` (the middle is ``experts.act_fn``)
``is_transposed``           ``[E, dim, 2I]`` / ``[E, I, dim]`` (``x @ w``), else ``[E, 2I, dim]`` /
                            ``[E, dim, I]`` (``F.linear``)
``is_concatenated``         gate and up halves concatenated (gate first), else interleaved
``has_bias``                ``gate_up_proj_bias [E, 2I]`` (``up_proj_bias``), ``down_proj_bias``
``has_post_expert_norm``    ``experts.post_expert_norm`` on each route's output, before the gates
                            (unset by transformers' interface before it had the step: none)
``_is_expert_parallel``     expert ids ``>= num_experts`` are other ranks' (weight 0)
==========================  ======================================================================

:func:`register_hf` registers :func:`experts_forward` there under ``"ffnlab"`` (one explicit call,
transformers' own ``ExpertsInterface.register``). It computes what transformers' ``grouped_mm``
computes, with ffnlab's fused grouped op: sort the ``T*k`` routes by expert, run every expert's
FFN as grouped products with the fused elementwise middle
(:func:`ffnlab.ops.grouped_function.grouped_feed_forward`), and sum the routes back with their
weights. Equivalent PyTorch (transformers' eager loop, gated, ``F.linear`` layout)::

    out = torch.zeros_like(x)
    for e in range(E):
        t, j = torch.where(top_k_index == e)
        h = experts._apply_gate(F.linear(x[t], gate_up_proj[e]))   # act(gate) * up
        out.index_add_(0, t, F.linear(h, down_proj[e]) * top_k_weights[t, j, None])

A decoding step on a CPU without gradients (a few routes: :func:`ffnlab.ops.routes_loop.
routes_loop_runs`) runs one ``F.linear`` per route instead (:func:`~ffnlab.ops.routes_loop.
loop_routes`), which is faster than any grouped product at that size.

What the middle computes is read once per experts module and kept on it (:class:`ExpertsPlan`):
the default ``_apply_gate`` is ``act_fn(gate) * up`` with ``act_fn`` named by
:func:`ffnlab.interop.hf_activations.hf_activation`; a class's own ``_apply_gate`` (GPT-OSS's
clamped SwiGLU) is matched to an ffnlab activation on a float64 probe. What ffnlab cannot compute
raises a :class:`~ffnlab.errors.UsageError` naming it. transformers is imported only inside
:func:`register_hf`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import UsageError
from ..experts import Experts
from ..ops.dispatch import device_type
from ..ops.grouped import packed_halves, permute_tokens, sort_by_expert, unpermute_tokens
from ..ops.grouped_function import grouped_feed_forward
from ..ops.reference import hidden_activation
from ..ops.routes_loop import loop_routes, routes_loop_runs
from .hf_activations import describe, hf_activation, hf_activation_options
from .hf_moe import HFMoE, experts_choice
from .verify import TOLERANCE, relative_difference

__all__ = [
    "EXPERTS_NAME",
    "ExpertsPlan",
    "experts_forward",
    "experts_plan",
    "register_hf",
    "take_over_experts_choice",
]

#: The name ffnlab's experts implementation is registered under.
EXPERTS_NAME = "ffnlab"
_PLAN_ATTR = "_ffnlab_experts_plan"


@dataclass(frozen=True)
class ExpertsPlan:
    """How :func:`experts_forward` computes one experts module.

    ``activation``, ``options``: the ffnlab activation of the middle and its option values;
    ``interleaved``, ``gate_first``: where the gate half sits in ``gate_up_proj`` (gated only);
    ``key``: what the plan was read from (the flags and the gate's function objects), compared
    by identity at each call so that a changed module is read again.
    """

    activation: str
    options: tuple[float, ...]
    interleaved: bool
    gate_first: bool
    key: tuple


def _flag(experts: nn.Module, name: str) -> bool:
    value = getattr(experts, name, None)
    if not isinstance(value, bool):
        raise UsageError(
            f"{type(experts).__name__} has no boolean {name!r}: the 'ffnlab' experts "
            "implementation runs experts classes decorated with transformers' "
            "@use_experts_implementation, which sets it"
        )
    return value


def _key(experts: nn.Module) -> tuple:
    names = ("has_gate", "is_transposed", "is_concatenated", "has_bias", "has_post_expert_norm")
    return (*(getattr(experts, n, None) for n in names), getattr(experts, "act_fn", None),
            getattr(type(experts), "_apply_gate", None))  # fmt: skip


def _default_gate(experts: nn.Module) -> bool:
    """Whether ``experts`` uses transformers' default ``_apply_gate`` (``act_fn(gate) * up`` on
    concatenated halves), recognised by its name so that transformers is not imported."""
    fn = getattr(type(experts), "_apply_gate", None)
    return fn is None or (getattr(fn, "__qualname__", "") == "_default_apply_gate"
                          and getattr(fn, "__module__", "") == "transformers.integrations.moe")  # fmt: skip


def _named_act(experts: nn.Module) -> tuple[str, tuple[float, ...]] | None:
    act = getattr(experts, "act_fn", None)
    name = hf_activation(act) if act is not None else None
    return None if name is None else (name, hf_activation_options(act))


def _gate_candidates(experts: nn.Module) -> list[tuple[str, tuple[float, ...]]]:
    """ffnlab activations a class's own ``_apply_gate`` may compute: its ``act_fn``'s, and
    GPT-OSS's clamped SwiGLU where it holds an ``alpha`` and a ``limit``."""
    out = [a for a in (_named_act(experts),) if a is not None]
    for alpha, limit in (("alpha", "limit"), ("swiglu_alpha", "swiglu_limit")):
        a, lim = getattr(experts, alpha, None), getattr(experts, limit, None)
        if isinstance(a, (int, float)) and isinstance(lim, (int, float)):
            out.append(("clamped_swish", (float(a), float(lim))))
    return out


def _gate_matches(experts: nn.Module, act: str, options: tuple[float, ...], interleaved: bool,
                  gate_first: bool, hidden: int) -> bool:  # fmt: skip
    """``experts._apply_gate`` against ffnlab's middle on a float64 probe ``[16, 2 * hidden]``
    (values up to ±12, past GPT-OSS's clamp at 7)."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 2 * hidden, generator=g, dtype=torch.float64) * 4
    try:
        with torch.no_grad():
            want = experts._apply_gate(z)
    except Exception:  # noqa: BLE001 - a gate that does not run on the probe matches nothing
        return False
    gate, up = packed_halves(z, interleaved, gate_first, dim=1)
    got = hidden_activation(act, gate, up, options=options)
    return want.shape == got.shape and relative_difference(want, got) <= TOLERANCE


def experts_plan(experts: nn.Module) -> ExpertsPlan:
    """The :class:`ExpertsPlan` of a transformers experts module (read once, kept on it).

    Raises :class:`~ffnlab.errors.UsageError` naming the flag, activation or gate function that
    ffnlab cannot compute."""
    key = _key(experts)
    plan = experts.__dict__.get(_PLAN_ATTR)
    if plan is not None and len(plan.key) == len(key) and all(
        a is b or a == b for a, b in zip(plan.key, key, strict=True)
    ):
        return plan
    cls = type(experts).__name__
    has_gate, concatenated = _flag(experts, "has_gate"), _flag(experts, "is_concatenated")
    for name in ("is_transposed", "has_bias"):
        _flag(experts, name)
    if hasattr(experts, "has_post_expert_norm"):  # transformers' interface before it (5.15) has
        _flag(experts, "has_post_expert_norm")  # no post-expert norm step: none runs
    if not has_gate:
        act = _named_act(experts)
        if act is None:
            raise UsageError(f"{cls}.act_fn ({describe(getattr(experts, 'act_fn', None))}) has no "
                             "ffnlab activation: the 'ffnlab' experts implementation cannot run it")  # fmt: skip
        plan = ExpertsPlan(act[0], act[1], False, True, key)
    elif _default_gate(experts):
        if not concatenated:
            raise UsageError(
                f"{cls} states is_concatenated=False (interleaved gate and up) but uses "
                "transformers' default _apply_gate, which splits concatenated halves: the "
                "'ffnlab' experts implementation does not guess which one holds"
            )
        act = _named_act(experts)
        if act is None:
            raise UsageError(f"{cls}.act_fn ({describe(getattr(experts, 'act_fn', None))}) has no "
                             "ffnlab activation: the 'ffnlab' experts implementation cannot run it")  # fmt: skip
        plan = ExpertsPlan(act[0], act[1], False, True, key)
    else:
        hidden = _weight(experts, "down_proj").shape[1 if _flag(experts, "is_transposed") else 2]
        found = next(((a, o, gf) for a, o in _gate_candidates(experts) for gf in (True, False)
                      if _gate_matches(experts, a, o, not concatenated, gf, hidden)), None)  # fmt: skip
        if found is None:
            layout = "concatenated" if concatenated else "interleaved"
            raise UsageError(
                f"{cls}._apply_gate computes no ffnlab activation on {layout} gate and up halves "
                f"(tried {[a for a, _ in _gate_candidates(experts)] or 'none: no act_fn'}): the "
                "'ffnlab' experts implementation cannot run it"
            )
        plan = ExpertsPlan(found[0], found[1], not concatenated, found[2], key)
    experts.__dict__[_PLAN_ATTR] = plan
    return plan


def _weight(experts: nn.Module, name: str) -> Tensor:
    w = getattr(experts, name, None)
    if not isinstance(w, Tensor) or w.dim() != 3:
        raise UsageError(f"{type(experts).__name__} has no 3-D {name} ({type(w).__name__})")
    return w


def _packed_weights(experts: nn.Module) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """``(up, down, b_up, b_down)`` as stored, in ``F.linear``'s layout (views): ``up [E, 2I,
    dim]`` (``[E, I, dim]`` without a gate), ``down [E, dim, I]``, biases or None."""
    up_name = "gate_up_proj" if experts.has_gate else "up_proj"
    up, down = _weight(experts, up_name), _weight(experts, "down_proj")
    if experts.is_transposed:  # [E, dim, 2I] and [E, I, dim]: F.linear wants the transpose
        up, down = up.transpose(1, 2), down.transpose(1, 2)
    b_up = getattr(experts, f"{up_name}_bias") if experts.has_bias else None
    b_down = experts.down_proj_bias if experts.has_bias else None
    return up, down, b_up, b_down


def _weights(experts: nn.Module, plan: ExpertsPlan) -> tuple[Tensor | None, ...]:
    """``(w1, w2, w3, b1, b2, b3)`` of :func:`grouped_feed_forward` as views of the stored
    tensors: ``w1, w3 [E, I, dim]``, ``w2 [E, dim, I]``, biases ``[E, ...]`` (None where absent)."""
    up, down, b_up, b_down = _packed_weights(experts)
    if not experts.has_gate:
        return up, down, None, b_up, b_down, None
    w1, w3 = packed_halves(up, plan.interleaved, plan.gate_first, dim=1)
    b1, b3 = (None, None) if b_up is None else packed_halves(b_up, plan.interleaved, plan.gate_first, dim=1)
    return w1, down, w3, b1, b_down, b3


def experts_forward(experts: nn.Module, hidden_states: Tensor, top_k_index: Tensor,
                    top_k_weights: Tensor) -> Tensor:  # fmt: skip
    """transformers' experts-interface function run by ffnlab: ``hidden_states [T, dim]``, the
    chosen experts ``top_k_index [T, k]`` and their weights ``top_k_weights [T, k]`` -> ``[T,
    dim]``, in ``hidden_states``' dtype (the module docstring has the equivalent loop)."""
    plan = experts_plan(experts)
    x = Experts.autocast_input(hidden_states)
    idx, gates = top_k_index, top_k_weights
    if routes_loop_runs(x, idx.numel() // max(idx.shape[-1], 1), idx.shape[-1]):
        # a decoding step on a CPU: one product per route (other ranks' ids contribute zero)
        norm = experts.post_expert_norm if getattr(experts, "has_post_expert_norm", False) else None
        out = loop_routes(x.reshape(-1, x.shape[-1]), idx.reshape(-1, idx.shape[-1]),
                          gates.reshape(-1, idx.shape[-1]), *_packed_weights(experts),
                          activation=plan.activation, options=plan.options,
                          gated=bool(experts.has_gate), interleaved=plan.interleaved,
                          gate_first=plan.gate_first, route_norm=norm)  # fmt: skip
        return out.reshape(hidden_states.shape).to(hidden_states.dtype)
    weights = _weights(experts, plan)
    if torch.is_autocast_enabled(device_type(x)):  # what F.linear does to its operands there
        weights = tuple(None if w is None else w.to(x.dtype) for w in weights)
    n_experts = weights[0].shape[0]
    # Under expert parallelism other ranks' experts come as ids >= n_experts (transformers'
    # router hook writes the sentinel n_experts, weight 0): computed on expert 0 and dropped, as
    # transformers' batched_mm does (the mask keeps them out of the gradient). Done whether or
    # not the experts say so (``_is_expert_parallel``, which transformers before 5.2x does not
    # set: there the sentinel ids ran out of range, on some ranks and not others).
    # Negative ids (none known) count as other ranks' too, so that no id raises on one rank
    # only: a rank that raised while another went on into a collective would hang or abort it.
    other = (idx >= n_experts) | (idx < 0)
    idx, gates = idx.clamp(0, n_experts - 1), gates.masked_fill(other, 0.0)
    top_k = idx.shape[-1]
    order, _, offsets = sort_by_expert(idx.reshape(-1, top_k), n_experts)
    xs = permute_tokens(x.reshape(-1, x.shape[-1]), order, top_k).to(weights[0].dtype)
    ys = grouped_feed_forward(xs, offsets, *weights, activation=plan.activation,
                              options=plan.options)  # fmt: skip
    if getattr(experts, "has_post_expert_norm", False):  # per route output, before the gates
        ys = experts.post_expert_norm(ys)
    out = unpermute_tokens(ys, order, xs.shape[0] // top_k, top_k, gates)
    return out.reshape(hidden_states.shape).to(hidden_states.dtype)


def register_hf() -> str:
    """Register :func:`experts_forward` in transformers' experts interface under ``"ffnlab"``
    and return the name; calling it again changes nothing.

    Then ``AutoModelForCausalLM.from_pretrained(path, experts_implementation="ffnlab")``,
    ``Config(..., experts_implementation="ffnlab")`` or ``model.set_experts_implementation(
    "ffnlab")`` run the experts of every model family whose experts class uses transformers'
    ``@use_experts_implementation`` with ffnlab's fused grouped op. Raises
    :class:`~ffnlab.errors.UsageError` when transformers (5.x, with
    ``transformers.integrations.moe.ExpertsInterface``) cannot be imported, or when another
    function is registered under the name.
    """
    try:
        from transformers.integrations.moe import ExpertsInterface
    except ImportError as exc:
        raise UsageError(
            "ffnlab.register_hf needs transformers 5 (the 'hf' extra, pip install "
            f"'ffnlab[hf]'), whose transformers.integrations.moe.ExpertsInterface it registers "
            f"in; importing it failed: {exc}"
        ) from exc
    interface = ExpertsInterface()
    if EXPERTS_NAME in interface and interface[EXPERTS_NAME] is not experts_forward:
        raise UsageError(f"transformers' ExpertsInterface already holds another function under "
                         f"{EXPERTS_NAME!r} ({interface[EXPERTS_NAME]!r})")  # fmt: skip
    ExpertsInterface.register(EXPERTS_NAME, experts_forward)
    return EXPERTS_NAME


def _runs(experts: nn.Module) -> bool:
    try:
        experts_plan(experts)
    except UsageError:
        return False
    return True


def take_over_experts_choice(model: nn.Module, moes: list[HFMoE]) -> None:
    """Make ``"ffnlab"`` the experts implementation of the configs whose experts ``patch_hf``
    just wrapped in ``moes``, so that the model reports what runs and any implementation chosen
    afterwards (``grouped_mm`` included) is a change that takes effect in the patched blocks.

    A config is left as it is when some other experts module reading it cannot run as
    ``"ffnlab"`` (:func:`experts_plan` fails), or when transformers has no experts interface to
    register in; the patched blocks then stand in for the choice in effect."""
    configs: dict[int, tuple[object, list[HFMoE]]] = {}
    for moe in moes:
        ex = moe._modules.get(moe.spec.experts)
        if experts_choice(ex) not in (None, EXPERTS_NAME):
            configs.setdefault(id(ex.config), (ex.config, []))[1].append(moe)
    if not configs:
        return
    wrapped = {id(moe._modules[moe.spec.experts]) for moe in moes}
    try:
        register_hf()
    except UsageError:
        return
    for config, group in configs.values():
        others = [m for m in model.modules() if id(m) not in wrapped
                  and experts_choice(m) is not None and m.config is config]  # fmt: skip
        if all(_runs(m) for m in others):
            config._experts_implementation = EXPERTS_NAME
            for moe in group:
                moe.experts_choice = EXPERTS_NAME
