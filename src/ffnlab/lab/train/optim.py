"""The lab's optimizers: AdamW, or Muon on the hidden matrices with AdamW on the rest.

``build_optimizer(model, name=..., lr=..., weight_decay=...)`` returns an object with the parts of the
:class:`torch.optim.Optimizer` interface the training loop and the checkpoints use:
``param_groups`` (the loop sets every group's ``lr`` each step), ``zero_grad``, ``step``,
``state_dict`` and ``load_state_dict``.

* ``"adamw"``: :class:`torch.optim.AdamW` (betas 0.9, 0.95), weight decay on matrices only.
* ``"muon"``: :class:`.muon.Muon`, torch's Muon with the Newton-Schulz iteration in float32 on
  CPU (twice as fast as torch's bfloat16 there) and 3-D expert stacks taken matrix by matrix
  (momentum 0.95, Nesterov, five Newton-Schulz steps,
  ``adjust_lr_fn="match_rms_adamw"``, so the AdamW learning rate and weight decay carry over:
  Moonshot's "Muon is Scalable for LLM Training", 2025) on the 2-D weights inside the blocks
  (attention and FFN matrices), and AdamW on the byte and position embeddings (the embedding
  is tied to the output head) and the RMSNorm gains, as modded-nanogpt and Moonshot do.
  On the quick model (dim 64, one layer, batch 32) Muon at lr 6e-3 reaches in 600 steps the
  bits per byte AdamW reaches in 1000 at its best rate (2.25), and 2.10 at lr 0.024; the
  paired spreads between variants over seeds were 0.014-0.019 bpb against AdamW's 0.022-0.031
  (docs/lab.md, "The recipe sweep behind quick").

A mixture of experts keeps its experts as 3-D stacks ``[E, out, in]``: Muon orthogonalises each
expert's matrix on its own (as Moonlight and Kimi K2 train theirs), so a mixture of experts and
the dense FFN it is compared with train with the same optimizer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...errors import UsageError, check_choice
from .muon import Muon

__all__ = ["OPTIMIZERS", "MuonAdamW", "build_optimizer", "muon_parameter_names"]

OPTIMIZERS = ("adamw", "muon")
BETAS = (0.9, 0.95)
MUON_MOMENTUM = 0.95
_EMBEDDINGS = ("tok.", "pos.")


def muon_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters ``"muon"`` gives to Muon: the matrices outside the embeddings,
    2-D weights and the 3-D stacks of a mixture of experts' experts (biases and gains stay
    with AdamW, as do the ``[E, dim]`` stacks of per-expert vectors such as an output norm).

    Raises :class:`UsageError` naming a weight of more than three dimensions.
    """
    names = []
    for name, p in model.named_parameters():
        if p.dim() > 3:
            raise UsageError(f"--optimizer muon: parameter {name} has shape {tuple(p.shape)}; "
                             f"Muon takes matrices and stacks of matrices")
        if name.startswith(_EMBEDDINGS) or p.dim() < 2:
            continue
        if p.dim() == 3 or not _per_expert_vector(name):
            names.append(name)
    return names


def _per_expert_vector(name: str) -> bool:
    """``experts.b1``, ``experts.norm``: one vector per expert stored ``[E, n]``, not a matrix."""
    return ".experts." in f".{name}" and name.rsplit(".", 1)[-1] in ("b1", "b2", "b3", "norm")


class MuonAdamW:
    """Muon on ``muon_params`` and AdamW on ``adamw_groups``, stepped together.

    ``param_groups`` lists Muon's groups, then AdamW's. ``state_dict()`` has the layout of one
    optimizer's (``{"state": {index: ...}, "param_groups": [...]}``, parameters numbered across
    both parts in that order), so checkpoints and the process-group broadcast treat it like
    any :class:`torch.optim.Optimizer`.
    """

    def __init__(self, muon_params: list[nn.Parameter], adamw_groups: list[dict[str, Any]], *,
                 lr: float, weight_decay: float) -> None:
        self.muon = Muon(muon_params, lr=lr, weight_decay=weight_decay,
                                     momentum=MUON_MOMENTUM, nesterov=True,
                                     adjust_lr_fn="match_rms_adamw")
        self.adamw = torch.optim.AdamW(adamw_groups, lr=lr, betas=BETAS)
        self._parts = (self.muon, self.adamw)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for part in self._parts for g in part.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self._parts:
            part.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        for part in self._parts:
            part.step()

    def state_dict(self) -> dict[str, Any]:
        state: dict[int, Any] = {}
        groups: list[dict[str, Any]] = []
        offset = 0
        for part in self._parts:
            sd = part.state_dict()
            for idx, st in sd["state"].items():
                state[idx + offset] = st
            for g in sd["param_groups"]:
                groups.append({**g, "params": [i + offset for i in g["params"]]})
            offset += sum(len(g["params"]) for g in part.param_groups)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"optimizer state has {len(groups)} parameter groups, this optimizer "
                             f"{len(self.param_groups)}")
        offset, start = 0, 0
        for part in self._parts:
            n_groups = len(part.param_groups)
            n_params = sum(len(g["params"]) for g in part.param_groups)
            mine = groups[start:start + n_groups]
            part.load_state_dict({
                "state": {int(i) - offset: st for i, st in state_dict["state"].items()
                          if offset <= int(i) < offset + n_params},
                "param_groups": [{**g, "params": [i - offset for i in g["params"]]} for g in mine],
            })
            offset += n_params
            start += n_groups


def build_optimizer(model: nn.Module, *, name: str, lr: float, weight_decay: float):
    """The optimizer ``name`` (one of :data:`OPTIMIZERS`) for ``model``'s parameters.

    Weight decay applies to matrices only (embeddings included), never to gains.
    """
    check_choice("optimizer", name, OPTIMIZERS)
    named = list(model.named_parameters())
    if name == "adamw":
        decay = [p for _, p in named if p.dim() >= 2]
        no_decay = [p for _, p in named if p.dim() < 2]
        return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=BETAS)
    to_muon = set(muon_parameter_names(model))
    muon = [p for n, p in named if n in to_muon]
    decay = [p for n, p in named if n not in to_muon and p.dim() >= 2]
    no_decay = [p for n, p in named if n not in to_muon and p.dim() < 2]
    return MuonAdamW(muon, [{"params": decay, "weight_decay": weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}],
                     lr=lr, weight_decay=weight_decay)
