"""Recognise an MLP by what it holds: its projections, activation, norms, dropouts, multipliers.

No class names are involved. A module is a candidate when its direct children are two or three
projections (``nn.Linear`` or transformers' ``Conv1D``, which stores ``[in, out]``) plus
parameter-free modules (activation, dropout), activation modules with parameters (``PReLU``,
``XIELUActivation``) and 1-D norms, and its forward takes one tensor. The projections' shapes
give the roles (``dim`` the model width, ``hidden`` the MLP width):

* ``[hidden, dim]`` and ``[dim, hidden]``: plain ``down(act(in(x)))``;
* ``[2*hidden, dim]`` and ``[dim, hidden]``: packed gated, the gate the first or second half;
* two ``[hidden, dim]`` and ``[dim, hidden]``: gated ``down(act(gate(x)) * up(x))``, either one
  as the gate.

Each candidate (an :class:`MLPSpec`) also fixes the activation (an ffnlab name from
:mod:`.hf_activations`, or the module's own activation object, or an ffnlab name tried when the
forward calls a function it does not store), multipliers (float attributes such as Falcon-H1's
``gate_multiplier``/``down_multiplier``), a norm on the hidden units (BitNet's ``ffn_sub_norm``),
on the input or on the output (Ergo's shared expert), Gemma-3n's gate sparsity, and the dropouts. :func:`candidates` lists them in
order of likelihood (names such as ``gate_proj`` decide the order only); :mod:`.verify` keeps
the first one that computes what the module computes.
"""

from __future__ import annotations

import inspect
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace

from torch import nn

from .hf_activations import hf_activation, hf_activation_options

__all__ = [
    "MLPSpec",
    "candidates",
    "forward_inputs",
    "is_moe_block",
    "projection_shape",
    "why_not_mlp",
]

#: ffnlab activations tried when a module stores no activation object (its forward calls a
#: function such as ``F.silu`` directly, as Lfm2MLP does).
_IMPLICIT_ACTIVATIONS = ("swish", "gelu", "gelu_tanh", "relu", "relu2", "sigmoid", "tanh")
_GATE_NAMES = ("gate_proj", "w1", "wi_0", "gate", "fc1", "c_fc", "linear_1", "w_gate")
_DOWN_NAMES = (
    "down_proj",
    "w2",
    "wo",
    "fc2",
    "c_proj",
    "dense_4h_to_h",
    "fc_out",
    "linear_2",
    "out_proj",
    "w_out",
    "output_dense",
    "dense2",
)
_MULTIPLIER = re.compile(r"(multiplier|scale|scaling)$")
_MOE_NAMES = ("experts", "router", "shared_experts", "shared_expert", "routed_experts")
# Class names of MoE blocks end so (the models and layers holding them end otherwise).
_MOE_CLASS = re.compile(r"(MoE|Moe|MoeBlock|MoEBlock|Experts|Router|SparseMLP)$")


@dataclass(frozen=True)
class MLPSpec:
    """How one MLP computes ``[..., dim] -> [..., dim]``, in terms of its own attributes.

    ``y = out_dropout(out_norm(out_scale · down(norm(hdrop(act(gs · W1 x + gs · b1) ⊙ (W3 x +
    b3))))))`` with ``x`` first through ``input_norm`` when set (``norm``: ``hidden_norm``; an
    unset step is the identity). Names are attributes of the module.

    Attributes:
        gate: the W1 projection (plain MLPs: the input projection; packed: [W1; W3] together).
        down: the W2 projection.
        up: the W3 projection of an unpacked gated MLP, else None.
        packed: ``gate`` holds W1 and W3 stacked by rows; ``gate_first`` says which half is W1.
        activation: ffnlab activation name, or None to call attribute ``act_attr``.
        act_options: the named activation's option values (leaky ReLU's slope).
        act_attr: attribute holding the module's activation object (callable route).
        gate_scale / out_scale: float attributes multiplying the gate pre-activation / output.
        hidden_norm / input_norm / out_norm: norm modules on the hidden units / on the input /
            on the down projection's output.
        gate_transform: method of the module applied to the gate pre-activation (Gemma-3n's
            ``_gaussian_topk``), before the activation.
        hidden_dropout / out_dropout: an ``nn.Dropout`` child or a float attribute (its p).
        residual: the forward is ``(x, residual)`` and returns ``residual + y``.
    """

    gate: str
    down: str
    up: str | None = None
    packed: bool = False
    gate_first: bool = True
    activation: str | None = None
    act_options: tuple[float, ...] = ()
    act_attr: str | None = None
    gate_scale: str | None = None
    out_scale: str | None = None
    hidden_norm: str | None = None
    input_norm: str | None = None
    out_norm: str | None = None
    gate_transform: str | None = None
    hidden_dropout: str | None = None
    out_dropout: str | None = None
    residual: bool = False

    @property
    def gated(self) -> bool:
        """Whether the MLP has a W3 (value) branch."""
        return self.packed or self.up is not None

    @property
    def fusable(self) -> bool:
        """Whether ffnlab's fused op can run it whole (nothing between the branches and the
        down projection but the activation, named or callable, and the product)."""
        return self.hidden_norm is None and self.gate_transform is None


def projection_shape(module: nn.Module) -> tuple[int, int] | None:
    """``(in, out)`` of a projection, else None: an ``nn.Linear``, transformers' ``Conv1D``, or
    a module wrapping one ``nn.Linear`` child and nothing else with parameters (Gemma-4's
    clippable linear clamps around its ``linear``; such a wrapper is always called, never read
    through its weights, see :func:`ffnlab.ops.projections.projections_are_plain`)."""
    children = list(module.children())
    if (
        not isinstance(module, nn.Linear)
        and len(children) == 1
        and not list(module.parameters(recurse=False))
    ):
        inner = children[0]
        return projection_shape(inner) if type(inner) is nn.Linear else None
    w = getattr(module, "weight", None)
    if not isinstance(w, nn.Parameter) or w.dim() != 2:
        return None
    if isinstance(module, nn.Linear):
        return w.shape[1], w.shape[0]
    if type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers."):
        return w.shape[0], w.shape[1]
    return None


def is_moe_block(module: nn.Module) -> bool:
    """Whether ``module`` is (or routes to) a mixture of experts: handled as one block by
    :mod:`ffnlab.interop.recognise_moe`, its children never as MLPs of their own."""
    names = set(module._modules)
    if names & set(_MOE_NAMES):
        return True
    return bool(_MOE_CLASS.search(type(module).__name__))


def _is_norm(module: nn.Module) -> bool:
    params = list(module.parameters())
    return "norm" in type(module).__name__.lower() and all(p.dim() == 1 for p in params)


def _is_activation(module: nn.Module) -> bool:
    origin = type(module).__module__
    return origin.startswith(("transformers.activations", "torch.nn.modules.activation"))


def forward_inputs(module: nn.Module) -> int:
    """How many tensors the forward requires: 1 (``x``), 2 (``x, residual``: Bloom's and MPT's
    MLPs add the residual themselves), else 0 (not an MLP's forward)."""
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return 0
    required = [p for p in params if p.default is p.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]  # fmt: skip
    if any(p.kind is p.KEYWORD_ONLY and p.default is p.empty for p in params):
        return 0
    if len(required) == 1:
        return 1
    if len(required) == 2 and required[1].name == "residual":
        return 2
    return 0


def _parts(module: nn.Module):
    """``(projections {name: (in, out)}, norms [name], dropouts [name], acts [name])`` or None
    when a child is none of these (a module with other parametrised children is no MLP)."""
    projs, norms, drops, acts = {}, [], [], []
    for name, child in module.named_children():
        shape = projection_shape(child)
        if shape is not None:
            projs[name] = shape
        elif isinstance(child, nn.Dropout):
            drops.append(name)
        elif _is_norm(child) and any(True for _ in child.parameters()):
            norms.append(name)
        elif _is_activation(child) or not any(True for _ in child.parameters()):
            acts.append(name)
        else:
            return None
    return projs, norms, drops, acts


def why_not_mlp(module: nn.Module) -> str | None:
    """Why ``module`` has no MLP candidate (a sentence), or None when it has candidates."""
    parts = _parts(module)
    if parts is None or len(parts[0]) not in (2, 3):
        return "holds no two or three projections with an MLP's shapes"
    if not forward_inputs(module):
        return f"its forward takes {inspect.signature(module.forward)}, not one tensor"
    if next(candidates(module), None) is None:
        return "its projections' shapes fit no plain, gated or packed MLP"
    return None


def _order(names, preferred: tuple[str, ...]) -> list[str]:
    return sorted(names, key=lambda n: preferred.index(n) if n in preferred else len(preferred))


def _layouts(projs: dict[str, tuple[int, int]]) -> Iterator[MLPSpec]:
    names = _order(projs, _GATE_NAMES)
    for down in _order(projs, _DOWN_NAMES):
        hidden, dim = projs[down]
        ins = [n for n in names if n != down and projs[n][0] == dim]
        if len(ins) != len(projs) - 1:
            continue
        if len(ins) == 1:
            width = projs[ins[0]][1]
            if width == hidden:
                yield MLPSpec(gate=ins[0], down=down)
            if width == 2 * hidden:
                yield MLPSpec(gate=ins[0], down=down, packed=True, gate_first=True)
                yield MLPSpec(gate=ins[0], down=down, packed=True, gate_first=False)
        elif all(projs[n][1] == hidden for n in ins):
            yield MLPSpec(gate=ins[0], up=ins[1], down=down)
            yield MLPSpec(gate=ins[1], up=ins[0], down=down)


def _activations(module: nn.Module, act_children: list[str]) -> list[dict]:
    found = list(act_children)
    for name, value in vars(module).items():
        if name.startswith("_") or name in found or isinstance(value, (nn.Module, type)):
            continue
        if callable(value) and hf_activation(value) is not None:
            found.append(name)
    out: list[dict] = []
    for name in found:
        obj = getattr(module, name)
        named = hf_activation(obj)
        if named is not None:
            out.append({"activation": named, "act_attr": name,
                        "act_options": hf_activation_options(obj)})  # fmt: skip
        out.append({"activation": None, "act_attr": name})
    out.extend({"activation": a, "act_attr": None} for a in _IMPLICIT_ACTIVATIONS)
    return out


def _floats(module: nn.Module, pattern: re.Pattern) -> list[str]:
    return [n for n, v in vars(module).items()
            if not n.startswith("_") and isinstance(v, (int, float)) and not isinstance(v, bool)
            and pattern.search(n)]  # fmt: skip


def candidates(module: nn.Module) -> Iterator[MLPSpec]:
    """The :class:`MLPSpec` s ``module`` might compute, most likely first (possibly none)."""
    parts = _parts(module)
    if parts is None or len(parts[0]) not in (2, 3) or not forward_inputs(module):
        return
    projs, norms, drops, act_children = parts
    scales = _floats(module, _MULTIPLIER)
    gate_scale = next((n for n in scales if "gate" in n), None)
    out_scale = next((n for n in scales if n != gate_scale), None)
    drop_attrs = _floats(module, re.compile("dropout"))
    extras: dict = {"gate_scale": gate_scale, "out_scale": out_scale}
    transform = getattr(module, "_gaussian_topk", None)
    if callable(transform) and getattr(module, "activation_sparsity", 0.0) > 0.0:
        extras["gate_transform"] = "_gaussian_topk"
    # Multipliers found by name are tried on and then off (an attribute may be unused).
    options = [extras, {}] if gate_scale or out_scale else [extras]
    for layout in _layouts(projs):
        hidden, dim = projs[layout.down]
        placed = [replace(layout, residual=forward_inputs(module) == 2)]
        for norm in norms:
            size = next(module._modules[norm].parameters()).shape[0]
            if size == hidden:
                placed = [replace(p, hidden_norm=norm) for p in placed]
            elif size == dim:  # before the MLP or after it: the probe tells
                placed = [replace(p, **{role: norm}) for p in placed
                          for role in ("input_norm", "out_norm")]  # fmt: skip
        for spec_layout, option in itertools.product(placed, options):
            for act in _activations(module, act_children):
                spec = replace(spec_layout, **option, **act)
                yield from _with_dropouts(spec, drops + drop_attrs)


def _with_dropouts(spec: MLPSpec, drops: list[str]) -> Iterator[MLPSpec]:
    """The spec with each placement of the module's dropouts (eval-mode checks cannot tell them
    apart: :mod:`.verify` compares seeded train-mode forwards too when one is active)."""
    if not drops:
        yield spec
        return
    if len(drops) == 1:
        yield replace(spec, out_dropout=drops[0])
        yield replace(spec, hidden_dropout=drops[0])
        yield replace(spec, hidden_dropout=drops[0], out_dropout=drops[0])
        return
    for hid in drops:
        for out in drops:
            if hid != out:
                yield replace(spec, hidden_dropout=hid, out_dropout=out)
