"""The network inside a bioimage.io package: ours, with the engine's intensity mapping built in.

Why a wrapper at all is in the package notes (:mod:`napari_mpt_deblur.bioimageio`): the spec has
no postprocessing op that inverts another tensor's percentile scaling.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..engine.normalize import IntensityNormalization

__all__ = ["ARCHITECTURE_CALLABLE", "ARCHITECTURE_MODULE", "CONFIG_KEY", "DeblurNetwork"]

#: The key under the description's ``config`` that holds our checkpoint header.
CONFIG_KEY = "napari_mpt_deblur"
ARCHITECTURE_CALLABLE = "DeblurNetwork"
#: The module a description's ``architecture`` imports :class:`DeblurNetwork` from: the
#: package, which re-exports it, so every package exported so far keeps loading.
ARCHITECTURE_MODULE = "napari_mpt_deblur.bioimageio"

_MAX_SAMPLES = 2_000_000  # the engine's percentile subsampling threshold (percentile_range)


class DeblurNetwork(nn.Module):
    """One of our networks with the engine's intensity mapping built in.

    ``forward`` maps a raw ``(N, C, H, W)`` image (``H``, ``W`` multiples of
    ``size_multiple``) to the deblurred image in the input's units: per sample and channel, the
    percentile range of the input maps it to model units and back, as in
    :func:`napari_mpt_deblur.deblur` on a whole plane. bioimage.io tools build it from the
    description's ``architecture.kwargs``, so the arguments are plain data.

    Parameters
    ----------
    arch : {"mpt", "htcsf"}
        Architecture family (the checkpoint header's ``arch``).
    config : dict
        The architecture config (``MPTConfig.to_dict()`` or ``HTCSFConfig.to_dict()``).
    normalization : dict, optional
        :class:`~napari_mpt_deblur.engine.normalize.IntensityNormalization` as a dict.
    """

    def __init__(
        self, arch: str, config: dict[str, Any], normalization: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        from ..models.checkpoint import build_model, config_from_header

        self.net = build_model(config_from_header({"arch": arch, "config": dict(config)}))
        norm = IntensityNormalization.from_dict(normalization)
        if norm.method not in ("percentile", "minmax"):
            raise ValueError(f"unknown normalisation method {norm.method!r}")
        self.method = norm.method
        self.low_percentile = float(norm.low_percentile)
        self.high_percentile = float(norm.high_percentile)

    @property
    def size_multiple(self) -> int:
        return int(self.net.size_multiple)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.intensity_range(x)
        scale = hi - lo
        normed = ((x.double() - lo) * (1.0 / scale)).float()
        y = self.net(normed)
        return (y.double() * scale + lo).float()

    def intensity_range(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lo, hi)`` per sample and channel, shape ``(N, C, 1, 1)``, float64.

        Mirrors :func:`~napari_mpt_deblur.engine.normalize.percentile_range` (numpy's linear
        percentile, stride subsampling of large planes, the same fallbacks for flat images)
        with tensor operations only, so a traced copy works at any image size.
        """
        flat = x.flatten(2).double()
        n_pixels = flat.shape[-1]
        if not torch.jit.is_tracing() and n_pixels > _MAX_SAMPLES:
            flat = flat[..., :: math.ceil(n_pixels / _MAX_SAMPLES)]
        smallest, largest = flat.amin(-1), flat.amax(-1)
        if self.method == "minmax":
            lo, hi = smallest, largest
        else:
            ordered = flat.sort(-1).values
            count = ordered.new_ones(()).expand_as(ordered).sum(-1, keepdim=True)
            lo = _linear_percentile(ordered, count, self.low_percentile)
            hi = _linear_percentile(ordered, count, self.high_percentile)
        flat_range = ~(hi > lo)
        lo = torch.where(flat_range, smallest, lo)
        hi = torch.where(flat_range, largest, hi)
        hi = torch.where(~(hi > lo), lo + (lo.abs() * 1e-6).clamp(min=1.0), hi)
        return lo[..., None, None], hi[..., None, None]


def _linear_percentile(ordered: torch.Tensor, count: torch.Tensor, q: float) -> torch.Tensor:
    """numpy's default (``linear``) percentile of sorted rows, including its lerp rounding."""
    position = (count - 1) * (q / 100.0)
    below = position.floor()
    frac = position - below
    below_i = below.long()
    above_i = torch.minimum(below_i + 1, (count - 1).long())
    a, b = ordered.gather(-1, below_i), ordered.gather(-1, above_i)
    diff = b - a
    value = torch.where(frac >= 0.5, b - diff * (1 - frac), a + diff * frac)
    return value[..., 0]
