"""3-D widefield imaging: every plane of the sample contributes, blurred by its own defocus.

A widefield microscope focused at ``z0`` records ``Σ_z object(z) ⊛ PSF(z - z0)``: the in-focus
plane sharply and all other planes as out-of-focus haze. Real "in-focus" widefield images
contain that haze, so training data made from a single plane alone is too clean. When only 2-D
images exist, :func:`pseudo_volume` stacks the image with transformed, dimmer copies of itself at
other depths, which gives haze with realistic statistics (same texture, other positions).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# scipy.fft is imported where it is used, as in .optics (importing the simulator stays quick).
from .camera import as_generator
from .optics import (
    OpticsConfig,
    _float_type,
    _kernel_spectrum,
    _pad_reflect,
    _padded_shape,
    psf_stack,
)

logger = logging.getLogger(__name__)

__all__ = [
    "apply_haze_layer",
    "pseudo_volume",
    "sample_haze_layers",
    "widefield_image",
    "widefield_stack",
]


def _plane_positions(
    n_planes: int, z_step_um: float | None, z_um: Sequence[float] | np.ndarray | None
) -> np.ndarray:
    if (z_step_um is None) == (z_um is None):
        raise ValueError("give exactly one of z_step_um (uniform planes) or z_um (positions)")
    if z_um is not None:
        z = np.asarray(z_um, dtype=np.float64).reshape(-1)
        if z.size != n_planes:
            raise ValueError(
                f"z_um must give one position per plane: volume has {n_planes} planes, "
                f"z_um has {z.size} values"
            )
    else:
        if not np.isfinite(z_step_um) or z_step_um <= 0:
            raise ValueError(f"z_step_um must be a positive number; got {z_step_um!r}")
        z = np.arange(n_planes, dtype=np.float64) * float(z_step_um)
    if not np.all(np.isfinite(z)):
        raise ValueError(f"plane positions must be finite; got {z.tolist()}")
    return z


def widefield_stack(
    volume: np.ndarray,
    optics: OpticsConfig,
    *,
    focus_um: Sequence[float] | np.ndarray,
    z_step_um: float | None = None,
    z_um: Sequence[float] | np.ndarray | None = None,
    warn_truncation: bool = True,
) -> np.ndarray:
    """Widefield images of ``volume`` focused at each of ``focus_um``.

    Parameters
    ----------
    volume : (Z, M, N) array_like
        Object intensity per plane (signal units; non-negative).
    optics : OpticsConfig
        Optics; its ``defocus_um`` is ignored (each plane gets ``z - focus``).
    focus_um : sequence of float
        Focal positions, in the same coordinates as the planes.
    z_step_um, z_um : float or sequence of float
        Plane positions: either uniform (plane ``i`` at ``i * z_step_um``) or explicit.
    warn_truncation : bool
        Warn when far planes need PSFs larger than ``optics.max_size_px`` (they are truncated).

    Returns
    -------
    (F, M, N) ndarray
        float32 for float32 input, float64 otherwise. Total flux of each output equals the
        volume's total flux (up to border effects): the PSFs have unit sum.
    """
    import scipy.fft

    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must have 3 dimensions (Z, M, N); got shape {volume.shape}")
    if volume.dtype.kind not in "uif":
        raise TypeError(f"volume must be a real numeric array; got dtype {volume.dtype}")
    z = _plane_positions(volume.shape[0], z_step_um, z_um)
    focus = np.asarray(focus_um, dtype=np.float64).reshape(-1)
    if focus.size == 0 or not np.all(np.isfinite(focus)):
        raise ValueError(f"focus_um must hold at least one finite value; got {focus.tolist()}")
    dtype = _float_type(volume.dtype)

    # Distinct defoci, rounded to 1 nm so that equal offsets share one PSF.
    offsets = np.round(z[None, :] - focus[:, None], 3)
    unique, inverse = np.unique(offsets, return_inverse=True)
    inverse = inverse.reshape(offsets.shape)
    psfs = psf_stack(optics, unique, warn_truncation=warn_truncation)
    half = (psfs.shape[1] // 2, psfs.shape[2] // 2)
    m, n = volume.shape[1:]
    fft_shape = _padded_shape((m, n), half)
    planes = scipy.fft.rfft2(
        _pad_reflect(volume.astype(dtype, copy=False), half, fft_shape), workers=1
    )
    kernels = [_kernel_spectrum(p.astype(dtype), fft_shape, dtype) for p in psfs]

    out = np.empty((focus.size, m, n), dtype=dtype)
    for f in range(focus.size):
        spectrum = np.zeros_like(planes[0])
        for k in range(z.size):
            spectrum += planes[k] * kernels[inverse[f, k]]
        image = scipy.fft.irfft2(spectrum, s=fft_shape, workers=1)
        out[f] = image[half[0] : half[0] + m, half[1] : half[1] + n]
    return out


def widefield_image(
    volume: np.ndarray,
    optics: OpticsConfig,
    *,
    focus_um: float = 0.0,
    z_step_um: float | None = None,
    z_um: Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """Widefield image of ``volume`` focused at ``focus_um``: ``Σ_z object(z) ⊛ PSF(z - focus)``.

    See :func:`widefield_stack` for the parameters; returns an ``(M, N)`` array.
    """
    return widefield_stack(volume, optics, focus_um=[focus_um], z_step_um=z_step_um, z_um=z_um)[0]


# --------------------------------------------------------------------------------------------
# Pseudo-volumes from 2-D images


def sample_haze_layers(
    rng: np.random.Generator | int | None,
    *,
    n_layers: int,
    distance_um_range: tuple[float, float] = (4.0, 16.0),
    weight_range: tuple[float, float] = (0.1, 0.4),
) -> list[dict[str, Any]]:
    """Draw out-of-focus layer specifications for :func:`pseudo_volume`.

    Each layer is a plain JSON-serialisable dict: ``z_um`` (signed distance from the in-focus
    plane), ``weight`` (brightness relative to the in-focus plane), and the transform that makes
    it look like *other* cells: ``rot90`` (0-3), ``flip`` (bool) and ``shift`` (fractions of the
    image height and width for a periodic roll).
    """
    gen = as_generator(rng)
    if n_layers < 0:
        raise ValueError(f"n_layers must be >= 0; got {n_layers}")
    lo, hi = distance_um_range
    if not 0 <= lo <= hi:
        raise ValueError(f"distance_um_range must satisfy 0 <= low <= high; got {(lo, hi)}")
    wlo, whi = weight_range
    if not 0 <= wlo <= whi:
        raise ValueError(f"weight_range must satisfy 0 <= low <= high; got {(wlo, whi)}")
    layers = []
    for _ in range(int(n_layers)):
        sign = 1.0 if gen.random() < 0.5 else -1.0
        layers.append(
            {
                "z_um": round(sign * float(gen.uniform(lo, hi)), 2),
                "weight": round(float(gen.uniform(wlo, whi)), 4),
                "rot90": int(gen.integers(0, 4)),
                "flip": bool(gen.random() < 0.5),
                "shift": [round(float(gen.random()), 4), round(float(gen.random()), 4)],
            }
        )
    return layers


def apply_haze_layer(image: np.ndarray, layer: Mapping[str, Any]) -> np.ndarray:
    """The object of one haze layer: ``image`` rotated/flipped/rolled and scaled by weight.

    Non-square images are only rotated by 0 or 180 degrees so the shape is kept.
    """
    out = np.asarray(image)
    k = int(layer.get("rot90", 0)) % 4
    if out.shape[-1] != out.shape[-2]:
        k = 2 if k in (1, 2) else 0
    out = np.rot90(out, k, axes=(-2, -1))
    if layer.get("flip", False):
        out = out[..., ::-1]
    fy, fx = layer.get("shift", (0.0, 0.0))
    shift = (round(float(fy) * out.shape[-2]), round(float(fx) * out.shape[-1]))
    out = np.roll(out, shift, axis=(-2, -1))
    return out * float(layer["weight"])


def pseudo_volume(
    image: np.ndarray, layers: Sequence[Mapping[str, Any]]
) -> tuple[np.ndarray, np.ndarray]:
    """Stack ``image`` (at z = 0) with haze layers made from it.

    Parameters
    ----------
    image : (M, N) array_like
        In-focus plane.
    layers : sequence of dict
        From :func:`sample_haze_layers` (or written by hand with the same keys).

    Returns
    -------
    volume : (1 + L, M, N) ndarray
        Plane 0 is ``image``; the others are the transformed copies.
    z_um : (1 + L,) ndarray
        Plane positions in µm (0 for the in-focus plane); pass them to :func:`widefield_image`.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D (M, N); got shape {image.shape}")
    planes = [image] + [apply_haze_layer(image, layer) for layer in layers]
    z = np.array([0.0] + [float(layer["z_um"]) for layer in layers])
    dtype = _float_type(image.dtype)
    return np.stack(planes).astype(dtype, copy=False), z
