"""Optics conditioning: what a model may be told about the microscope, and how it listens.

A blind model sees pixels only, yet the user usually knows the pixel size, the numerical
aperture, the emission wavelength and the immersion medium, and those fix the family of
defocus PSFs *in pixel units*: the lateral scale ``λ / (2·NA·pixel)`` (the diffraction limit
in pixels) and the aperture angle ``NA / n``, which sets how fast the blur grows with defocus.
An optics-conditioned network (``MPTConfig(optics_conditioning=True)``) receives them as a
short vector and modulates its feature maps with it (FiLM: a per-channel scale and shift per
U-Net stage).

:func:`optics_vector` is the one place that turns optics into that vector; training (the true
optics of each simulated pair), the engine (the user's optics) and the tests all call it.
Unknown optics (no pixel size or no NA) map to :data:`BLIND_OPTICS`, a fixed vector whose
"known" flag is 0, so a conditioned model keeps a learned default for images whose optics
nobody knows (training gives it the blind vector for a share ``optics_dropout`` of the pairs).

:class:`OpticsFiLM` ends in a zero-initialised linear layer: every scale and shift is exactly 0
until trained, so a conditioned model built from an unconditioned one
(:func:`~napari_mpt_deblur.models.mpt.add_optics_conditioning`) computes the same output.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .._dataclass_io import dataclass_from_dict
from ..simulate.optics import OpticsHints
from .info import optics_conditioning_module

__all__ = [
    "BLIND_OPTICS",
    "DEFAULT_WAVELENGTH_NM",
    "OPTICS_VECTOR_SIZE",
    "OpticsFiLM",
    "as_optics_hints",
    "assume_optics",
    "hints_vector",
    "immersion_for_na",
    "optics_batch",
    "optics_vector",
]

#: Length of :func:`optics_vector`: ``[log lateral PSF scale in px, NA / n, known]``.
OPTICS_VECTOR_SIZE = 3
#: The vector of unknown optics: the model's own default ("blind").
BLIND_OPTICS: tuple[float, float, float] = (0.0, 0.0, 0.0)
#: Emission wavelength assumed when pixel size and NA are known but the wavelength is not: the
#: middle of the green channels the bundled models were trained on (the vector depends on it
#: only through a logarithm: ±100 nm moves it by about ±0.2).
DEFAULT_WAVELENGTH_NM = 520.0
#: Immersion media assumed from the NA when the immersion is not given: air, water, oil.
_MEDIA = (1.0, 1.333, 1.515)


def immersion_for_na(numerical_aperture: float) -> float:
    """The least dense usual medium (air 1.0, water 1.333, oil 1.515) that allows this NA."""
    for index in _MEDIA:
        if numerical_aperture < index:
            return index
    return max(_MEDIA[-1], float(numerical_aperture) + 0.01)


def as_optics_hints(optics: OpticsHints | Mapping[str, Any] | None) -> OpticsHints | None:
    """``optics`` as :class:`~napari_mpt_deblur.simulate.optics.OpticsHints` (validated).

    A mapping uses the hints' field names (``pixel_size_um``, ``numerical_aperture``,
    ``wavelength_nm``, ``immersion_index``; missing keys are unknown); ``None`` stays ``None``.
    """
    if optics is None or isinstance(optics, OpticsHints):
        return optics
    if isinstance(optics, Mapping):
        return dataclass_from_dict(OpticsHints, {k: v for k, v in optics.items() if v is not None})
    raise TypeError(
        "optics must be an OpticsHints, a mapping of pixel_size_um, numerical_aperture, "
        f"wavelength_nm and immersion_index, or None; got {type(optics).__name__}"
    )


def optics_vector(
    pixel_size_um: float | None = None,
    numerical_aperture: float | None = None,
    wavelength_nm: float | None = None,
    immersion_index: float | None = None,
) -> tuple[float, float, float]:
    """The conditioning vector of a microscope: ``[log(λ / (2·NA·pixel)), NA / n, known]``.

    Parameters
    ----------
    pixel_size_um : float or None
        Pixel size in the sample plane, µm.
    numerical_aperture : float or None
        Objective NA.
    wavelength_nm : float or None
        Emission wavelength, nm; unknown: :data:`DEFAULT_WAVELENGTH_NM`.
    immersion_index : float or None
        Immersion refractive index; unknown: :func:`immersion_for_na`.

    Returns
    -------
    tuple of 3 floats
        The natural log of the lateral PSF scale in pixels, the aperture sine ``NA / n`` and
        1.0 ("known"); :data:`BLIND_OPTICS` when pixel size or NA is unknown, since without
        both the PSF's size in pixels is unknown.

    Examples
    --------
    >>> [round(v, 3) for v in optics_vector(0.645, 0.5, 520.0, 1.0)]
    [-0.215, 0.5, 1.0]
    >>> optics_vector(0.645, None)
    (0.0, 0.0, 0.0)
    """
    if pixel_size_um is None or numerical_aperture is None:
        return BLIND_OPTICS
    hints = OpticsHints(pixel_size_um=pixel_size_um, numerical_aperture=numerical_aperture,
                        wavelength_nm=wavelength_nm, immersion_index=immersion_index)
    wavelength = hints.wavelength_nm or DEFAULT_WAVELENGTH_NM
    n = hints.immersion_index or immersion_for_na(hints.numerical_aperture)
    scale_px = wavelength * 1e-3 / (2.0 * hints.numerical_aperture * hints.pixel_size_um)
    return (math.log(scale_px), hints.numerical_aperture / n, 1.0)


def hints_vector(optics: OpticsHints | Mapping[str, Any] | None) -> tuple[float, float, float]:
    """:func:`optics_vector` of hints, a mapping with their field names, or ``None`` (blind)."""
    hints = as_optics_hints(optics)
    if hints is None:
        return BLIND_OPTICS
    return optics_vector(hints.pixel_size_um, hints.numerical_aperture, hints.wavelength_nm,
                         hints.immersion_index)


def optics_batch(optics: Sequence[OpticsHints | Mapping[str, Any] | None], *,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """``(N, OPTICS_VECTOR_SIZE)`` float32 tensor of :func:`hints_vector` per sample.

    A simulation parameter dict (:func:`~napari_mpt_deblur.simulate.sample_parameters`) is a
    mapping with the right keys among others; only the four optics keys are read.
    """
    rows = []
    for item in optics:
        if isinstance(item, Mapping):
            item = {k: item.get(k) for k in OpticsHints.NAMES}
        rows.append(hints_vector(item))
    return torch.tensor(rows, dtype=torch.float32, device=device).reshape(
        len(rows), OPTICS_VECTOR_SIZE)


@contextlib.contextmanager
def assume_optics(net: nn.Module, optics: OpticsHints | Mapping[str, Any] | None
                  ) -> Iterator[tuple[float, float, float]]:
    """Within the block, an optics-conditioned ``net`` called without ``optics`` uses these.

    Fine-tuning adapts a model to one microscope, yet its losses, selection score and previews
    call the network in many places that know nothing of optics. Without this they would train
    and judge it blind while the user later deblurs with the optics given, i.e. through a FiLM
    the fine-tuning never saw. The binding is a plain attribute of every conditioned module
    (``assumed_optics``), not saved with the weights; the previous value is restored on exit,
    so blocks nest. Yields the vector in force (:data:`BLIND_OPTICS` when unknown); a network
    that is not conditioned is left untouched.
    """
    vector = hints_vector(optics)
    modules = [m for m in net.modules() if optics_conditioning_module(m) is not None]
    previous = [getattr(m, "assumed_optics", None) for m in modules]
    for m in modules:
        m.assumed_optics = None if vector == BLIND_OPTICS else vector
    try:
        yield vector
    finally:
        for m, value in zip(modules, previous):
            m.assumed_optics = value


class OpticsFiLM(nn.Module):
    """Optics vector → per-stage, per-channel scale and shift (FiLM), zero at initialisation.

    Parameters
    ----------
    channels : sequence of int
        Channels of each modulated feature map, in the order they are modulated.
    hidden : int
        Width of the MLP's hidden layer.

    ``forward(optics)`` maps ``(N, OPTICS_VECTOR_SIZE)`` to a list of ``(scale, shift)``
    pairs, each ``(N, 1, 1, C)`` for channels-last maps; :meth:`modulate` applies one as
    ``x * (1 + scale) + shift``. The last linear layer starts at zero, so an untrained FiLM
    is the identity, exactly.
    """

    def __init__(self, channels: Sequence[int], hidden: int = 32) -> None:
        super().__init__()
        self.channels = tuple(int(c) for c in channels)
        self.mlp = nn.Sequential(
            nn.Linear(OPTICS_VECTOR_SIZE, hidden),
            nn.GELU(),
            nn.Linear(hidden, 2 * sum(self.channels)),
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, optics: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        params = self.mlp(optics)
        out, start = [], 0
        for c in self.channels:
            scale = params[:, start : start + c]
            shift = params[:, start + c : start + 2 * c]
            out.append((scale[:, None, None, :], shift[:, None, None, :]))
            start += 2 * c
        return out

    @staticmethod
    def modulate(x: torch.Tensor, film: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """``x * (1 + scale) + shift`` on a channels-last ``(N, H, W, C)`` map."""
        scale, shift = film
        return x * (1 + scale.to(x.dtype)) + shift.to(x.dtype)
