"""Plain torch modules called without ``nn.Module.__call__``, where nothing can tell.

At a decoding step an MLP is three matrix-vector products, and each streams megabytes of
weights through the caches, so the Python that runs between them runs cold: after one product of
a 512 x 1408 float32 projection, reading ``x.device.type`` took 12.7 us and an empty call
2.1 us (warm: 0.25 and 0.05 us; idle 2-core Xeon, torch 2.13, 2026-12-07). Every
``nn.Module.__call__`` between the products (``_wrapped_call_impl``, ``_call_impl``,
``forward``, ``__getattr__`` of the weight) pays that price. Calling ``F.linear`` on the weight
of an ``nn.Linear`` computes exactly what calling the module computes, when

* the module's class is exactly ``nn.Linear`` (a subclass, PEFT's LoRA layer, a quantized layer,
  FSDP2's ``FSDPLinear`` may compute anything),
* no hook is registered on it or globally, no instance ``forward`` replaces the class's (as
  accelerate's hooks do), ``module.compile()`` was not called on it,
* and no ``torch.jit.trace`` is recording (which names the modules' scopes).

:func:`direct_mlp` answers those questions on every call (the answers change whenever a user
registers a hook or replaces a module) and calls the modules where one of them says no.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torch.nn.modules.module as _module
from torch import nn

__all__ = ["DirectActivation", "activation_function", "direct_mlp"]


def direct_mlp(
    x: torch.Tensor,
    gate: nn.Module,
    up: nn.Module | None,
    down: nn.Module,
    act: object,
    known: DirectActivation,
) -> torch.Tensor | None:
    """``down(act(gate(x)) [* up(x)])`` for ``x [..., dim]`` without gradients, with ``F.linear``
    in place of the projections' calls and the activation's function in place of its call
    (:class:`DirectActivation`) where nothing could tell; None where a projection must be
    called (not exactly ``nn.Linear``, hooked, a global hook, a ``torch.jit.trace``). Equivalent
    PyTorch::

        a = act(gate(x))
        y = down(a if up is None else a * up(x))

    The checks are written out in this one function: each Python call costs 1.5-2 us here
    (the module docstring); a function per check made a patched Llama's one-token MLP call
    0.98x the original's time, this makes it 0.96x (2 threads).
    """
    if (_module._global_forward_hooks or _module._global_forward_pre_hooks
            or torch._C._get_tracing_state()):  # fmt: skip
        return None
    weights = []
    for mod in (gate, up, down):
        if mod is None:
            weights.append(None)
            continue
        d = mod.__dict__
        if (type(mod) is not nn.Linear or d["_forward_hooks"] or d["_forward_pre_hooks"]
                or "_compiled_call_impl" in d or "forward" in d):  # fmt: skip
            return None
        p = d["_parameters"]
        weights.append((p["weight"], p["bias"]))
    w1, w3, w2 = weights
    fn = known.fn
    if fn is None or act is not known.act or type(act).forward is not known.forward:
        fn = act
    else:
        d = act.__dict__
        if (d["_forward_hooks"] or d["_forward_pre_hooks"] or "_compiled_call_impl" in d
                or "forward" in d or d.get(known.setting) is not known.value):  # fmt: skip
            fn = act
    a = fn(F.linear(x, *w1))
    return F.linear(a if w3 is None else a * F.linear(x, *w3), *w2)


_TANH = "tanh"


def activation_function(act: object) -> tuple[Callable[[torch.Tensor], torch.Tensor], str | None,
                                               object] | None:  # fmt: skip
    """``(fn, setting, value)``: the torch function that activation module ``act``'s class
    ``forward`` calls, for the few classes whose forward is one such call (SiLU, ReLU, GELU of
    ``torch.nn`` and of ``transformers.activations``), and the instance attribute it depends on
    with its value now (the function holds while ``act.setting is value``; None: none), else
    None. Read once, when a wrapper is made."""
    cls = type(act)
    where, name = cls.__module__, cls.__name__
    d = act.__dict__
    if where == "torch.nn.modules.activation":
        if name in ("SiLU", "ReLU") and d.get("inplace") is False:
            return (F.silu if name == "SiLU" else F.relu), "inplace", False
        if name == "GELU" and d.get("approximate") in ("none", _TANH):
            value = d["approximate"]
            return functools.partial(F.gelu, approximate=value), "approximate", value
        return None
    if where != "transformers.activations":
        return None
    if name == "SiLUActivation":
        return F.silu, None, None
    if name in ("GELUActivation", "GELUTanh"):
        fn = d.get("act")  # F.gelu, partial(F.gelu, approximate="tanh"), or Python code
        tanh = (isinstance(fn, functools.partial) and fn.func is F.gelu and not fn.args
                and fn.keywords == {"approximate": _TANH})  # fmt: skip
        if fn is F.gelu or tanh:
            return fn, "act", fn
    return None


class DirectActivation:
    """Calls activation object ``act`` as its class's forward would, without the module call,
    while that stays true.

    Made once per wrapper from the activation object it found (:func:`activation_function`
    names the function, None for others); :func:`direct_mlp` then calls the function while the
    object it is given is the one recorded, its class ``forward`` unchanged and nothing hooked
    on it, else the object.
    """

    __slots__ = ("act", "fn", "forward", "setting", "value")

    def __init__(self, act: object) -> None:
        self.act = act
        found = activation_function(act) if isinstance(act, nn.Module) else None
        self.fn, self.setting, self.value = found if found is not None else (None, None, None)
        self.forward = type(act).forward if self.fn is not None else None
