"""Which parameters a fine-tuning run adapts: all of them, or a small part (faster, safer).

Adapting a trained model to a new microscope changes how blur looks, not what cells look like, so
a small part of the network may be enough, and it trains faster on a CPU: gradients stop where
the first trainable layer is, and fewer weights means less to move away from what was learned.

* ``"all"``: every parameter.
* ``"late"``: the last third of the network's top-level blocks (for MPT and the U-Nets, the
  full-resolution decoder end and the output projection, where fine detail is rebuilt); never
  the optics conditioning of a conditioned model, which feeds every stage.
* ``"norms"``: normalisation weights and every bias (a few thousand numbers; re-scales features).
* ``"optics"``: the optics conditioning only (an optics-conditioned model's FiLM, ~22 k numbers
  for ``mpt-tiny``): how the network reads the microscope, which is what differs on a new one;
  the features it modulates stay as trained.

``benchmarks/finetune_domain_shift.py`` compares them; the default stays whichever wins there.
"""

from __future__ import annotations

from torch import nn

from ..models.info import optics_conditioning_module
from .config import TRAINABLE_CHOICES  # torch-free there, for the CLI's parser

__all__ = ["TRAINABLE_CHOICES", "select_trainable"]

_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d, nn.InstanceNorm2d)


def _late_modules(model: nn.Module) -> list[nn.Module]:
    # The optics conditioning (an optics-conditioned MPT's ``optics_film``) is not a block of
    # the network's path: it modulates every stage, encoder included, so training it would
    # send gradients through the whole network and change how every stage reads the optics.
    conditioning = optics_conditioning_module(model)
    children = [m for m in model.children()
                if m is not conditioning and any(True for _ in m.parameters())]
    if len(children) < 3:
        # a flat model: its last trainable child
        return children[-1:]
    return children[-max(1, len(children) // 3):]


def select_trainable(model: nn.Module, which: str) -> int:
    """Set ``requires_grad`` so that only the ``which`` part trains; returns how many numbers
    train. ``"all"`` re-enables every parameter (undoes an earlier selection)."""
    if which not in TRAINABLE_CHOICES:
        raise ValueError(f"trainable must be one of {', '.join(map(repr, TRAINABLE_CHOICES))};"
                         f" got {which!r}")
    if which == "all":
        chosen = set(model.parameters())
    elif which == "late":
        chosen = {p for m in _late_modules(model) for p in m.parameters()}
    elif which == "optics":
        conditioning = optics_conditioning_module(model)
        if conditioning is None:
            raise ValueError(f"trainable='optics' adapts the optics conditioning, and this "
                             f"{type(model).__name__} has none (it is not optics-conditioned); "
                             "choose 'late', 'norms' or 'all'")
        chosen = set(conditioning.parameters())
    else:
        chosen = set()
        for module in model.modules():
            is_norm = isinstance(module, _NORM_TYPES) or "norm" in type(module).__name__.lower()
            for name, p in module.named_parameters(recurse=False):
                if is_norm or name == "bias":
                    chosen.add(p)
    for p in model.parameters():
        p.requires_grad_(p in chosen)
    if not chosen:
        raise ValueError(f"trainable={which!r} selects no parameter of {type(model).__name__}")
    return sum(p.numel() for p in chosen)
