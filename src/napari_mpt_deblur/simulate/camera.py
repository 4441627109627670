"""Camera model: photon scaling, shot and read noise, offset, gain, quantisation, saturation.

Images entering the camera are in *signal units*: 1.0 means ``photons_per_unit`` expected
photo-electrons in a pixel (the quantum efficiency is folded into that number). The camera turns
electrons into digital numbers (ADU) as ``offset_adu + gain_adu_per_e * electrons``, rounds, and
clips to ``[0, 2**bit_depth - 1]``. :func:`camera_to_float` maps ADU back to signal units, so
that a noise-free, unsaturated pixel comes back exactly as it went in.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._dataclass_io import ConfigPart, DictRoundTrip

logger = logging.getLogger(__name__)

__all__ = [
    "CameraConfig",
    "apply_camera",
    "as_generator",
    "camera_response",
    "camera_to_float",
]


def as_generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    """Return ``rng`` as a :class:`numpy.random.Generator` (an int or ``None`` seeds a new one).

    Raises
    ------
    TypeError
        For anything else (e.g. the legacy ``RandomState``, whose streams differ).
    """
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, (int, np.integer)) and not isinstance(rng, bool)):
        return np.random.default_rng(rng)
    raise TypeError(
        f"rng must be a numpy.random.Generator, an int seed or None; got {type(rng).__name__}"
    )


@dataclass(frozen=True)
class CameraConfig(DictRoundTrip, ConfigPart):
    """A concrete camera (one draw of the simulator's camera parameters).

    Also the camera part of the evaluation protocol (``EvalConfig.camera``, a
    :class:`~napari_mpt_deblur._dataclass_io.ConfigPart`), which sets its gain from a full-scale
    fraction (:meth:`at_full_scale`).

    Parameters
    ----------
    photons_per_unit : float
        Expected photo-electrons for a pixel of signal value 1.0 (the photon budget).
    read_noise_e : float
        Gaussian read noise, electrons rms.
    offset_adu : float
        Camera offset (bias) added to every pixel, in ADU (≈100-120 for BBBC006).
    gain_adu_per_e : float
        Conversion gain, ADU per electron.
    bit_depth : int
        Bits of the analogue-to-digital converter (8-16); pixels saturate at ``2**bit_depth-1``.
    shot_noise : bool
        Draw Poisson shot noise (switch off only for tests and noise-free references).
    """

    photons_per_unit: float = 1000.0
    read_noise_e: float = 2.0
    offset_adu: float = 100.0
    gain_adu_per_e: float = 1.0
    bit_depth: int = 16
    shot_noise: bool = True

    def __post_init__(self) -> None:
        for name in ("photons_per_unit", "gain_adu_per_e"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite positive number; got {value!r}")
        for name in ("read_noise_e", "offset_adu"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
        if isinstance(self.bit_depth, bool) or not isinstance(self.bit_depth, (int, np.integer)):
            raise TypeError(f"bit_depth must be an integer; got {type(self.bit_depth).__name__}")
        if not 8 <= self.bit_depth <= 16:
            raise ValueError(f"bit_depth must be between 8 and 16; got {self.bit_depth}")
        if self.offset_adu >= self.max_adu:
            raise ValueError(
                f"offset_adu ({self.offset_adu}) must be below the saturation level "
                f"{self.max_adu} of a {self.bit_depth}-bit camera"
            )

    @classmethod
    def at_full_scale(cls, *, photons_per_unit: float, read_noise_e: float, offset_adu: float,
                      bit_depth: int, full_scale_fraction: float,
                      shot_noise: bool = True) -> CameraConfig:
        """The camera whose full scale (signal 1.0) fills ``full_scale_fraction`` of the ADU
        range above the offset.

        The simulator and the evaluation protocol describe a camera by this fraction rather
        than by its gain (the gain follows from it and the photon budget); this is the one
        place that turns one into the other, so a drawn camera and the test protocol's camera
        are the same kind of object, validated alike.
        """
        camera = cls(photons_per_unit=photons_per_unit, read_noise_e=read_noise_e,
                     offset_adu=offset_adu, bit_depth=bit_depth, shot_noise=shot_noise)
        if not _is_number(full_scale_fraction) or not 0 < full_scale_fraction <= 1:
            raise ValueError(
                f"full_scale_fraction must be in (0, 1]; got {full_scale_fraction!r}"
            )
        gain = full_scale_fraction * (camera.max_adu - offset_adu) / photons_per_unit
        return dataclasses.replace(camera, gain_adu_per_e=gain)

    @property
    def max_adu(self) -> int:
        """Saturation value, ``2**bit_depth - 1``."""
        return 2 ** int(self.bit_depth) - 1

    @property
    def adu_per_unit(self) -> float:
        """ADU above offset for signal 1.0 (``photons_per_unit * gain_adu_per_e``)."""
        return float(self.photons_per_unit * self.gain_adu_per_e)

    @property
    def saturation_level(self) -> float:
        """Signal value (in signal units) at which pixels saturate."""
        return (self.max_adu - self.offset_adu) / self.adu_per_unit

    @property
    def dtype(self) -> np.dtype:
        """Smallest unsigned integer type holding ``bit_depth`` bits."""
        return np.dtype(np.uint8) if self.bit_depth <= 8 else np.dtype(np.uint16)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _check_signal(image: Any, name: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.dtype.kind not in "uif":
        raise TypeError(f"{name} must be a real numeric array; got dtype {image.dtype}")
    if image.dtype.kind == "f" and not np.all(np.isfinite(image)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return image


def apply_camera(
    image: np.ndarray, cfg: CameraConfig, rng: np.random.Generator | int | None = None
) -> np.ndarray:
    """Record ``image`` (signal units) with a noisy, quantising, saturating camera.

    Negative input (e.g. FFT round-off after convolution) is treated as zero signal: light
    intensities cannot be negative and Poisson rates must not be.

    Parameters
    ----------
    image : (..., M, N) array_like
        Expected signal in signal units (1.0 = ``cfg.photons_per_unit`` electrons).
    cfg : CameraConfig
        Camera parameters.
    rng : numpy.random.Generator, int or None
        Source of the noise; the same seed gives the same image.

    Returns
    -------
    ndarray of ``cfg.dtype`` (uint8 or uint16)
        Digital numbers in ``[0, 2**bit_depth - 1]``, same shape as ``image``.
    """
    if not isinstance(cfg, CameraConfig):
        raise TypeError(f"cfg must be a CameraConfig; got {type(cfg).__name__}")
    image = _check_signal(image)
    gen = as_generator(rng)
    expected_e = np.maximum(image.astype(np.float64, copy=False), 0.0) * cfg.photons_per_unit
    electrons = gen.poisson(expected_e).astype(np.float64) if cfg.shot_noise else expected_e
    if cfg.read_noise_e > 0:
        electrons = electrons + gen.normal(0.0, cfg.read_noise_e, size=image.shape)
    adu = np.rint(electrons * cfg.gain_adu_per_e + cfg.offset_adu)
    np.clip(adu, 0, cfg.max_adu, out=adu)
    return adu.astype(cfg.dtype)


def camera_response(image: np.ndarray, cfg: CameraConfig) -> np.ndarray:
    """Noise-free camera: expected ADU, clipped at 0 and saturation, not rounded (float64).

    This is the intensity mapping applied to the *sharp* training target, so that target and
    input share offset, gain and saturation but the target carries no noise.
    """
    if not isinstance(cfg, CameraConfig):
        raise TypeError(f"cfg must be a CameraConfig; got {type(cfg).__name__}")
    image = _check_signal(image).astype(np.float64, copy=False)
    adu = np.maximum(image, 0.0) * cfg.adu_per_unit + cfg.offset_adu
    return np.clip(adu, 0.0, float(cfg.max_adu))


def camera_to_float(
    raw: np.ndarray, cfg: CameraConfig, *, dtype: np.dtype | type = np.float32
) -> np.ndarray:
    """Map camera ADU back to signal units: ``(raw - offset_adu) / (photons_per_unit * gain)``.

    The result is an unbiased estimate of the expected signal for unsaturated pixels (noise
    makes dark pixels slightly negative; they are kept so noise statistics stay symmetric).
    """
    if not isinstance(cfg, CameraConfig):
        raise TypeError(f"cfg must be a CameraConfig; got {type(cfg).__name__}")
    raw = _check_signal(raw, "raw")
    out = (raw.astype(np.float64, copy=False) - cfg.offset_adu) / cfg.adu_per_unit
    return out.astype(dtype, copy=False)
