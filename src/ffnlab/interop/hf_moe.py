"""``HFMoE``: a transformers mixture-of-experts block computed by ffnlab's router and experts.

The wrapper registers the block's own children under their own names (``gate``/``router``,
``experts``, ``shared_expert`` ...), so the parameters are the very same objects and
``state_dict()`` keys do not change. Its forward

1. projects the input with the router's ``weight [E, dim]`` (plus the logit bias GPT-OSS has) and
   routes with an ffnlab router (:meth:`ffnlab.routers.Router.route`, the options of the
   :class:`~ffnlab.interop.recognise_moe.MoESpec`, the correction bias passed in);
2. runs the routed experts with :func:`ffnlab.experts.run_experts` (the fused grouped op, or the
   reference loop with ``backend="reference"``) on views of the stored ``gate_up_proj`` and
   ``down_proj`` (slices or strided columns, transposed where stored ``[E, dim, 2I]``), with
   the experts' own per-expert output norm where they have one (Ergo's ``post_expert_norm``:
   :class:`ffnlab.ops.expert_norm.OutputNorm`, its stored scale);
3. adds the shared experts (an :class:`~ffnlab.interop.hf_modules.HFMLP` where that patches
   them, else their own module) times ``sigmoid(shared_gate(x))`` where there is one, then
   applies the block's output norm module where it has one (A.X-K1's ``post_mlp_layernorm``);
4. returns what the block returns: the output, or ``(output, router logits)`` /
   ``(output, gates)``.

Experts that go through transformers' experts interface (``@use_experts_implementation``) keep
the user's choice: the wrapper stands in for the implementation in effect when it was made
(:attr:`HFMoE.experts_choice`, transformers' default ``grouped_mm`` or ``eager``); once
``model.set_experts_implementation(name)`` chooses another, step 2 calls the experts module,
which runs ``name`` on ffnlab's routing (the same top-k ids and weights the block computes).

**Speed.** With ``backend="auto"``, a call whose routed work is too small for ffnlab's grouped
op to pay off (:func:`ffnlab.ops.dispatch.choose` on ``tokens x top_k`` rows of the experts'
hidden width: every decoding step, and small training batches) runs, without gradients on a
CPU for one token or a few routes, ffnlab's router and one ``F.linear`` per route
(:mod:`ffnlab.ops.routes_loop`: a Qwen3-MoE block's one-token call took 0.78x the block's own
time with ``grouped_mm``); otherwise it calls the original block, whose children, parameters and
buffers are this wrapper's (:meth:`HFMoE.original_is_current`), so a patched model runs exactly
what transformers runs there, with the experts implementation the model is set to. Larger
calls (prefill, training on longer batches) run ffnlab's router and
grouped experts. Measured under load (one thread, Qwen3-MoE, 16 experts of 256, top-4, dim
256): a training step on 4 x 128 tokens (2048 routes x 256 = 2^19 hidden elements) took 1.14x
transformers' time through ffnlab's grouped op, which is why gradients do not change the rule.

transformers records router logits for its auxiliary loss with forward hooks on the router
module; when the router has hooks the wrapper calls it (its output is discarded; one
``[T, dim] x [dim, E]`` product more), so what they record is unchanged.

:func:`.verify_moe.verified_moe_spec` checks each candidate on a float64 probe (a randomised
copy of the block: parameters, and the router's float buffers, redrawn) before any replacement.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..activations import compute_dtype, get_activation
from ..experts import Experts, run_experts
from ..ops.dispatch import choose, device_type
from ..ops.expert_norm import OutputNorm
from ..ops.grouped import packed_halves
from ..ops.routes_loop import loop_routes, routes_loop_runs
from ..routers import get_router
from .hf_modules import HFFeedForward
from .recognise_moe import MoESpec

__all__ = ["HFMoE", "experts_choice"]


class HFMoE(HFFeedForward):
    """A mixture-of-experts block of a transformers model, run by ffnlab.

    Input ``[..., dim]`` (as the block takes it), output as the block's (``[..., dim]``, or
    ``[T, dim]`` with ``spec.flat``), followed by router logits ``[T, E]`` or gates ``[T, k]``
    when the block returns them. ``shared``: the module computing the shared experts (an
    ``HFMLP`` of the block's own shared-expert module, registered under its name) or None.
    """

    def __init__(self, original: nn.Module, spec: MoESpec, *, backend: str,
                 shared: nn.Module | None = None) -> None:  # fmt: skip
        super().__init__(original, activation=spec.activation, backend=backend,
                         options=spec.options)  # fmt: skip
        self.spec = spec
        # The experts implementation ffnlab stands in for (transformers' choice on the experts'
        # config when patched, "ffnlab" once patch_hf sets it): another one chosen later runs
        # instead (forward); the one it replaced comes back with unpatch_hf.
        self.experts_choice = experts_choice(original._modules.get(spec.experts))
        self.replaced_choice = self.experts_choice
        for name, child in original.named_children():
            self.add_module(name, child)
        # The block's own tensors (MiniMax-M2's correction bias) keep their keys here too.
        for name, p in original._parameters.items():
            self.register_parameter(name, p)
        for name, b in original._buffers.items():
            self.register_buffer(name, b, persistent=name not in original._non_persistent_buffers_set)
        if spec.shared is not None and shared is not None:
            shared.counts_as_mlp = False  # counted with this block
            self.add_module(spec.shared, shared)
        weight = self._router_param(spec.router_weight)
        router_cls = get_router(spec.kind)
        # On the meta device: the router only routes logits computed here (route()); its own
        # weight is never used, so it holds no memory and is not registered (no new keys).
        kw = {} if spec.kind == "sigmoid_input" else {"norm_topk": spec.norm_topk,
                                                      "routed_scaling": spec.routed_scaling}  # fmt: skip
        down = self._router_param(spec.down)  # [E, dim, I], or [E, I, dim] transposed
        self.hidden_dim = down.shape[1] if spec.transposed else down.shape[2]
        self.__dict__["moe_router"] = router_cls(
            weight.shape[1], self._router_param(spec.down).shape[0], spec.top_k, bias=False,
            n_group=spec.n_group, topk_group=spec.topk_group, device="meta", **kw,
            **dict(spec.router_options),
        )  # fmt: skip

    def _router_param(self, path: str) -> Tensor:
        """The tensor at ``path`` (``"gate.weight"``, ``"e_score_correction_bias"``)."""
        module: nn.Module = self
        *owners, leaf = path.split(".")
        for part in owners:
            module = getattr(module, part)
        return getattr(module, leaf)

    def packed_expert_weights(self) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """``(up, down, b_up, b_down)`` as the experts store them, in ``F.linear``'s layout
        (views): ``up [E, 2I, dim]`` (gate and up halves as the spec's layout says; ``[E, I,
        dim]`` for plain experts), ``down [E, dim, I]``, biases ``[E, 2I]``, ``[E, dim]`` or
        None."""
        s = self.spec
        gu, down = self._router_param(s.up), self._router_param(s.down)
        bu = self._router_param(f"{s.up}_bias") if s.biases else None
        b2 = self._router_param(f"{s.down}_bias") if s.biases else None
        if s.transposed:  # [E, dim, 2I] and [E, I, dim]: F.linear wants the transpose
            gu, down = gu.transpose(1, 2), down.transpose(1, 2)
        return gu, down, bu, b2

    def expert_weights(self) -> tuple[Tensor | None, ...]:
        """``(w1, w2, w3, b1, b2, b3)`` as views of the experts' stored tensors: ``w1, w3
        [E, I, dim]``, ``w2 [E, dim, I]``, ``b1, b3 [E, I]``, ``b2 [E, dim]`` (None without
        biases; ``w3``, ``b3`` None for plain experts)."""
        s = self.spec
        gu, down, bu, b2 = self.packed_expert_weights()
        if not s.gated:
            return gu, down, None, bu, b2, None
        w1, w3 = packed_halves(gu, s.interleaved, s.gate_first, dim=1)
        b1, b3 = packed_halves(bu, s.interleaved, s.gate_first, dim=1) if s.biases else (None, None)
        return w1, down, w3, b1, b2, b3

    def out_norm(self) -> OutputNorm | None:
        """The experts' per-expert output norm on their stored scale (None without one)."""
        s = self.spec
        if s.expert_norm is None:
            return None
        dtype = torch.float32 if s.norm_float32 else None
        return OutputNorm(self._router_param(s.expert_norm), s.norm_eps, dtype)

    def route(self, x2: Tensor):
        """``(routing, logits)`` of the tokens ``x2 [T, dim]``."""
        s = self.spec
        weight = self._router_param(s.router_weight)
        cd = compute_dtype(x2.dtype)
        if s.float32 == "logits":
            cd = torch.float32
        bias = None if s.logit_bias is None else self._router_param(s.logit_bias).to(cd)
        logits = F.linear(x2.to(cd), weight.to(cd), bias)
        sel = None if s.selection_bias is None else self._router_param(s.selection_bias)
        scores = logits.float() if s.float32 == "routing" else logits
        router = self.__dict__["moe_router"]
        if router.training != self.training:  # sparsemixer samples in training mode
            router.training = self.training
        return router.route(scores, sel), logits

    def original_is_current(self) -> bool:
        """Whether calling the original block computes this wrapper: it still holds this
        wrapper's children (a patched shared expert stands for the original's), parameters and
        buffers, none replaced on the wrapper since (an adapter, or ``.to()``, which replaces
        buffers on the wrapper only). A few identity checks: asked on every decoding step."""
        return _same_tensors_and_children(self, self.original)

    def plain_size(self, x: Tensor) -> bool:
        """Whether ``backend="auto"`` runs ``x [..., dim]`` otherwise than by the grouped op:
        ``tokens x top_k`` rows of the experts' hidden width are too few for it
        (:func:`ffnlab.ops.dispatch.choose`), with or without gradients. :meth:`forward` then
        runs the routes loop or calls the original block."""
        if self.backend != "auto" or not x.dim() or not x.shape[-1]:
            return False
        return choose("auto", _tokens(x) * self.spec.top_k, self.hidden_dim) == "reference"

    def forward(self, hidden_states: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """``[..., dim]`` -> the block's output (see the class docstring)."""
        s, x = self.spec, hidden_states
        loop = False
        if self.plain_size(x):
            # a decoding step on a CPU without gradients: ffnlab's router and the routes loop
            # (:mod:`ffnlab.ops.routes_loop`); else the block itself
            loop = s.expert_norm is None and routes_loop_runs(x, _tokens(x), s.top_k)
            if not loop and self.original_is_current():
                return self._run_original(x)
        dim = x.shape[-1]
        x2 = x.reshape(-1, dim)
        routing, logits = self.route(x2)
        router = self._modules[s.router]
        if router._forward_hooks or router._forward_pre_hooks:
            # transformers' output recorders read the router's own output: call it as the
            # block does (its output is not used)
            args = [x2 if s.router_call.startswith("flat") else x]
            if s.router_call.endswith("+bias"):
                args.append(self._router_param(s.selection_bias))
            router(*args)
        xe = Experts.autocast_input(x2)
        backend = "reference" if self.backend == "reference" else "fused"
        if self.act_options and backend == "fused" and _default_options(s):
            options = ()
        else:
            options, backend = self.act_options, "reference" if self.act_options else backend
        experts = self._modules.get(s.experts)
        chosen = experts_choice(experts)
        if chosen not in (None, self.experts_choice, "ffnlab") and not routing.gate_input:
            # set_experts_implementation after patching: the experts run what was chosen
            y = experts(x2, routing.expert_idx, routing.gates.to(x2.dtype))
        elif loop and not routing.gate_input:
            up, down, b_up, b_down = self.packed_expert_weights()
            y = loop_routes(xe, routing.expert_idx, routing.gates, up, down, b_up, b_down,
                            activation=s.activation, options=self.act_options, gated=s.gated,
                            interleaved=s.interleaved, gate_first=s.gate_first)  # fmt: skip
        else:
            y = run_experts(xe, routing, self.expert_weights(), activation=s.activation,
                            backend=backend, options=options, recompute=self.recompute,
                            out_norm=self.out_norm())  # fmt: skip
        if s.shared is not None:
            sh = self._modules[s.shared](x2)
            if s.shared_gate is not None:
                sh = sh * torch.sigmoid(self._modules[s.shared_gate](x2))
            y = y + sh
        if s.output_bias is not None:
            y = y + self._router_param(s.output_bias)
        y = y.to(x.dtype) if not torch.is_autocast_enabled(device_type(x)) else y
        if s.out_norm is not None:
            y = self._modules[s.out_norm](y)
        y = y if s.flat else y.reshape(*x.shape[:-1], dim)
        if s.returns == "logits":
            return y, logits.to(x.dtype) if logits.dtype != x.dtype else logits
        if s.returns == "gates":
            return y, routing.gates.to(x.dtype)
        return y

    def _run_original(self, x: Tensor):
        """The original block's forward on ``x`` (hooks run on the wrapper; none are left on the
        original), with the experts implementation it had before patching while ``"ffnlab"``
        is the choice only because ``patch_hf`` made it so: at these sizes transformers' own
        implementation is the faster one, which is why this path exists."""
        original = self.original
        if original.training != self.training:
            original.train(self.training)
        experts = self._modules.get(self.spec.experts)
        if (experts_choice(experts) != "ffnlab" or self.experts_choice != "ffnlab"
                or self.replaced_choice in (None, "ffnlab")
                or x.dtype not in _RUNS_IN.get(self.replaced_choice, (x.dtype,))):
            return original.forward(x)
        config = experts.config  # shared by every layer: set back whatever happens
        _set_choice(config, self.replaced_choice)
        try:
            return original.forward(x)
        finally:
            _set_choice(config, "ffnlab")

    def give_back_experts_choice(self) -> None:
        """Put back on the experts' config the implementation patching replaced by ``"ffnlab"``
        (where ``"ffnlab"`` is still the choice)."""
        experts = self._modules.get(self.spec.experts)
        if experts_choice(experts) == "ffnlab" != self.replaced_choice:
            experts.config._experts_implementation = self.replaced_choice

    def extra_repr(self) -> str:
        s = self.spec
        return (f"router={s.kind!r}, top_k={s.top_k}, norm_topk={s.norm_topk}, "
                f"activation={s.activation!r}, backend={self.backend!r}"
                + (f", expert_norm={s.expert_norm!r}" if s.expert_norm else ""))  # fmt: skip


# The dtypes an implementation patching may hand small calls back to runs in: torch's grouped
# matrix product (transformers' default, grouped_mm) has no float64 kernel on CPU; "ffnlab" runs
# every dtype, so a float64 model keeps it at every size.
_RUNS_IN = {"grouped_mm": (torch.float32, torch.bfloat16, torch.float16)}


# Where transformers 5 keeps the experts choice behind the config's ``_experts_implementation``
# property, whose setter also walks the sub-configs: setting and restoring it through the
# property cost 25 us per decoding call of each layer, 2 us directly (2026-12-07, under load).
_CHOICE_SLOT = "_experts_implementation_internal"


def _tokens(x: Tensor) -> int:
    """Tokens of ``x [..., dim]`` (every leading dim together; ``dim`` > 0)."""
    return x.numel() // x.shape[-1]


def _set_choice(config, name: str) -> None:
    """Set the experts implementation ``config`` reads for this call (its own, not its
    sub-configs': the experts module reads only ``config``)."""
    if _CHOICE_SLOT in vars(config):
        object.__setattr__(config, _CHOICE_SLOT, name)
    else:
        config._experts_implementation = name


def experts_choice(experts: nn.Module | None) -> str | None:
    """The experts implementation transformers runs ``experts`` with (``"grouped_mm"``,
    ``"eager"`` ...: ``experts.config._experts_implementation``, read at each of its forwards),
    or None for experts that do not go through transformers' experts interface."""
    if experts is None or not hasattr(experts, "has_gate"):  # set by @use_experts_implementation
        return None
    return getattr(getattr(experts, "config", None), "_experts_implementation", None)

def _same_tensors_and_children(wrapper: nn.Module, original: nn.Module) -> bool:
    """Whether ``wrapper`` holds ``original``'s own parameters, buffers and children (a child
    wrapped by an :class:`HFFeedForward` counts when that wrapper holds the child's, in
    turn)."""
    for table in ("_parameters", "_buffers"):
        mine = getattr(wrapper, table)
        for name, t in getattr(original, table).items():
            if mine.get(name) is not t:
                return False
    mods = wrapper._modules
    for name, child in original._modules.items():
        held = mods.get(name)
        if held is child:
            continue
        if not (isinstance(held, HFFeedForward) and held.original is child
                and _same_tensors_and_children(held, child)):  # fmt: skip
            return False
    return True


def _default_options(spec: MoESpec) -> bool:
    act = get_activation(spec.activation)
    return tuple(float(v) for _, v in act.options) == tuple(spec.options)
