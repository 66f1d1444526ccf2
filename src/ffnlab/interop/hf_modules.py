"""Drop-in replacements for Hugging Face transformers MLP modules, run by ffnlab's FFN op.

Each wrapper takes one MLP *instance* of a transformers model and registers that instance's own
submodules, parameters and buffers (``gate_proj``, ``c_fc``, ``act_fn``, ``ffn_sub_norm`` ...)
under their original names, so

* the parameters are the very same ``nn.Parameter`` objects (training updates the original),
* ``model.state_dict()`` keys do not change (``save_pretrained``/``from_pretrained`` round-trip),
  including a learnable activation's (``act_fn.alpha_p`` of xIELU),
* the wrapper's forward computes the module's function through
  :func:`ffnlab.ops.projections.projected_feed_forward` (as :class:`ffnlab.FeedForward` does)
  with W1/W2/W3 taken from those parameters: the parameters themselves, or views of them
  (a packed ``gate_up_proj`` is split with a slice, ``Conv1D`` weights ``[in, out]`` are
  transposed, a multiplier scales them), so gradients still land on the original parameter; a
  replaced or hooked projection is called instead.

**Speed.** With ``backend="auto"`` a call whose work is too small for the fused op to pay off
(:func:`ffnlab.ops.dispatch.choose`: fewer than 2^20 hidden elements, such as every decoding
step) runs the plain computation through the projection modules, the calls the original module
makes (``down(act(gate(x)) * up(x))``), so a patched model is not slower there; larger calls
(prefill, training) run the fused op. Nothing that does not depend on the input is redone per
call on that path (the hidden width is read at construction).

:class:`HFMLP` covers every MLP that :mod:`ffnlab.interop.recognise` describes with an
:class:`~ffnlab.interop.recognise.MLPSpec`; the BERT pair has its own two wrappers
(:mod:`ffnlab.interop.hf_bert`).
The original module is kept as a plain attribute (not a registered submodule, which would list
every parameter twice) so that :func:`ffnlab.interop.hf.unpatch_hf` can put it back.

Shapes everywhere: input ``[..., dim]``, output ``[..., dim]``; W1/W3 ``[hidden, dim]``,
W2 ``[dim, hidden]`` (after transposing or splitting).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..activations import get_activation
from ..local_shards import tensor_parallel_feed_forward
from ..ops.dispatch import choose, device_type
from ..ops.projections import Weights, projected_feed_forward
from ..ops.reference import middle
from .direct import DirectActivation, direct_mlp
from .recognise import MLPSpec, projection_shape

__all__ = ["HFFeedForward", "HFMLP"]

Activation = str | Callable[[torch.Tensor], torch.Tensor]
"""An ffnlab activation name, or a callable ``[..., hidden] -> [..., hidden]`` (the model's own
activation object)."""


def _rows(x: torch.Tensor) -> int:
    """Rows of ``x [..., dim]``: every leading dim together."""
    return x.numel() // x.shape[-1] if x.dim() and x.shape[-1] else 0


class HFFeedForward(nn.Module):
    """Base class of the wrappers: holds the replaced module and the FFN's settings.

    Args:
        original: the transformers module this wrapper replaces (restored by ``unpatch_hf``).
        activation: (attribute ``ffn_activation``) ffnlab activation name of the W1 branch
            (``"swish"``, ``"gelu_tanh"`` ...), or a callable (the module's own activation
            object) run on the hidden tensor; both run in the fused op, a callable re-run under
            autograd in backward (``backend="triton"`` takes names only: a callable then runs
            through the modules).
        options: the named activation's option values (leaky ReLU's slope).
        backend: ffnlab backend (``"auto"``, ``"reference"``, ``"fused"``, ``"triton"``).
        recompute: what the fused backends keep for backward (``"none"``, ``"activation"``,
            ``"full"``: :mod:`ffnlab.ops.function`), as ``FeedForward``'s ``recompute``.
    """

    #: True for wrappers that count as one patched MLP (the BERT tail does not).
    counts_as_mlp = True
    #: Set by ``patch_hf`` when the projections hold tensor-parallel DTensor weights laid out
    #: as :func:`ffnlab.local_shards.tensor_parallel_mesh` says and the ranks agreed: the fused
    #: op then runs on the local shards with one all-reduce (:mod:`ffnlab.interop.sharded`).
    tensor_parallel = False

    def __init__(
        self,
        original: nn.Module,
        *,
        activation: Activation,
        backend: str,
        options: tuple[float, ...] = (),
        recompute: str = "activation",
    ) -> None:
        super().__init__()
        # Bypass nn.Module.__setattr__: registering either would duplicate parameters.
        self.__dict__["_hf_original"] = original
        self.__dict__["ffn_activation"] = activation
        self.act_options = tuple(options)
        self.backend = backend
        self.recompute = recompute
        #: Hidden units of one call, for the size rule of ``backend="auto"`` (None: unknown,
        #: the fused op always runs). Set by the subclasses that know it.
        self.hidden_dim: int | None = None
        self.train(original.training)

    @property
    def original(self) -> nn.Module:
        """The transformers module this wrapper stands in for."""
        return self.__dict__["_hf_original"]

    def ffn_weights(self) -> Weights:
        """``(w1, w2, w3, b1, b2, b3)`` as ffnlab expects them (w3/biases may be None)."""
        raise NotImplementedError

    def projections(self) -> tuple[nn.Module, ...]:
        """The projection modules whose weights :meth:`ffn_weights` reads."""
        raise NotImplementedError

    def branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(h1, h3)`` by calling the projection modules: ``x [..., dim]`` -> each
        ``[..., hidden]`` (``h3`` None for plain MLPs)."""
        raise NotImplementedError

    def down(self, m: torch.Tensor) -> torch.Tensor:
        """The down projection module's call: ``m [..., hidden]`` -> ``[..., dim]``."""
        raise NotImplementedError

    def module_ffn(self, x: torch.Tensor) -> torch.Tensor:
        """The same FFN computed by calling the projection modules (what runs when one of them
        is replaced, e.g. by a LoRA adapter, or hooked, and for calls too small for the fused
        op: :meth:`plain_size`)."""
        h1, h3 = self.branches(x)
        return self.down(self.plain_middle(h1, h3))

    def own_activation(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The original module's own activation object, which the plain path calls as the
        original does (same kernels, same rounding in half precision, where ffnlab's functions
        compute in float32); None where there is none to call (the activation is then
        :attr:`ffn_activation`)."""
        return None

    def plain_middle(self, h1: torch.Tensor, h3: torch.Tensor | None) -> torch.Tensor:
        """``m = act(h1) [* h3]`` (``[..., hidden]``) as the plain path computes it: with
        :meth:`own_activation` where there is one, else :func:`middle`."""
        act = self.own_activation()
        if act is None:
            return middle(self.ffn_activation, h1, h3, self.act_options)
        a = act(h1)
        return a if h3 is None else a * h3

    def plain_size(self, x: torch.Tensor) -> bool:
        """Whether ``backend="auto"`` runs the plain computation for ``x [..., dim]``: too few
        hidden elements for the fused op to pay off, or no gradient wanted on a CPU
        (:func:`ffnlab.ops.dispatch.choose`)."""
        if self.backend != "auto" or self.hidden_dim is None:
            return False
        grad = torch.is_grad_enabled()
        if not grad and x.is_cpu:
            # choose()'s first rule, without computing its arguments: after a decoding step's
            # matrix-vector products this Python runs cold, and x.device.type alone took 12.7 us
            # of a 200 us call (idle 2-core Xeon, 2026-12-07)
            return True
        return choose("auto", _rows(x), self.hidden_dim, grad=grad,
                      device_type=device_type(x)) == "reference"

    def fused_runs(self) -> bool:
        """Whether the fused op can run this activation with this backend (Triton runs only
        the registry's activations)."""
        return isinstance(self.ffn_activation, str) or self.backend != "triton"

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fused_runs() or self.plain_size(x):
            return self.module_ffn(x)
        if self.tensor_parallel:
            return tensor_parallel_feed_forward(
                x, *self.ffn_weights(), activation=self.ffn_activation, backend=self.backend,
                recompute=self.recompute, options=self.act_options,
            )  # fmt: skip
        return projected_feed_forward(
            x,
            self.projections(),
            self.ffn_weights,
            self.branches,
            self.down,
            activation=self.ffn_activation,
            backend=self.backend,
            recompute=self.recompute,
            options=self.act_options,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., dim]`` -> ``[..., dim]``."""
        return self._ffn(x)

    def extra_repr(self) -> str:
        act = (
            self.ffn_activation
            if isinstance(self.ffn_activation, str)
            else type(self.ffn_activation).__name__
        )
        return (
            f"replaces={type(self.original).__name__}, activation={act!r}, backend={self.backend!r}"
            f", recompute={self.recompute!r}"
        )


def _bias(linear: nn.Module) -> torch.Tensor | None:
    return getattr(linear, "bias", None)


def _weight_of(proj: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(W [out, in], b [out] or None)`` of an ``nn.Linear`` or a ``Conv1D`` (a transposed view)."""
    w = proj.weight
    return (w if isinstance(proj, nn.Linear) else w.t()), _bias(proj)


def _scaled(t: torch.Tensor | None, s: float) -> torch.Tensor | None:
    return t if t is None or s == 1.0 else t * s


class HFMLP(HFFeedForward):
    """Any MLP that an :class:`~ffnlab.interop.recognise.MLPSpec` describes (LLaMA's
    ``down_proj(act(gate_proj(x)) * up_proj(x))``, GPT-2's Conv1D ``c_proj(act(c_fc(x)))``,
    Phi-3's packed ``gate_up_proj``, Falcon-H1's multipliers, BitNet's hidden norm ...).

    Equivalent PyTorch (gated, with the spec's optional steps in brackets)::

        x = [input_norm](x)
        h1 = [gate_transform](F.linear(x, W1, b1) * [gate_scale])
        m = [hidden_norm]([hidden_dropout](act(h1) * F.linear(x, W3, b3)))
        y = [out_dropout]([out_norm](F.linear(m, W2, b2) * [out_scale])) [+ residual]

    Every child, parameter and buffer of the original is registered here under its own name.
    The fused op runs the whole FFN when the spec allows it (:attr:`MLPSpec.fusable`, no active
    hidden dropout, plain projections); otherwise the same steps run through the modules.
    """

    def __init__(self, original: nn.Module, spec: MLPSpec, *, activation: Activation,
                 backend: str, recompute: str = "activation") -> None:  # fmt: skip
        super().__init__(original, activation=activation, backend=backend,
                         options=spec.act_options, recompute=recompute)  # fmt: skip
        self.__dict__["spec"] = spec
        # Read once: whether the named activation also transforms the value branch.
        self.__dict__["_value_transform"] = (
            isinstance(activation, str) and get_activation(activation).value_fn is not None
        )
        for name, child in original.named_children():
            self.add_module(name, child)
        for name, p in original.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in original.named_buffers(recurse=False):
            self.register_buffer(
                name, b, persistent=name not in original._non_persistent_buffers_set
            )
        # Nothing but the projections and the module's own activation object (LLaMA's
        # ``down(act(gate(x)) * up(x))``, GPT-2's ``c_proj(act(c_fc(x)))`` without dropout):
        # the plain path then makes exactly the original's calls (forward).
        steps = (spec.gate_scale, spec.out_scale, spec.hidden_norm, spec.input_norm,
                 spec.out_norm, spec.gate_transform, spec.hidden_dropout, spec.out_dropout)
        self.__dict__["_bare"] = (
            all(v is None for v in steps) and not spec.packed and not spec.residual
            and spec.act_attr is not None and not self.__dict__["_value_transform"]
        )  # fmt: skip
        # The activation object the plain path may call as a function (:mod:`.direct`).
        self.__dict__["_direct_act"] = DirectActivation(
            self.own_activation() if self.__dict__["_bare"] else None
        )
        shape = projection_shape(self._modules[spec.gate])
        if shape is not None:
            self.hidden_dim = shape[1] // 2 if spec.packed else shape[1]

    def own_activation(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The object in the spec's ``act_attr`` (a child replaced on this wrapper counts),
        unless the named activation also transforms the value branch (GPT-OSS's clamp)."""
        name = self.spec.act_attr
        if name is None or self.__dict__["_value_transform"]:
            return None
        own = self._modules.get(name)
        return own if own is not None else getattr(self.original, name)

    def _float(self, name: str | None) -> float:
        return 1.0 if name is None else float(getattr(self.original, name))

    def ffn_weights(self) -> Weights:
        s = self.spec
        w1, b1 = _weight_of(self._modules[s.gate])
        w3 = b3 = None
        if s.packed:
            h = w1.shape[0] // 2
            first, second = (slice(0, h), slice(h, None))
            g, u = (first, second) if s.gate_first else (second, first)
            w1, w3, b1, b3 = (
                w1[g],
                w1[u],
                None if b1 is None else b1[g],
                None if b1 is None else b1[u],
            )
        elif s.up is not None:
            w3, b3 = _weight_of(self._modules[s.up])
        w2, b2 = _weight_of(self._modules[s.down])
        gs, os_ = self._float(s.gate_scale), self._float(s.out_scale)
        return _scaled(w1, gs), _scaled(w2, os_), w3, _scaled(b1, gs), _scaled(b2, os_), b3

    def projections(self) -> tuple[nn.Module, ...]:
        s = self.spec
        return tuple(self._modules[n] for n in (s.gate, s.up, s.down) if n is not None)

    def branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        s = self.spec
        h1 = self._modules[s.gate](x)
        h3 = None
        if s.packed:
            a, b = h1.chunk(2, dim=-1)
            h1, h3 = (a, b) if s.gate_first else (b, a)
        elif s.up is not None:
            h3 = self._modules[s.up](x)
        gs = self._float(s.gate_scale)
        return (h1 if gs == 1.0 else h1 * gs), h3

    def down(self, m: torch.Tensor) -> torch.Tensor:
        proj = self._modules[self.spec.down]
        w = getattr(proj, "weight", None)
        if isinstance(w, torch.Tensor) and w.is_floating_point() and m.dtype != w.dtype:
            m = m.to(w.dtype)  # T5 keeps wo in float32 under half precision and casts first
        y = proj(m)
        os_ = self._float(self.spec.out_scale)
        return y if os_ == 1.0 else y * os_

    def _dropout(self, name: str | None, h: torch.Tensor) -> torch.Tensor:
        if name is None:
            return h
        d = getattr(self.original, name) if name not in self._modules else self._modules[name]
        return (
            d(h) if isinstance(d, nn.Module) else F.dropout(h, p=float(d), training=self.training)
        )

    def _one_dtype(self, x: torch.Tensor) -> bool:
        """Whether every projection weight has ``x``'s dtype (T5 may keep ``wo`` in float32
        under bfloat16: then the module path casts the hidden units as T5 does)."""
        ws = [getattr(p, "weight", None) for p in self.projections()]
        return all(not isinstance(w, torch.Tensor) or w.dtype == x.dtype for w in ws)

    def _hidden_dropout_active(self) -> bool:
        name = self.spec.hidden_dropout
        if name is None or not self.training:
            return False
        d = self._modules.get(name, getattr(self.original, name))
        return (d.p if isinstance(d, nn.Dropout) else float(d)) > 0

    def _bare_calls(self, x: torch.Tensor) -> torch.Tensor:
        """LLaMA's form through the modules, the calls the original makes."""
        s, mods = self.spec, self._modules
        a = self.own_activation()(mods[s.gate](x))
        return mods[s.down](a if s.up is None else a * mods[s.up](x))

    def module_ffn(self, x: torch.Tensor) -> torch.Tensor:
        """The spec's steps through the modules (the Equivalent PyTorch above)."""
        s = self.spec
        h1, h3 = self.branches(x)
        if s.gate_transform is not None:
            h1 = getattr(self.original, s.gate_transform)(h1)
        m = self.plain_middle(h1, h3)
        m = self._dropout(s.hidden_dropout, m)
        if s.hidden_norm is not None:
            m = self._modules[s.hidden_norm](m)
        return self.down(m)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``x [..., dim]`` -> ``[..., dim]`` (plus ``residual [..., dim]`` where the original
        MLP adds it: :attr:`MLPSpec.residual`)."""
        s, d = self.spec, self.__dict__
        if d["_bare"] and d["backend"] == "auto" and d["hidden_dim"] is not None:
            # LLaMA's form ``down(act(gate(x)) [* up(x)])``, with the fewest Python calls on a
            # decoding step (:mod:`.direct`; the first test is choose()'s CPU rule, inlined)
            grad = torch.is_grad_enabled()
            if (not grad and x.is_cpu) or self.plain_size(x):
                if not grad:
                    mods = self._modules
                    act = mods.get(s.act_attr)
                    act = self.own_activation() if act is None else act
                    up = None if s.up is None else mods[s.up]
                    y = direct_mlp(x, mods[s.gate], up, mods[s.down], act, d["_direct_act"])
                    if y is not None:
                        return y
                return self._bare_calls(x)
        if s.input_norm is not None:
            x = self._modules[s.input_norm](x)
        if (
            not self.plain_size(x)  # first: a decoding step skips the other checks
            and s.fusable
            and self.fused_runs()
            and not self._hidden_dropout_active()
            and self._one_dtype(x)
        ):
            y = self._ffn(x)
        else:
            y = self.module_ffn(x)
        if s.out_norm is not None:
            y = self._modules[s.out_norm](y)
        y = self._dropout(s.out_dropout, y)
        return y if residual is None else residual + y
