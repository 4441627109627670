"""Widefield defocus point-spread functions from the pupil function (scalar Fourier optics).

A point source imaged by an aberration-free objective has a circular pupil of radius ``NA/λ``
in spatial frequency. Moving the focus by ``z`` multiplies the pupil by the propagation phase
``exp(2πi z sqrt((n/λ)² - k²))`` (angular spectrum), and the intensity PSF is the squared modulus
of the pupil's Fourier transform. This is the paraxial-free scalar model of Born & Wolf
(*Principles of Optics*, §8.8) with the depth-dependent index-mismatch term of Gibson & Lanni
(J. Opt. Soc. Am. A 8, 1991) as an option. Polarisation (vectorial effects) and apodisation are
not modelled: for the dry NA 0.4-0.6 optics the project trains for they change the PSF by a few
per cent, far less than the uncertainty in the real defocus.

The PSF is computed on a grid ``oversample`` times finer than the camera pixel and binned, so it
is the PSF *integrated over the pixel area*, which is what a camera records.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

# scipy.fft is imported by the functions that transform: this module holds the optics part of
# every run config (OpticsHints), so the command line's parser imports it and stays quick.
from .._dataclass_io import ConfigPart, DictRoundTrip, renamed_fields

logger = logging.getLogger(__name__)

__all__ = [
    "OpticsConfig",
    "OpticsHints",
    "blur",
    "clear_psf_cache",
    "defocus_psf",
    "depth_of_field_um",
    "geometric_blur_radius_um",
    "psf_cache_info",
    "psf_stack",
]

#: PSFs kept in the LRU cache; each is at most ``max_size_px²`` float64 values (~0.5 MB).
PSF_CACHE_SIZE = 512
#: Minimum pupil radius in frequency samples: coarser pupils are visibly polygonal and shift the
#: Airy rings by several per cent, so the FFT grid is enlarged until the pupil is this well sampled.
_MIN_PUPIL_RADIUS_SAMPLES = 24
#: Diffraction margin around the geometric defocus disc, in units of λ/NA: the Airy / Fresnel
#: ringing outside the disc holds a few per cent of the energy and must not be cut off.
_MARGIN_LAMBDA_OVER_NA = 5.0


@dataclass(frozen=True)
class OpticsConfig(DictRoundTrip):
    """One concrete widefield imaging geometry.

    Parameters
    ----------
    numerical_aperture : float
        Objective NA; must be below ``immersion_index``.
    wavelength_nm : float
        Emission wavelength in vacuum, in nm.
    immersion_index : float
        Refractive index of the objective's immersion medium (1.0 for dry objectives, 1.515 oil).
    sample_index : float or None
        Refractive index of the sample. ``None`` means the same as ``immersion_index`` (no
        mismatch). Only matters together with ``depth_um``.
    depth_um : float
        Depth of the emitter below the coverslip, in µm. With ``sample_index != immersion_index``
        this adds the Gibson-Lanni depth aberration (spherical aberration, and a focal shift that
        is removed to first order so that ``defocus_um = 0`` stays the paraxial best focus).
    pixel_size_um : float
        Camera pixel size referred to the sample plane, in µm.
    defocus_um : float
        Focus displacement (stage movement in the immersion medium), in µm, either sign.
    oversample : int or None
        Odd number of sub-samples per pixel side. ``None`` picks the smallest odd number that
        samples the pupil at Nyquist (at least 3).
    size_px : int or None
        Odd PSF side length in camera pixels. ``None`` sizes it to the geometric defocus disc
        plus a diffraction margin, capped at ``max_size_px``.
    max_size_px : int
        Cap for the automatic size (odd). A PSF that needs more is truncated with a warning.
    """

    numerical_aperture: float = 0.5
    wavelength_nm: float = 520.0
    immersion_index: float = 1.0
    sample_index: float | None = None
    depth_um: float = 0.0
    pixel_size_um: float = 0.645
    defocus_um: float = 0.0
    oversample: int | None = None
    size_px: int | None = None
    max_size_px: int = 255

    def __post_init__(self) -> None:
        for name in ("numerical_aperture", "wavelength_nm", "immersion_index", "pixel_size_um"):
            _check_positive_number(getattr(self, name), name)
        if self.sample_index is not None:
            _check_positive_number(self.sample_index, "sample_index")
        if self.numerical_aperture >= self.immersion_index:
            raise ValueError(
                f"numerical_aperture must be below immersion_index ({self.immersion_index}); "
                f"got {self.numerical_aperture}"
            )
        for name in ("defocus_um", "depth_um"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
                raise TypeError(f"{name} must be a number in µm; got {type(value).__name__}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite; got {value!r}")
        if self.depth_um < 0:
            raise ValueError(f"depth_um must be >= 0 (below the coverslip); got {self.depth_um}")
        if self.oversample is not None:
            _check_odd_int(self.oversample, "oversample", minimum=1)
            if self.oversample <= _min_oversample(self):
                raise ValueError(
                    f"oversample={self.oversample} is too coarse for NA "
                    f"{self.numerical_aperture}, {self.wavelength_nm} nm and "
                    f"{self.pixel_size_um} µm pixels (the pupil would alias); use an odd "
                    f"oversample > {_min_oversample(self):.2f}, or None for automatic"
                )
        if self.size_px is not None:
            _check_odd_int(self.size_px, "size_px", minimum=3)
        _check_odd_int(self.max_size_px, "max_size_px", minimum=3)

    @property
    def effective_sample_index(self) -> float:
        """Sample index, with ``None`` resolved to the immersion index."""
        return self.immersion_index if self.sample_index is None else float(self.sample_index)

    @property
    def wavelength_um(self) -> float:
        """The emission wavelength in µm, the unit of every other length of the PSF model."""
        return self.wavelength_nm * 1e-3

    @property
    def has_index_mismatch(self) -> bool:
        """True when the depth term changes the PSF (it is then not symmetric in ±z)."""
        return self.depth_um > 0 and self.effective_sample_index != self.immersion_index


@renamed_fields(refractive_index="immersion_index")
@dataclass(frozen=True)
class OpticsHints(ConfigPart):
    """The shared optics part: what is known of a microscope (``None``: unknown).

    The fields of :class:`OpticsConfig` that describe the instrument rather than one PSF, under
    the same names. Fine-tuning's optical hints (``FinetuneConfig.optics``, ``None``: the
    model's own optics) and the evaluation protocol's objective (``EvalConfig.optics``, always
    given, no wavelength) are this part, their fields read and written flat
    (:func:`~napari_mpt_deblur._dataclass_io.composed_of_parts`). ``refractive_index``, the
    hints' name before the immersion index had one name everywhere, still loads
    (``DeprecationWarning``).

    Attributes
    ----------
    pixel_size_um, numerical_aperture, wavelength_nm, immersion_index : float or None
        Pixel size in the sample, objective NA, emission wavelength, immersion index; the NA
        must be below the immersion index when both are given.
    """

    pixel_size_um: float | None = None
    numerical_aperture: float | None = None
    wavelength_nm: float | None = None
    immersion_index: float | None = None

    NAMES: ClassVar[tuple[str, ...]] = ("pixel_size_um", "numerical_aperture", "wavelength_nm",
                                        "immersion_index")

    def __post_init__(self) -> None:
        for name in self.NAMES:
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                  or not math.isfinite(v) or not v > 0):
                raise ValueError(f"{name} must be a positive number or None; got {v!r}")
        na, n = self.numerical_aperture, self.immersion_index
        if na is not None and n is not None and na >= n:
            raise ValueError(
                f"numerical_aperture ({na}) must be below immersion_index ({n}): pass the "
                "immersion index (e.g. 1.515 for oil) with a high NA"
            )

    @property
    def has_psf(self) -> bool:
        """Whether pixel size and NA are both given (enough to simulate the user's PSF)."""
        return self.pixel_size_um is not None and self.numerical_aperture is not None


def _check_positive_number(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number; got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite positive number; got {value!r}")


def _check_odd_int(value: Any, name: str, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an odd integer; got {type(value).__name__}")
    if value < minimum or value % 2 == 0:
        raise ValueError(f"{name} must be an odd integer >= {minimum}; got {value}")


def geometric_blur_radius_um(cfg: OpticsConfig) -> float:
    """Radius of the geometric-optics defocus disc, ``|z|·tan(asin(NA/n))``, in µm.

    For large defocus the diffraction PSF approaches a uniform disc of this radius; it sizes the
    PSF array and is the physics check for the defocus model.
    """
    theta = math.asin(cfg.numerical_aperture / cfg.immersion_index)
    return abs(cfg.defocus_um) * math.tan(theta)


def depth_of_field_um(*, numerical_aperture: float, wavelength_nm: float,
                      immersion_index: float = 1.0) -> float:
    """Wave-optical axial depth of field ``λ·n / NA²``, in µm.

    The unit in which defocus blur carries over between objectives (1 µm at NA 1.4 oil blurs
    about as much as 5 µm at NA 0.5 dry): re-blur kernels for EFCR are a few depths of field
    deep, and a model's training defocus range moves to a user's optics in these units. The
    arguments are keyword-only because two earlier copies took them in different orders.
    """
    if not 0 < numerical_aperture < immersion_index:
        raise ValueError(
            f"numerical_aperture must be in (0, immersion_index={immersion_index}); got "
            f"{numerical_aperture!r}"
        )
    return wavelength_nm * 1e-3 * immersion_index / numerical_aperture**2


def _min_oversample(cfg: OpticsConfig) -> float:
    """Sub-samples per pixel below which the pupil (radius NA/λ) aliases on the fine grid."""
    return 2.0 * cfg.pixel_size_um * cfg.numerical_aperture / cfg.wavelength_um


def _auto_oversample(cfg: OpticsConfig) -> int:
    needed = _min_oversample(cfg) * 1.05
    if geometric_blur_radius_um(cfg) < 2 * cfg.pixel_size_um:
        # Near focus the PSF spans a few pixels and the pixel integral needs the intensity
        # (band limit 2·NA/λ) sampled at Nyquist: 3 sub-samples leave ~6 % error at NA 0.6,
        # 0.645 µm/px, 5 leave < 2 %. Wide PSFs are smooth and need only the pupil to fit.
        needed = max(needed, 2.0 * _min_oversample(cfg))
    else:
        needed = max(needed, 3.0)
    s = max(1, math.ceil(needed))
    return s if s % 2 == 1 else s + 1


def _auto_size(cfg: OpticsConfig, *, warn: bool = True) -> int:
    wavelength_um = cfg.wavelength_um
    radius_um = 1.1 * geometric_blur_radius_um(cfg)
    if cfg.has_index_mismatch:
        # Crude bound on the extra spread of the depth aberration (it is removed to first order).
        theta_s = math.asin(min(cfg.numerical_aperture / cfg.effective_sample_index, 0.99))
        radius_um += 0.5 * cfg.depth_um * math.tan(theta_s)
    radius_um += _MARGIN_LAMBDA_OVER_NA * wavelength_um / cfg.numerical_aperture
    half = math.ceil(radius_um / cfg.pixel_size_um) + 2
    size = 2 * half + 1
    if size > cfg.max_size_px:
        (logger.warning if warn else logger.debug)(
            "defocus PSF needs %d px but max_size_px is %d: truncating (defocus %.2f µm, "
            "NA %.3f, pixel %.3f µm)",
            size,
            cfg.max_size_px,
            cfg.defocus_um,
            cfg.numerical_aperture,
            cfg.pixel_size_um,
        )
        size = cfg.max_size_px
    return size


def _resolved(cfg: OpticsConfig) -> OpticsConfig:
    """Fill in automatic oversample/size and canonicalise the sign where it cannot matter."""
    changes: dict[str, Any] = {}
    if cfg.oversample is None:
        changes["oversample"] = _auto_oversample(cfg)
    if cfg.size_px is None:
        changes["size_px"] = _auto_size(cfg)
    if not cfg.has_index_mismatch:
        # Without index mismatch the scalar PSF is exactly symmetric in ±z: share cache entries.
        changes["defocus_um"] = abs(float(cfg.defocus_um))
        changes["sample_index"] = None
        changes["depth_um"] = 0.0
    return dataclasses.replace(cfg, **changes) if changes else cfg


@functools.lru_cache(maxsize=PSF_CACHE_SIZE)
def _cached_psf(cfg: OpticsConfig) -> np.ndarray:
    psf = _compute_psf(cfg)
    psf.setflags(write=False)
    return psf


def _compute_psf(cfg: OpticsConfig) -> np.ndarray:
    import scipy.fft

    s, size = int(cfg.oversample or 1), int(cfg.size_px or 1)  # both set by _resolved
    wavelength_um = cfg.wavelength_um
    dx = cfg.pixel_size_um / s
    n_fine = size * s
    k_max = cfg.numerical_aperture / wavelength_um
    # Grow the FFT grid (finer frequency sampling) until the pupil is well resolved.
    n_fft = max(n_fine, math.ceil(2 * _MIN_PUPIL_RADIUS_SAMPLES / (k_max * dx)))
    n_fft = scipy.fft.next_fast_len(n_fft)

    freqs = scipy.fft.fftfreq(n_fft, d=dx)
    # Only the rows/columns that touch the pupil are non-zero: build the pupil on that band.
    band = np.flatnonzero(np.abs(freqs) <= k_max)
    ky = freqs[band][:, None]
    kx = freqs[band][None, :]
    k2 = ky * ky + kx * kx
    inside = k2 <= k_max * k_max

    n_i = cfg.immersion_index
    kz_i = np.sqrt(np.maximum((n_i / wavelength_um) ** 2 - k2, 0.0))
    # Piston (k = 0 phase) removed: it does not change the intensity and keeps phases small.
    phase = (2 * np.pi * cfg.defocus_um) * (kz_i - n_i / wavelength_um)
    pupil = np.where(inside, np.exp(1j * phase), 0.0)
    if cfg.has_index_mismatch:
        n_s = cfg.effective_sample_index
        kz_s = np.sqrt(((n_s / wavelength_um) ** 2 - k2).astype(np.complex128))
        # Emitter at depth d in the sample; the (n_i/n_s)-scaled immersion term refocuses it to
        # first order so only the depth aberration remains. Evanescent (k > n_s/λ) components
        # decay through the imaginary kz_s.
        mismatch = cfg.depth_um * (
            (kz_s - n_s / wavelength_um) - (n_i / n_s) * (kz_i - n_i / wavelength_um)
        )
        pupil = pupil * np.exp(2j * np.pi * mismatch)

    full = np.zeros((n_fft, n_fft), dtype=np.complex128)
    full[np.ix_(band, band)] = pupil
    field = scipy.fft.ifft2(full, workers=1)

    # Fine-grid samples centred on the central camera pixel's centre (s odd, size odd).
    offsets = np.arange(n_fine) - (n_fine - 1) // 2
    index = offsets % n_fft
    crop = field[np.ix_(index, index)]
    intensity = crop.real**2 + crop.imag**2
    binned = intensity.reshape(size, s, size, s).sum(axis=(1, 3))
    total = binned.sum()
    if not np.isfinite(total) or total <= 0:  # pragma: no cover - defensive
        raise ValueError(f"PSF computation failed for {cfg}")
    return binned / total


def defocus_psf(cfg: OpticsConfig, *, dtype: np.dtype | type = np.float64) -> np.ndarray:
    """Intensity PSF of a defocused widefield microscope, integrated over camera pixels.

    Parameters
    ----------
    cfg : OpticsConfig
        Optics and defocus. Results are cached by value (LRU), so callers that draw random
        parameters should quantise them (e.g. defocus to 0.25 µm) to get cache hits.
    dtype : numpy dtype
        ``float64`` (default) or ``float32``.

    Returns
    -------
    (K, K) ndarray
        Unit-sum PSF, ``K`` odd, centred on the middle pixel. A fresh, writable copy.

    Raises
    ------
    TypeError
        If ``cfg`` is not an :class:`OpticsConfig` or ``dtype`` is not a float type.

    Examples
    --------
    >>> psf = defocus_psf(OpticsConfig(numerical_aperture=0.5, defocus_um=8.0))
    >>> psf.shape[0] % 2, round(float(psf.sum()), 6)
    (1, 1.0)
    """
    if not isinstance(cfg, OpticsConfig):
        raise TypeError(f"cfg must be an OpticsConfig; got {type(cfg).__name__}")
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype must be float32 or float64; got {dtype}")
    psf = _cached_psf(_resolved(cfg))
    out = psf.astype(dtype, copy=True)
    if dtype != np.float64:
        out /= out.sum(dtype=np.float64)
    return out


def psf_stack(
    cfg: OpticsConfig,
    z_um_values: Sequence[float] | np.ndarray,
    *,
    warn_truncation: bool = True,
) -> np.ndarray:
    """PSFs for several defocus values on one common grid (for 3-D imaging and PSF banks).

    Parameters
    ----------
    cfg : OpticsConfig
        Optics; its ``defocus_um`` is ignored.
    z_um_values : sequence of float
        Defocus values in µm.
    warn_truncation : bool
        Log a warning when the widest PSF exceeds ``cfg.max_size_px`` (a debug message
        otherwise, for callers such as haze layers where truncating faint tails is harmless).

    Returns
    -------
    (Z, K, K) float64 ndarray
        Each slice has unit sum. ``K`` is ``cfg.size_px`` or the automatic size for the
        largest ``|z|``, so every slice is on the same grid.
    """
    z = np.asarray(z_um_values, dtype=np.float64).reshape(-1)
    if z.size == 0:
        raise ValueError("z_um_values must contain at least one defocus value; got none")
    if not np.all(np.isfinite(z)):
        raise ValueError(f"z_um_values must be finite; got {z.tolist()}")
    size = cfg.size_px
    if size is None:
        widest = dataclasses.replace(cfg, defocus_um=float(np.max(np.abs(z))))
        size = _auto_size(widest, warn=warn_truncation)
    return np.stack(
        [defocus_psf(dataclasses.replace(cfg, defocus_um=float(v), size_px=size)) for v in z]
    )


def clear_psf_cache() -> None:
    """Drop all cached PSFs (frees memory after a large parameter sweep)."""
    _cached_psf.cache_clear()


def psf_cache_info() -> Any:
    """``functools`` cache statistics (hits, misses, maxsize, currsize) of the PSF cache."""
    return _cached_psf.cache_info()


# --------------------------------------------------------------------------------------------
# Convolution


def _float_type(dtype: np.dtype) -> np.dtype:
    """float32 stays float32; everything else computes in float64 (skimage's policy)."""
    return np.dtype(np.float32) if dtype == np.float32 else np.dtype(np.float64)


def _check_psf(psf: Any) -> np.ndarray:
    psf = np.asarray(psf)
    if psf.ndim != 2 or psf.shape[0] % 2 == 0 or psf.shape[1] % 2 == 0:
        raise ValueError(f"psf must be a 2-D array with odd side lengths; got shape {psf.shape}")
    if psf.dtype.kind not in "uif":
        raise TypeError(f"psf must be a real-valued array; got dtype {psf.dtype}")
    if not np.all(np.isfinite(psf)):
        raise ValueError("psf contains NaN or infinite values")
    return psf


def _padded_shape(shape: tuple[int, int], half: tuple[int, int]) -> tuple[int, int]:
    import scipy.fft

    return tuple(scipy.fft.next_fast_len(n + 2 * h, real=True) for n, h in zip(shape, half))  # type: ignore[return-value]


def _pad_reflect(
    image: np.ndarray, half: tuple[int, int], fft_shape: tuple[int, int]
) -> np.ndarray:
    """Reflect-pad the last two axes by ``half`` before and up to ``fft_shape`` after."""
    pads = [(0, 0)] * (image.ndim - 2)
    for n, h, total in zip(image.shape[-2:], half, fft_shape):
        pads.append((h, total - n - h))
    # 'symmetric' (edge sample repeated) works for any pad width and any image size.
    return np.pad(image, pads, mode="symmetric")


def _kernel_spectrum(psf: np.ndarray, fft_shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    """rfft2 of the PSF placed with its centre at the origin of a periodic ``fft_shape`` grid."""
    import scipy.fft

    ky, kx = psf.shape
    kernel = np.zeros(fft_shape, dtype=dtype)
    kernel[:ky, :kx] = psf
    kernel = np.roll(kernel, (-(ky // 2), -(kx // 2)), axis=(0, 1))
    return scipy.fft.rfft2(kernel, workers=1)


def blur(image: np.ndarray, psf: np.ndarray) -> np.ndarray:
    """Convolve the last two axes of ``image`` with ``psf`` (FFT, mirror-padded borders).

    Mirror padding makes the border behave like the continuation of the sample instead of a dark
    frame, so a unit-sum PSF preserves the image mean (exactly for constant images, up to border
    effects otherwise) and introduces no edge darkening a model could learn from.

    Parameters
    ----------
    image : ([..., ] M, N) ndarray
        Image or stack of images (leading axes are broadcast over).
    psf : (K, L) ndarray
        Odd-sized kernel, centred; normally unit-sum (it is used as given).

    Returns
    -------
    ([..., ] M, N) ndarray
        float32 for float32 input, float64 otherwise.
    """
    import scipy.fft

    image = np.asarray(image)
    if image.ndim < 2:
        raise ValueError(f"image must have at least 2 dimensions (M, N); got shape {image.shape}")
    if image.dtype.kind not in "uifb" or image.dtype.kind == "b":
        raise TypeError(f"image must be a real numeric array; got dtype {image.dtype}")
    psf = _check_psf(psf)
    dtype = _float_type(image.dtype)
    half = (psf.shape[0] // 2, psf.shape[1] // 2)
    m, n = image.shape[-2:]
    fft_shape = _padded_shape((m, n), half)
    padded = _pad_reflect(image.astype(dtype, copy=False), half, fft_shape)
    spectrum = scipy.fft.rfft2(padded, workers=1) * _kernel_spectrum(
        psf.astype(dtype, copy=False), fft_shape, dtype
    )
    out = scipy.fft.irfft2(spectrum, s=fft_shape, workers=1)
    out = out[..., half[0] : half[0] + m, half[1] : half[1] + n]
    return np.ascontiguousarray(out, dtype=dtype)
