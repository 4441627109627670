"""Evaluation harness: PSNR and SSIM per defocus level on the project's test set.

Every quality number the project reports comes from :func:`evaluate`, so that the docs, the
CLI (``mpt-deblur evaluate``) and ``benchmarks/eval_quality.py`` cannot disagree.

Protocol
--------
* **Simulated defocus.** Each real in-focus eval image (``eval/bbbc006_w1_infocus``, Hoechst,
  460 nm; ``eval/bbbc006_w2_infocus``, actin, 620 nm) goes through the project's microscope
  simulator (:func:`napari_mpt_deblur.simulate.make_pair`) at each fixed defocus level with one
  fixed objective (NA 0.5, dry, 0.645 µm/px), one fixed camera (1500 photo-electrons at full
  scale, 4 e⁻ read noise, offset 110 ADU, 12 bit) and a camera-noise seed derived from the seed,
  the image name and the level. Subsets (``--levels``, ``--max-images``) therefore reproduce the
  same pairs as the full run.
* **Methods.** The blurred input itself, Richardson–Lucy with the true (simulated) PSF, and each
  model through the inference engine (:func:`napari_mpt_deblur.engine.predict.deblur`).
* **Richardson–Lucy.** ``skimage.restoration.richardson_lucy`` with ``clip=False``, on the
  image shifted to be non-negative (minus its minimum) and mirror-padded by the PSF radius (the
  simulator mirrors borders too, so zero padding would add edge artefacts that are not RL's
  fault). Its only parameter, the iteration count, is chosen per emission wavelength and
  defocus level on ``val/`` (never on ``eval/``) by :func:`tune_richardson_lucy`, and cached in
  a JSON file so the table is reproducible.
* **Metrics.** :func:`napari_mpt_deblur.metrics.psnr` / :func:`~napari_mpt_deblur.metrics.ssim`:
  both images normalised by the sharp reference's min-max range.
* **Real pair.** BBBC006 a01 site 1 w1 at z=00 (32 µm below focus) against z=16 (in focus). The
  two recordings have different intensity scales, so every method's output (the blurred input
  included) is mapped onto the in-focus image by a least-squares affine fit (:func:`fit_affine`)
  before scoring. The true PSF is unknown there; RL uses the simulator's PSF at NA 0.5, 460 nm
  and the nominal 32 µm.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import math
import os
import platform
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from ._dataclass_io import dataclass_from_dict, dataclass_to_dict
from .metrics import psnr, ssim

logger = logging.getLogger(__name__)

__all__ = [
    "BLURRED",
    "EVAL_REGIMES",
    "IMAGE_SETS",
    "REAL_PAIR_FOLDER",
    "RICHARDSON_LUCY",
    "Ensembled",
    "EvalConfig",
    "EvalResult",
    "ImageSet",
    "RLTuning",
    "Score",
    "eval_config",
    "evaluate",
    "fit_affine",
    "model_columns",
    "noise_rng",
    "read_plane",
    "richardson_lucy_deconvolve",
    "save_example_figure",
    "simulation_params",
    "split_views",
    "to_markdown",
    "tune_richardson_lucy",
]

#: Method names of the two built-in baselines (also the column titles of the table).
BLURRED = "blurred input"
RICHARDSON_LUCY = "Richardson–Lucy (true PSF)"
#: Column title of RL on the real pair, whose true PSF is unknown.
RICHARDSON_LUCY_REAL = "Richardson–Lucy (simulated PSF)"
#: Folder of ``eval/`` holding the real defocus pair.
REAL_PAIR_FOLDER = "bbbc006_real_pair"
#: Iteration counts tried by :func:`tune_richardson_lucy` (up to ``EvalConfig.rl_max_iter``).
RL_CANDIDATES = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100, 125, 150,
                 200, 250, 300)  # fmt: skip
_RL_PATIENCE = 3  # candidates in a row below the best before tuning stops early
_CACHE_FORMAT = 1
_IMAGE_SUFFIXES = (".tif", ".tiff", ".png")


@dataclass(frozen=True)
class ImageSet:
    """One folder of real in-focus eval images and the emission it was recorded at.

    Parameters
    ----------
    folder : str
        Folder name inside the eval root.
    wavelength_nm : float
        Emission wavelength used to simulate its defocus.
    description : str
        Label for the table.
    """

    folder: str
    wavelength_nm: float
    description: str

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dictionary."""
        return dataclasses.asdict(self)


#: The eval image sets by short name (data/README.md).
IMAGE_SETS: dict[str, ImageSet] = {
    "w1": ImageSet("bbbc006_w1_infocus", 460.0, "BBBC006 w1, Hoechst (nuclei)"),
    "w2": ImageSet("bbbc006_w2_infocus", 620.0, "BBBC006 w2, phalloidin (actin)"),
}


def _positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number; got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite positive number; got {value!r}")
    return float(value)


def _non_negative(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number; got {type(value).__name__}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    return float(value)


def _optional_count(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer or None; got {value!r}")
    return int(value)


@dataclass(frozen=True)
class EvalConfig:
    """Everything that fixes the evaluation table (recorded in ``results.json``).

    Parameters
    ----------
    eval_dir : str
        The test-set root (``../shared/data/eval``): image-set folders and the real pair.
    val_dir : str
        Validation images, the only data Richardson–Lucy is tuned on.
    sets : tuple of str
        Keys of :data:`IMAGE_SETS` to evaluate.
    levels_um : tuple of float
        Defocus levels, µm (exact: the nominal-to-effective defocus scale is 1). 0 is the
        in-focus level (camera noise only): a deblurrer must leave a sharp image as it is.
    numerical_aperture, immersion_index, pixel_size_um : float
        The simulated objective (dry, 20×-like) and camera pixel in the sample plane.
    photons_per_unit : float
        Photo-electrons at the source's full scale (its 99.9th percentile): the photon budget.
    read_noise_e : float
        Read noise, electrons rms.
    offset_adu : float
        Camera offset, ADU.
    bit_depth : int
        ADC bits.
    full_scale_fraction : float
        Fraction of the ADU range above offset used by full scale (sets the gain).
    source_percentiles : (float, float)
        Percentiles of the whole source image mapped to 0 and 1.
    seed : int
        Base seed of the camera noise.
    crop_px : int, optional
        Evaluate the central ``crop_px`` × ``crop_px`` region; ``None`` uses whole images.
    max_images : int, optional
        Use only the first N images (sorted by name) of each set, for quick runs.
    real_pair : bool
        Also score the real BBBC006 defocus pair.
    real_pair_defocus_um, real_pair_wavelength_nm : float
        Optics of the real pair, for its Richardson–Lucy PSF.
    rl_max_iter : int
        Largest Richardson–Lucy iteration count tried when tuning.
    rl_criterion : {"psnr", "ssim"}
        What tuning maximises (mean over validation images).
    example_crop_px : int
        Side of the crops in the example figure.
    device : str
        Device for the models (``"auto"``, ``"cpu"``, ``"cuda"``...).
    """

    eval_dir: str = "../shared/data/eval"
    val_dir: str = "../shared/data/val"
    sets: tuple[str, ...] = ("w1", "w2")
    levels_um: tuple[float, ...] = (0.0, 2.0, 4.0, 8.0, 16.0, 24.0)
    numerical_aperture: float = 0.5
    immersion_index: float = 1.0
    pixel_size_um: float = 0.645
    photons_per_unit: float = 1500.0
    read_noise_e: float = 4.0
    offset_adu: float = 110.0
    bit_depth: int = 12
    full_scale_fraction: float = 0.5
    source_percentiles: tuple[float, float] = (0.5, 99.9)
    seed: int = 0
    crop_px: int | None = None
    max_images: int | None = None
    real_pair: bool = True
    real_pair_defocus_um: float = 32.0
    real_pair_wavelength_nm: float = 460.0
    rl_max_iter: int = 100
    rl_criterion: str = "psnr"
    example_crop_px: int = 160
    device: str = "auto"

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("eval_dir", os.fspath(self.eval_dir))
        set_("val_dir", os.fspath(self.val_dir))
        sets = (self.sets,) if isinstance(self.sets, str) else tuple(self.sets)
        unknown = [s for s in sets if s not in IMAGE_SETS]
        if not sets or unknown:
            raise ValueError(
                f"sets must be a non-empty selection of {', '.join(map(repr, IMAGE_SETS))}; "
                f"got {self.sets!r}"
            )
        set_("sets", tuple(dict.fromkeys(sets)))
        levels = tuple(
            _non_negative(v, "levels_um") for v in np.atleast_1d(self.levels_um).tolist()
        )
        if not levels:
            raise ValueError("levels_um must hold at least one defocus level")
        set_("levels_um", tuple(dict.fromkeys(levels)))
        for name in ("numerical_aperture", "immersion_index", "pixel_size_um",
                     "photons_per_unit", "full_scale_fraction", "real_pair_defocus_um",
                     "real_pair_wavelength_nm"):  # fmt: skip
            set_(name, _positive(getattr(self, name), name))
        if self.numerical_aperture >= self.immersion_index:
            raise ValueError(
                f"numerical_aperture ({self.numerical_aperture}) must be below immersion_index "
                f"({self.immersion_index})"
            )
        if self.full_scale_fraction > 1:
            raise ValueError(
                f"full_scale_fraction must be in (0, 1]; got {self.full_scale_fraction}"
            )
        for name in ("read_noise_e", "offset_adu"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
            set_(name, float(value))
        if isinstance(self.bit_depth, bool) or self.bit_depth not in range(8, 17):
            raise ValueError(f"bit_depth must be an integer in 8..16; got {self.bit_depth!r}")
        if self.offset_adu >= 2**self.bit_depth - 1:
            raise ValueError(
                f"offset_adu ({self.offset_adu}) leaves no range on a {self.bit_depth}-bit camera"
            )
        lo, hi = (float(v) for v in self.source_percentiles)
        if not 0 <= lo < hi <= 100:
            raise ValueError(
                f"source_percentiles must be (low, high) with 0 <= low < high <= 100; "
                f"got {self.source_percentiles!r}"
            )
        set_("source_percentiles", (lo, hi))
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise TypeError(f"seed must be an integer; got {type(self.seed).__name__}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0; got {self.seed}")
        set_("crop_px", _optional_count(self.crop_px, "crop_px"))
        set_("max_images", _optional_count(self.max_images, "max_images"))
        set_("rl_max_iter", _optional_count(self.rl_max_iter, "rl_max_iter"))
        if self.rl_max_iter is None:
            raise ValueError("rl_max_iter must be a positive integer; got None")
        set_("example_crop_px", _optional_count(self.example_crop_px, "example_crop_px"))
        if self.example_crop_px is None:
            raise ValueError("example_crop_px must be a positive integer; got None")
        if self.rl_criterion not in ("psnr", "ssim"):
            raise ValueError(f"rl_criterion must be 'psnr' or 'ssim'; got {self.rl_criterion!r}")
        set_("real_pair", bool(self.real_pair))

    @property
    def gain_adu_per_e(self) -> float:
        """Camera gain implied by ``full_scale_fraction`` and the photon budget."""
        return self.full_scale_fraction * (2**self.bit_depth - 1 - self.offset_adu) / (
            self.photons_per_unit
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict (tuples become lists)."""
        return dataclass_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalConfig:
        """Inverse of :meth:`to_dict`, also for YAML: unknown keys and lossy values raise
        ``ValueError`` naming them."""
        return dataclass_from_dict(cls, data)

    def replace(self, **overrides: Any) -> EvalConfig:
        """Copy with some fields replaced."""
        return dataclasses.replace(self, **overrides)


#: The microscopes the test set is simulated through, by name. "20x" is the training regime
#: (BBBC006: dry NA 0.5, 0.645 µm pixels, 0-24 µm). "oil-1.4" puts the same eval images behind a
#: high-NA oil objective sampled at 0.1 µm, where a micrometre of defocus is already severe: a
#: model trained on 20x data meets PSFs it has never seen there. The real pair was recorded at
#: 20x, so it belongs to that regime only.
EVAL_REGIMES: dict[str, dict[str, Any]] = {
    "20x": {},
    "oil-1.4": {
        "numerical_aperture": 1.4,
        "immersion_index": 1.515,
        "pixel_size_um": 0.1,
        "levels_um": (0.0, 0.5, 1.0, 2.0),
        "real_pair": False,
        # at high NA Richardson-Lucy keeps improving past 100 iterations at 1-2 µm (tuned on
        # val/): a fair baseline gets the longer search
        "rl_max_iter": 300,
    },
}


def eval_config(regime: str = "20x", **overrides: Any) -> EvalConfig:
    """The :class:`EvalConfig` of a named regime (:data:`EVAL_REGIMES`), with ``overrides``.

    ``levels_um=None`` among the overrides keeps the regime's levels.
    """
    if regime not in EVAL_REGIMES:
        raise ValueError(
            f"unknown evaluation regime {regime!r}; choose from {', '.join(EVAL_REGIMES)}"
        )
    fields = {**EVAL_REGIMES[regime], **{k: v for k, v in overrides.items() if v is not None}}
    return EvalConfig(**fields)


def simulation_params(cfg: EvalConfig, wavelength_nm: float, defocus_um: float) -> dict[str, Any]:
    """Concrete simulator parameters for one eval cell (no random draws, no intensity jitter).

    Fixed parameters (rather than a preset's ranges) make the columns of the table differ only
    by defocus and seeded camera noise. The dict is what :func:`~napari_mpt_deblur.simulate.
    make_pair` accepts as ``params_or_cfg``.
    """
    wavelength_nm = _positive(wavelength_nm, "wavelength_nm")
    defocus_um = float(defocus_um)
    return {
        "preset": "evaluation",
        "numerical_aperture": cfg.numerical_aperture,
        "wavelength_nm": wavelength_nm,
        "immersion_index": cfg.immersion_index,
        "sample_index": None,
        "depth_um": 0.0,
        "pixel_size_um": cfg.pixel_size_um,
        "defocus_nominal_um": defocus_um,
        "defocus_scale": 1.0,
        "defocus_um": defocus_um,
        "photons_per_unit": cfg.photons_per_unit,
        "read_noise_e": cfg.read_noise_e,
        "offset_adu": cfg.offset_adu,
        "bit_depth": int(cfg.bit_depth),
        "full_scale_fraction": cfg.full_scale_fraction,
        "gain_adu_per_e": cfg.gain_adu_per_e,
        "intensity_scale": 1.0,
        "intensity_gamma": 1.0,
        "background": 0.0,
        "haze_layers": [],
        "source_percentiles": list(cfg.source_percentiles),
    }


def _psf(cfg: EvalConfig, wavelength_nm: float, defocus_um: float) -> np.ndarray:
    from .simulate import defocus_psf, optics_from_params

    return defocus_psf(optics_from_params(simulation_params(cfg, wavelength_nm, defocus_um)))


# --------------------------------------------------------------------------------------------
# Richardson–Lucy


def _rl_prepare(image: np.ndarray, psf: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, tuple]:
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D (M, N); got shape {img.shape}")
    kernel = np.asarray(psf, dtype=np.float32)
    if kernel.ndim != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
        raise ValueError(f"psf must be a 2-D array with odd sides; got shape {kernel.shape}")
    if not np.all(np.isfinite(kernel)) or kernel.min() < 0 or not kernel.sum() > 0:
        raise ValueError("psf must be finite, non-negative and not all zero")
    shift = float(img.min())
    hy, hx = kernel.shape[0] // 2, kernel.shape[1] // 2
    padded = np.pad(img - np.float32(shift), ((hy, hy), (hx, hx)), mode="symmetric")
    crop = (slice(hy, hy + img.shape[0]), slice(hx, hx + img.shape[1]))
    return padded, kernel, shift, crop


def richardson_lucy_deconvolve(image: np.ndarray, psf: np.ndarray, num_iter: int) -> np.ndarray:
    """The Richardson–Lucy baseline: scikit-image's RL made fair to noisy, offset camera data.

    RL assumes non-negative Poisson data, so the image is shifted by its minimum first (and the
    shift added back), and it is mirror-padded by the PSF radius so that the borders are not
    deconvolved against a dark frame. ``clip=False`` keeps the intensity units.

    Parameters
    ----------
    image : (M, N) array_like
        Blurred image, any real dtype and units.
    psf : (K, L) array_like
        Odd-sized, centred PSF (normally unit sum).
    num_iter : int
        Iterations (>= 1): RL's only regularisation.

    Returns
    -------
    (M, N) float32 ndarray
        Deconvolved image in the units of ``image``.
    """
    from skimage.restoration import richardson_lucy

    if isinstance(num_iter, bool) or not isinstance(num_iter, (int, np.integer)) or num_iter < 1:
        raise ValueError(f"num_iter must be a positive integer; got {num_iter!r}")
    padded, kernel, shift, crop = _rl_prepare(image, psf)
    out = richardson_lucy(padded, kernel, num_iter=int(num_iter), clip=False)
    return (out[crop] + np.float32(shift)).astype(np.float32, copy=False)


def _rl_iterates(
    image: np.ndarray, psf: np.ndarray, stops: Sequence[int]
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(n, richardson_lucy_deconvolve(image, psf, n))`` for increasing ``stops``.

    The same arithmetic as scikit-image's loop, run once: tuning over many iteration counts then
    costs as much as the largest one instead of their sum.
    """
    from scipy.signal import convolve

    padded, kernel, shift, crop = _rl_prepare(image, psf)
    mirror = np.flip(kernel)
    estimate = np.full(padded.shape, 0.5, dtype=np.float32)
    eps = 1e-12  # as in skimage.restoration.richardson_lucy
    done = 0
    for stop in sorted(set(int(s) for s in stops)):
        while done < stop:
            conv = convolve(estimate, kernel, mode="same") + eps
            estimate *= convolve(padded / conv, mirror, mode="same")
            done += 1
        yield stop, (estimate[crop] + np.float32(shift)).astype(np.float32, copy=False)


@dataclass(frozen=True)
class RLTuning:
    """Richardson–Lucy iteration counts chosen on validation data.

    Attributes
    ----------
    iterations : dict
        ``{(wavelength_nm, defocus_um): n}``.
    curves : dict
        ``{(wavelength_nm, defocus_um): {n: mean criterion}}`` (the evidence for the choice).
    settings : dict
        What the choice depends on (validation files, optics, camera, seed, criterion).
    """

    iterations: dict[tuple[float, float], int]
    curves: dict[tuple[float, float], dict[int, float]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def iterations_for(self, wavelength_nm: float, defocus_um: float) -> int:
        """The tuned count; ``ValueError`` naming the tuned cells when this one is missing."""
        key = (float(wavelength_nm), float(defocus_um))
        if key not in self.iterations:
            raise ValueError(
                f"no tuned Richardson-Lucy iterations for {wavelength_nm:g} nm, "
                f"{defocus_um:g} µm; tuned: {sorted(self.iterations)}"
            )
        return self.iterations[key]

    def to_dict(self) -> dict[str, Any]:
        """``{"iterations": {"460": {"4": 10}}, "curves": ..., "settings": ...}`` (JSON)."""
        iterations: dict[str, dict[str, int]] = {}
        curves: dict[str, dict[str, dict[str, float]]] = {}
        for (wl, dz), n in sorted(self.iterations.items()):
            iterations.setdefault(_key(wl), {})[_key(dz)] = int(n)
        for (wl, dz), curve in sorted(self.curves.items()):
            curves.setdefault(_key(wl), {})[_key(dz)] = {
                str(k): round(float(v), 5) for k, v in sorted(curve.items())
            }
        return {"iterations": iterations, "curves": curves, "settings": self.settings}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RLTuning:
        """Inverse of :meth:`to_dict`."""
        iterations = {
            (float(wl), float(dz)): int(n)
            for wl, levels in data.get("iterations", {}).items()
            for dz, n in levels.items()
        }
        curves = {
            (float(wl), float(dz)): {int(k): float(v) for k, v in curve.items()}
            for wl, levels in data.get("curves", {}).items()
            for dz, curve in levels.items()
        }
        return cls(iterations=iterations, curves=curves, settings=dict(data.get("settings", {})))


def _key(value: float) -> str:
    return f"{float(value):g}"


def _image_files(folder: Path, *, recursive: bool = False) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"no such image folder: {folder}")
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in
                  _IMAGE_SUFFIXES)  # fmt: skip


def read_plane(path: Path) -> np.ndarray:
    from ._io import read_image

    array = np.squeeze(read_image(path)[0])
    if array.ndim != 2:
        raise ValueError(f"{path.name}: expected a single 2-D plane; got shape {array.shape}")
    return array


def _central_crop(image: np.ndarray, size: int | None) -> np.ndarray:
    if size is None:
        return image
    h, w = min(size, image.shape[0]), min(size, image.shape[1])
    y, x = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
    return image[y : y + h, x : x + w]


def noise_rng(seed: int, tag: str, name: str, defocus_um: float) -> np.random.Generator:
    # Keyed by names, not positions, so any subset of images or levels gets the same noise.
    words = [int(seed), zlib.crc32(tag.encode()), zlib.crc32(name.encode()),
             round(float(defocus_um) * 1000)]  # fmt: skip
    return np.random.default_rng(words)


def _simulate(
    source: np.ndarray, cfg: EvalConfig, wavelength_nm: float, defocus_um: float, rng: Any
) -> Any:
    from .simulate import make_pair

    lo, hi = (float(v) for v in np.percentile(source, list(cfg.source_percentiles)))
    crop = _central_crop(source, cfg.crop_px)
    params = simulation_params(cfg, wavelength_nm, defocus_um)
    return make_pair(crop, params, rng, source_range=(lo, hi))


def _check_not_eval(val_dir: Path, eval_dir: Path | None = None) -> None:
    resolved = val_dir.resolve()
    if "eval" in resolved.parts or (eval_dir is not None and resolved == eval_dir.resolve()):
        raise ValueError(
            f"val_dir {str(val_dir)!r} lies in the eval (test) set; Richardson-Lucy must be "
            "tuned on validation images only"
        )


def _tuning_settings(cfg: EvalConfig, files: Sequence[Path], root: Path) -> dict[str, Any]:
    keys = ("numerical_aperture", "immersion_index", "pixel_size_um", "photons_per_unit",
            "read_noise_e", "offset_adu", "bit_depth", "full_scale_fraction",
            "source_percentiles", "seed", "crop_px", "rl_max_iter", "rl_criterion")  # fmt: skip
    settings: dict[str, Any] = {k: getattr(cfg, k) for k in keys}
    settings["source_percentiles"] = list(cfg.source_percentiles)
    settings["val_files"] = [
        {"name": p.relative_to(root).as_posix(), "bytes": p.stat().st_size} for p in files
    ]
    settings["candidates"] = [n for n in RL_CANDIDATES if n <= cfg.rl_max_iter]
    settings["method"] = "skimage richardson_lucy, clip=False, minus min, symmetric pad"
    return settings


def _read_cache(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(
            f"Richardson-Lucy cache {str(path)!r} is not readable JSON ({exc})"
        ) from None
    if data.get("format_version") != _CACHE_FORMAT or not isinstance(data.get("entries"), list):
        raise ValueError(
            f"Richardson-Lucy cache {str(path)!r} has an unknown format; delete it to re-tune"
        )
    return data["entries"]


def _write_cache(path: Path, entries: list[dict[str, Any]]) -> None:
    from ._io import atomic_write

    text = json.dumps({"format_version": _CACHE_FORMAT, "entries": entries}, indent=1) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), overwrite=True)


def _default_tuning_cells(cfg: EvalConfig) -> list[tuple[float, float]]:
    cells = [(IMAGE_SETS[s].wavelength_nm, dz) for s in cfg.sets for dz in cfg.levels_um]
    if cfg.real_pair:
        cells.append((cfg.real_pair_wavelength_nm, cfg.real_pair_defocus_um))
    return list(dict.fromkeys(cells))


def tune_richardson_lucy(
    val_dir: str | os.PathLike,
    cfg: EvalConfig | None = None,
    *,
    cells: Sequence[tuple[float, float]] | None = None,
    cache_path: str | os.PathLike | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RLTuning:
    """Choose Richardson–Lucy's iteration count per (emission wavelength, defocus level).

    RL's iteration count is its regulariser: too few leave blur, too many amplify noise, and the
    best count grows with the defocus. Choosing it on the test images would flatter the
    baseline, so it is chosen on ``val_dir`` only: every validation image is simulated exactly
    as the eval images are (same optics, camera and seeding scheme), deconvolved with the true
    PSF, and the count from :data:`RL_CANDIDATES` with the best mean ``cfg.rl_criterion`` wins.
    Tuning stops early once a few candidates in a row are worse than the best.

    Parameters
    ----------
    val_dir : path
        Validation images (searched recursively); refused if it lies in an ``eval`` folder.
    cfg : EvalConfig, optional
        Optics, camera, seed, crop and criterion (default: :class:`EvalConfig`).
    cells : sequence of (wavelength_nm, defocus_um), optional
        What to tune; default: every set's wavelength × ``cfg.levels_um``, plus the real pair.
    cache_path : path, optional
        JSON cache: cells tuned before with the same settings and validation files are read
        from it; new ones are added to it (written atomically).
    progress : callable(done, total), optional
        Called after each cell.

    Returns
    -------
    RLTuning
    """
    cfg = EvalConfig() if cfg is None else cfg
    if not isinstance(cfg, EvalConfig):
        raise TypeError(f"cfg must be an EvalConfig; got {type(cfg).__name__}")
    root = Path(val_dir)
    _check_not_eval(root, Path(cfg.eval_dir))
    files = _image_files(root, recursive=True)
    if not files:
        raise FileNotFoundError(f"no validation images (.tif/.png) under {root}")
    cells = _default_tuning_cells(cfg) if cells is None else [
        (_positive(wl, "wavelength_nm"), _non_negative(dz, "defocus_um")) for wl, dz in cells
    ]
    settings = _tuning_settings(cfg, files, root)
    cache = Path(cache_path) if cache_path is not None else None
    entries = _read_cache(cache) if cache is not None else []
    entry = next((e for e in entries if e.get("settings") == settings), None)
    known = RLTuning.from_dict(entry) if entry else RLTuning({}, {}, settings)
    iterations, curves = dict(known.iterations), dict(known.curves)
    todo = [c for c in cells if c not in iterations]
    if todo:
        logger.info("tuning Richardson-Lucy on %d validation images for %d cells",
                    len(files), len(todo))  # fmt: skip
    sources = [(p.relative_to(root).as_posix(), read_plane(p)) for p in files] if todo else []
    candidates = settings["candidates"]
    metric = psnr if cfg.rl_criterion == "psnr" else ssim
    for done, (wavelength, defocus) in enumerate(cells, start=1):
        if (wavelength, defocus) in iterations:
            if progress is not None:
                progress(done, len(cells))
            continue
        started = time.perf_counter()
        scores: dict[int, list[float]] = {n: [] for n in candidates}
        pairs = [
            _simulate(src, cfg, wavelength, defocus, noise_rng(cfg.seed, "val", name, defocus))
            for name, src in sources
        ]
        paths = [_rl_iterates(p.blurred, p.psf, candidates) for p in pairs]
        curve: dict[int, float] = {}
        best_n, best, worse = candidates[0], -math.inf, 0
        for n in candidates:
            for pair, path in zip(pairs, paths):
                _, estimate = next(path)
                scores[n].append(metric(estimate, pair.sharp))
            curve[n] = float(np.mean(scores[n]))
            if curve[n] > best:
                best_n, best, worse = n, curve[n], 0
            else:
                worse += 1
                if worse >= _RL_PATIENCE:
                    break
        iterations[(wavelength, defocus)] = best_n
        curves[(wavelength, defocus)] = curve
        logger.info("RL %g nm, %g µm: %d iterations (mean %s %.4g; %.1f s)", wavelength, defocus,
                    best_n, cfg.rl_criterion, best, time.perf_counter() - started)  # fmt: skip
        if progress is not None:
            progress(done, len(cells))
    tuning = RLTuning(iterations=iterations, curves=curves, settings=settings)
    if cache is not None and todo:
        record = tuning.to_dict()
        entries = [e for e in entries if e.get("settings") != settings] + [record]
        _write_cache(cache, entries)
    return RLTuning(
        iterations={c: iterations[c] for c in cells},
        curves={c: curves[c] for c in cells if c in curves},
        settings=settings,
    )


# --------------------------------------------------------------------------------------------
# Scoring


def fit_affine(image: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Least-squares ``gain * image + offset`` onto ``reference``.

    Used for the real pair, whose defocused and in-focus recordings differ in intensity scale
    (exposure, bleaching, camera offset): without the fit, PSNR would mostly measure that
    difference instead of the blur.

    Returns
    -------
    fitted : float32 ndarray
        ``gain * image + offset``.
    gain, offset : float
    """
    x = np.asarray(image, dtype=np.float64).ravel()
    y = np.asarray(reference, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(
            f"image {np.shape(image)} and reference {np.shape(reference)} differ in shape"
        )
    x_mean, y_mean = float(x.mean()), float(y.mean())
    dx = x - x_mean
    var = float(dx @ dx)
    gain = float(dx @ (y - y_mean)) / var if var > 0 else 0.0
    offset = y_mean - gain * x_mean
    fitted = (np.asarray(image, dtype=np.float64) * gain + offset).astype(np.float32)
    return fitted, gain, offset


@dataclass(frozen=True)
class Score:
    """One table entry before averaging.

    Attributes
    ----------
    set : str
        Image-set key (``"w1"``, ``"w2"``) or ``"real"`` for the real pair.
    image : str
        File name.
    defocus_um : float
        Defocus level.
    method : str
        Method (column) name.
    psnr_db, ssim : float
        Metrics against the sharp reference (reference-normalised).
    seconds : float
        Wall time of the method on this image.
    affine : (float, float), optional
        ``(gain, offset)`` of the real-pair fit.
    """

    set: str
    image: str
    defocus_um: float
    method: str
    psnr_db: float
    ssim: float
    seconds: float = 0.0
    affine: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dictionary."""
        data = dataclasses.asdict(self)
        data["affine"] = None if self.affine is None else list(self.affine)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Score:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        if data.get("affine") is not None:
            data["affine"] = tuple(data["affine"])
        return cls(**data)


@dataclass
class EvalResult:
    """Scores of one evaluation run, with what is needed to reproduce and present them.

    Attributes
    ----------
    config : EvalConfig
    methods : list of str
        Column order: the baselines, then the models.
    scores : list of Score
        Simulated-defocus scores, one per image, level and method.
    real_pair : list of Score
        Real-pair scores (empty when skipped).
    rl_iterations : dict
        ``{wavelength_nm: {defocus_um: n}}`` as strings (from :class:`RLTuning`).
    rl_settings : dict
        What the tuning depended on (validation files, criterion...; :class:`RLTuning`).
    models : dict
        Model name -> provenance (``model.info``: source, SHA-256, ...).
    images : dict
        Set key -> file names used.
    environment : dict
        Versions, CPU count, platform and date.
    seconds : float
        Wall time of the whole run.
    examples : dict
        Row label -> {panel title -> crop}, for :func:`save_example_figure` (not serialised).
    """

    config: EvalConfig
    methods: list[str]
    scores: list[Score] = field(default_factory=list)
    real_pair: list[Score] = field(default_factory=list)
    rl_iterations: dict[str, dict[str, int]] = field(default_factory=dict)
    rl_settings: dict[str, Any] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    images: dict[str, list[str]] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    examples: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    def summary(self, *, by_set: bool = False) -> dict[str, dict[str, dict[str, Any]]]:
        """Mean and sample standard deviation over images.

        Returns
        -------
        dict
            ``{row: {method: {"psnr_db": (mean, std), "ssim": (mean, std), "n": n,
            "seconds": mean}}}`` with rows ``"4"`` (µm) or, ``by_set``, ``"w1/4"``.
        """
        groups: dict[str, dict[str, list[Score]]] = {}
        for s in self.scores:
            row = f"{s.set}/{_key(s.defocus_um)}" if by_set else _key(s.defocus_um)
            groups.setdefault(row, {}).setdefault(s.method, []).append(s)
        return {
            row: {method: _stats(items) for method, items in methods.items()}
            for row, methods in groups.items()
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything except the example crops, JSON-serialisable."""
        return {
            "format_version": 1,
            "package_version": __version__,
            "config": self.config.to_dict(),
            "methods": list(self.methods),
            "summary": _jsonable(self.summary()),
            "summary_by_set": _jsonable(self.summary(by_set=True)),
            "real_pair": [s.to_dict() for s in self.real_pair],
            "scores": [s.to_dict() for s in self.scores],
            "rl_iterations": self.rl_iterations,
            "rl_settings": self.rl_settings,
            "models": self.models,
            "images": self.images,
            "environment": self.environment,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalResult:
        """Rebuild from :meth:`to_dict` (e.g. ``results.json``), without example crops."""
        return cls(
            config=EvalConfig.from_dict(data["config"]),
            methods=list(data["methods"]),
            scores=[Score.from_dict(s) for s in data.get("scores", [])],
            real_pair=[Score.from_dict(s) for s in data.get("real_pair", [])],
            rl_iterations=dict(data.get("rl_iterations", {})),
            rl_settings=dict(data.get("rl_settings", {})),
            models=dict(data.get("models", {})),
            images=dict(data.get("images", {})),
            environment=dict(data.get("environment", {})),
            seconds=float(data.get("seconds", 0.0)),
        )


def _stats(items: Sequence[Score]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(items)}
    for name in ("psnr_db", "ssim"):
        values = np.array([getattr(s, name) for s in items], dtype=np.float64)
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out[name] = (float(values.mean()), std)
    out["seconds"] = float(np.mean([s.seconds for s in items]))
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def _environment(with_torch: bool) -> dict[str, Any]:
    import scipy
    import skimage

    env: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit-image": skimage.__version__,
        "napari_mpt_deblur": __version__,
    }
    if with_torch or "torch" in sys.modules:
        import torch

        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
    return env


@dataclasses.dataclass(frozen=True)
class Ensembled:
    """A model column run with test-time augmentation (``deblur(..., ensemble=views)``).

    ``model`` is anything a column accepts: a loaded model, a bundled name or a checkpoint path.
    """

    model: Any
    views: int = 8


def _resolve_models(models: Mapping[str, Any] | None, device: str) -> dict[str, Any]:
    if models is None:
        return {}
    if not isinstance(models, Mapping):
        raise TypeError(
            f"models must be a dict of name -> model (or checkpoint, or None); got "
            f"{type(models).__name__}"
        )
    reserved = {BLURRED, RICHARDSON_LUCY, RICHARDSON_LUCY_REAL}
    resolved: dict[str, Any] = {}
    for name, model in models.items():
        if not isinstance(name, str) or not name or name in reserved:
            raise ValueError(
                f"model names must be non-empty and not {sorted(reserved)}; got {name!r}"
            )
        views = 1
        if isinstance(model, Ensembled):
            from .engine.predict import check_ensemble

            model, views = model.model, check_ensemble(model.views)
        if model is None or isinstance(model, (str, os.PathLike)):
            from .models.checkpoint import load_model

            model = load_model(name if model is None else model, device=device)
        resolved[name] = Ensembled(model, views) if views > 1 else model
    return resolved


def _unwrap(model: Any) -> tuple[Any, int]:
    return (model.model, model.views) if isinstance(model, Ensembled) else (model, 1)


def _best_window(image: np.ndarray, size: int) -> tuple[slice, slice]:
    """The ``size`` window with the most foreground (highest mean), for the example figure.

    Sparse images (nuclei) are mostly background; the densest window shows the most cells.
    """
    h, w = min(size, image.shape[0]), min(size, image.shape[1])
    step_y, step_x = max(1, h // 4), max(1, w // 4)
    best, box = -1.0, (0, 0)
    for y in range(0, image.shape[0] - h + 1, step_y):
        for x in range(0, image.shape[1] - w + 1, step_x):
            value = float(np.mean(image[y : y + h, x : x + w]))
            if value > best:
                best, box = value, (y, x)
    return slice(box[0], box[0] + h), slice(box[1], box[1] + w)


def _run_methods(
    blurred: np.ndarray,
    psf: np.ndarray,
    rl_iter: int,
    models: Mapping[str, Any],
    device: str,
) -> Iterator[tuple[str, np.ndarray, float]]:
    yield BLURRED, blurred, 0.0
    started = time.perf_counter()
    restored = richardson_lucy_deconvolve(blurred, psf, rl_iter)
    yield RICHARDSON_LUCY, restored, time.perf_counter() - started
    if models:
        from .engine.predict import deblur

        for name, entry in models.items():
            model, views = _unwrap(entry)
            started = time.perf_counter()
            out = deblur(blurred.astype(np.float32), model, axes="YX", device=device,
                         ensemble=views)
            yield name, out, time.perf_counter() - started


def evaluate(
    models: Mapping[str, Any] | None,
    cfg: EvalConfig | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    rl_tuning: RLTuning | None = None,
    rl_cache: str | os.PathLike | None = None,
) -> EvalResult:
    """Score the baselines and each model on the eval images at every defocus level.

    Parameters
    ----------
    models : dict
        Column name -> a loaded model (``torch.nn.Module``), a bundled model name or checkpoint
        path, or ``None`` (load the column name itself); any of these wrapped in
        :class:`Ensembled` runs with test-time augmentation. Empty: baselines only.
    cfg : EvalConfig, optional
        The protocol (default: :class:`EvalConfig`, all images, 4/8/16/24 µm, real pair).
    progress : callable(done, total), optional
        Called after each (image, level) and after the real pair.
    rl_tuning : RLTuning, optional
        Richardson–Lucy iterations to use; default: :func:`tune_richardson_lucy` on
        ``cfg.val_dir`` (with ``rl_cache``).
    rl_cache : path, optional
        JSON cache of the tuned iterations (e.g. ``benchmarks/results/rl_iterations.json``).

    Returns
    -------
    EvalResult

    Raises
    ------
    FileNotFoundError
        An image-set folder or the real pair is missing or empty.
    ValueError
        Bad configuration, or a tuning without the needed cells.
    """
    cfg = EvalConfig() if cfg is None else cfg
    if not isinstance(cfg, EvalConfig):
        raise TypeError(f"cfg must be an EvalConfig; got {type(cfg).__name__}")
    started = time.perf_counter()
    eval_dir = Path(cfg.eval_dir)
    files: dict[str, list[Path]] = {}
    for key in cfg.sets:
        found = _image_files(eval_dir / IMAGE_SETS[key].folder)
        if not found:
            raise FileNotFoundError(f"no images in {eval_dir / IMAGE_SETS[key].folder}")
        files[key] = found[: cfg.max_images] if cfg.max_images else found
    pair_files = _real_pair_files(eval_dir / REAL_PAIR_FOLDER) if cfg.real_pair else None
    resolved = _resolve_models(models, cfg.device)
    if rl_tuning is None:
        rl_tuning = tune_richardson_lucy(cfg.val_dir, cfg, cache_path=rl_cache)
    elif not isinstance(rl_tuning, RLTuning):
        raise TypeError(f"rl_tuning must be an RLTuning; got {type(rl_tuning).__name__}")
    cells = _default_tuning_cells(cfg)
    for wavelength, defocus in cells:
        rl_tuning.iterations_for(wavelength, defocus)  # fail now, not after an hour

    methods = [BLURRED, RICHARDSON_LUCY, *resolved]
    result = EvalResult(
        config=cfg,
        methods=methods,
        rl_iterations=RLTuning({c: rl_tuning.iterations_for(*c) for c in cells}).to_dict()[
            "iterations"
        ],
        rl_settings=dict(rl_tuning.settings),
        models={name: _model_info(*_unwrap(m)) for name, m in resolved.items()},
        images={k: [p.name for p in v] for k, v in files.items()},
        environment=_environment(bool(resolved)),
    )
    total = sum(len(v) for v in files.values()) * len(cfg.levels_um) + (1 if pair_files else 0)
    done = 0
    psfs: dict[tuple[float, float], np.ndarray] = {}
    for key, paths in files.items():
        wavelength = IMAGE_SETS[key].wavelength_nm
        for index, path in enumerate(paths):
            source = read_plane(path)
            window = None
            for defocus in cfg.levels_um:
                rng = noise_rng(cfg.seed, key, path.name, defocus)
                pair = _simulate(source, cfg, wavelength, defocus, rng)
                psf = psfs.setdefault((wavelength, defocus), pair.psf)
                example = index == 0  # the first image of each set
                if example and window is None:
                    window = _best_window(pair.sharp, cfg.example_crop_px)
                panels: dict[str, np.ndarray] = {}
                n_iter = rl_tuning.iterations_for(wavelength, defocus)
                for method, out, seconds in _run_methods(
                    pair.blurred, psf, n_iter, resolved, cfg.device
                ):
                    result.scores.append(Score(
                        set=key, image=path.name, defocus_um=defocus, method=method,
                        psnr_db=psnr(out, pair.sharp), ssim=ssim(out, pair.sharp),
                        seconds=seconds,
                    ))  # fmt: skip
                    if example:
                        panels[method] = np.array(out[window], dtype=np.float32)
                if example:
                    panels["in focus"] = np.array(pair.sharp[window], dtype=np.float32)
                    result.examples[f"{key} {path.stem}, {defocus:g} µm"] = panels
                done += 1
                logger.info("%s %s %g µm: %s", key, path.name, defocus, ", ".join(
                    f"{s.method} {s.psnr_db:.2f} dB" for s in result.scores[-len(methods):]
                ))  # fmt: skip
                if progress is not None:
                    progress(done, total)
    if pair_files is not None:
        _evaluate_real_pair(result, pair_files, cfg, rl_tuning, resolved)
        done += 1
        if progress is not None:
            progress(done, total)
    result.seconds = time.perf_counter() - started
    return result


def _model_info(model: Any, views: int = 1) -> dict[str, Any]:
    info = dict(getattr(model, "info", {}) or {})
    keep = ("name", "source", "sha256", "arch", "routing", "training", "simulation", "metrics")
    out = {k: info[k] for k in keep if k in info}
    if views > 1:
        out["ensemble"] = views
    preset = getattr(model, "preset_name", None)
    if preset:
        out.setdefault("preset", preset)
    try:
        out["parameters"] = int(sum(p.numel() for p in model.parameters()))
    except (AttributeError, TypeError):
        pass
    return json.loads(json.dumps(out, default=str))


def _real_pair_files(folder: Path) -> tuple[Path, Path]:
    found = _image_files(folder)
    focused = [p for p in found if "infocus" in p.name.lower()]
    others = [p for p in found if p not in focused]
    if len(focused) != 1 or len(others) != 1:
        raise FileNotFoundError(
            f"{folder} must hold exactly one in-focus image (name containing 'infocus') and one "
            f"defocused image; found {[p.name for p in found]}"
        )
    return others[0], focused[0]


def _evaluate_real_pair(
    result: EvalResult,
    files: tuple[Path, Path],
    cfg: EvalConfig,
    rl_tuning: RLTuning,
    models: Mapping[str, Any],
) -> None:
    defocused_path, focused_path = files
    blurred = _central_crop(read_plane(defocused_path), cfg.crop_px).astype(np.float32)
    reference = _central_crop(read_plane(focused_path), cfg.crop_px).astype(np.float32)
    if blurred.shape != reference.shape:
        raise ValueError(
            f"real pair images differ in shape: {defocused_path.name} {blurred.shape}, "
            f"{focused_path.name} {reference.shape}"
        )
    wavelength, defocus = cfg.real_pair_wavelength_nm, cfg.real_pair_defocus_um
    psf = _psf(cfg, wavelength, defocus)
    n_iter = rl_tuning.iterations_for(wavelength, defocus)
    window = _best_window(reference, cfg.example_crop_px)
    panels: dict[str, np.ndarray] = {}
    for method, out, seconds in _run_methods(blurred, psf, n_iter, models, cfg.device):
        fitted, gain, offset = fit_affine(out, reference)
        name = RICHARDSON_LUCY_REAL if method == RICHARDSON_LUCY else method
        result.real_pair.append(Score(
            set="real", image=defocused_path.name, defocus_um=defocus, method=name,
            psnr_db=psnr(fitted, reference), ssim=ssim(fitted, reference), seconds=seconds,
            affine=(gain, offset),
        ))  # fmt: skip
        panels[method] = np.array(fitted[window], dtype=np.float32)
    panels["in focus"] = np.array(reference[window], dtype=np.float32)
    result.examples[f"real pair, {defocus:g} µm"] = panels
    logger.info("real pair: %s", ", ".join(f"{s.method} {s.psnr_db:.2f} dB" for s in
                                          result.real_pair))  # fmt: skip


# --------------------------------------------------------------------------------------------
# Presentation


def _cells(values: Mapping[str, tuple[float, float] | None], digits: int) -> list[str]:
    """Format ``mean ± std`` cells, bold where the rounded mean is the row's best."""
    rounded = {m: round(v[0], digits) for m, v in values.items() if v is not None}
    best = max(rounded.values()) if rounded else None
    cells = []
    for method, value in values.items():
        if value is None:
            cells.append("–")
            continue
        text = f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"
        cells.append(f"**{text}**" if len(rounded) > 1 and rounded[method] == best else text)
    return cells


def _table(header: Sequence[str], align: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _level_rows(
    summary: Mapping[str, Mapping[str, Any]], methods: Sequence[str], prefix: Sequence[str] = ()
) -> list[list[str]]:
    rows = []
    for row_key, per_method in summary.items():
        level = row_key.split("/")[-1]
        for metric, label, digits in (("psnr_db", "PSNR (dB)", 2), ("ssim", "SSIM", 3)):
            values = {m: per_method[m][metric] if m in per_method else None for m in methods}
            rows.append([*prefix, f"{level} µm", label, *_cells(values, digits)])
    return rows


def to_markdown(result: EvalResult, *, title: str | None = "Deblurring quality") -> str:
    """The quality table(s) as Markdown, with the protocol stated in notes under them.

    Cells are mean ± sample standard deviation over images; the best mean of each row is bold.
    """
    methods = list(result.methods)
    counts = {k: len(v) for k, v in result.images.items()}
    n_total = sum(counts.values())
    sets_text = ", ".join(
        f"{IMAGE_SETS[k].description} ({n})" for k, n in counts.items() if k in IMAGE_SETS
    )
    out: list[str] = []
    if title:
        out += [f"## {title}", ""]
    header_methods = [m.replace("|", "\\|") for m in methods]
    if result.scores:
        noun = "image" if n_total == 1 else "images"
        out += [f"### Simulated defocus: {n_total} real in-focus eval {noun}", "",
                f"Images: {sets_text}.", ""]  # fmt: skip
        out.append(_table(
            ["defocus", "metric", *header_methods],
            ["---:", "---", *(["---:"] * len(methods))],
            _level_rows(result.summary(), methods),
        ))  # fmt: skip
        out.append("")
        if len(counts) > 1:
            by_set = result.summary(by_set=True)
            rows: list[list[str]] = []
            for key in counts:
                part = {k: v for k, v in by_set.items() if k.split("/")[0] == key}
                rows += _level_rows(part, methods, prefix=[f"{key} (n={counts[key]})"])
            out += ["#### Per image set", ""]
            out.append(_table(
                ["set", "defocus", "metric", *header_methods],
                ["---", "---:", "---", *(["---:"] * len(methods))],
                rows,
            ))  # fmt: skip
            out.append("")
    if result.real_pair:
        real_methods = [s.method for s in result.real_pair]
        first = result.real_pair[0]
        out += [f"### Real defocus: BBBC006 pair ({first.image}, {first.defocus_um:g} µm "
                "below focus, vs in focus)", ""]  # fmt: skip
        rows = []
        for metric, label, digits in (("psnr_db", "PSNR (dB)", 2), ("ssim", "SSIM", 3)):
            values = {s.method: getattr(s, metric) for s in result.real_pair}
            best = max(round(v, digits) for v in values.values())
            rows.append([label, *(
                f"**{v:.{digits}f}**" if round(v, digits) == best and len(values) > 1
                else f"{v:.{digits}f}" for v in values.values()
            )])  # fmt: skip
        out.append(_table(["metric", *[m.replace("|", "\\|") for m in real_methods]],
                          ["---", *(["---:"] * len(real_methods))], rows))  # fmt: skip
        out.append("")
    out += ["**Notes**", ""]
    out += [f"- {note}" for note in _notes(result)]
    return "\n".join(out) + "\n"


def _notes(result: EvalResult) -> list[str]:
    cfg = result.config
    wavelengths = ", ".join(
        f"{k} {IMAGE_SETS[k].wavelength_nm:g} nm" for k in result.images if k in IMAGE_SETS
    )
    val_files = [f["name"] for f in result.rl_settings.get("val_files", []) if "name" in f]
    val_text = f"the {len(val_files)} images of `val/`" if val_files else "`val/`"
    notes = [
        "Metrics: PSNR and SSIM (Gaussian window σ = 1.5) with both images normalised by the "
        "reference's min–max range (data range 1), `napari_mpt_deblur.metrics`. Cells: mean ± "
        "sample standard deviation over images; bold: best mean of the row.",
        f"Simulation (`napari_mpt_deblur.simulate.make_pair`): scalar pupil-function defocus "
        f"PSF, NA {cfg.numerical_aperture:g} "
        f"{'dry' if cfg.immersion_index == 1 else f'immersion n = {cfg.immersion_index:g}'}, "
        f"{cfg.pixel_size_um:g} µm/px, emission "
        f"{wavelengths}, defocus exactly the level (scale 1.0), no intensity jitter or haze; "
        f"camera {cfg.photons_per_unit:g} photo-electrons at full scale (the source's "
        f"{cfg.source_percentiles[1]:g}th percentile), shot noise, {cfg.read_noise_e:g} e⁻ read "
        f"noise, offset {cfg.offset_adu:g} ADU, {cfg.bit_depth}-bit; noise seed {cfg.seed} "
        "(per image and level). "
        + ("Whole images." if cfg.crop_px is None else
           f"Central {cfg.crop_px}×{cfg.crop_px} crops."),
        "Reference: the simulator's noise-free in-focus target in the same units as the input.",
        "Richardson–Lucy: `skimage.restoration.richardson_lucy` with the true PSF, clip=False, "
        "on the image minus its minimum, mirror-padded by the PSF radius. Iterations chosen "
        f"on {val_text} only (best mean {cfg.rl_criterion.upper()} over validation images "
        "simulated like the eval images), "
        "per emission wavelength and level: " + "; ".join(
            f"{wl} nm: " + ", ".join(f"{dz} µm → {n}" for dz, n in levels.items())
            for wl, levels in result.rl_iterations.items()
        ) + ".",
    ]  # fmt: skip
    if result.real_pair:
        notes.append(
            "Real pair: the in-focus (z=16) and defocused (z=00) recordings have different "
            "intensity scales, so every method's output, the blurred input included, is mapped "
            "onto the in-focus image by a least-squares affine fit (gain, offset) before PSNR/SSIM"
            f". Its true PSF is unknown: RL uses the simulated PSF at NA "
            f"{cfg.numerical_aperture:g}, {cfg.real_pair_wavelength_nm:g} nm, "
            f"{cfg.real_pair_defocus_um:g} µm."
        )
    for name, info in result.models.items():
        source = info.get("source", "in memory")
        sha = info.get("sha256")
        views = info.get("ensemble", 1)
        notes.append(f"Model `{name}`: {source}" + (f" (SHA-256 {sha[:12]}…)" if sha else "")
                     + (f", test-time augmentation: mean of {views} rotated/mirrored views"
                        if views > 1 else "") + ".")  # fmt: skip
    if not result.models:
        notes.append("No models evaluated (baselines only).")
    env = result.environment
    if env:
        versions = ", ".join(
            f"{k} {env[k]}" for k in ("napari_mpt_deblur", "torch", "scikit-image", "numpy")
            if k in env
        )
        notes.append(f"Run {env.get('date', '?')} on {env.get('cpu_count', '?')} CPUs; "
                     f"{versions}; {result.seconds:.0f} s in total.")  # fmt: skip
    return notes


def save_example_figure(
    result: EvalResult,
    path: str | os.PathLike,
    *,
    rows: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a grid of example crops: rows are image × level (and the real pair).

    Columns are the methods, with the in-focus reference last. Every crop of a row uses the
    display contrast of that row's in-focus crop, so that a method that changes brightness or
    contrast shows it.

    Parameters
    ----------
    result : EvalResult
        From :func:`evaluate` in this session (crops are not stored in ``results.json``).
    path : path
        PNG file, written atomically.
    rows : sequence of str, optional
        Row labels (keys of ``result.examples``) to show; default all.
    overwrite : bool
        Replace an existing file.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ._io import atomic_write
    from .figures import to_uint8

    labels = list(result.examples) if rows is None else list(rows)
    missing = [r for r in labels if r not in result.examples]
    if missing:
        raise ValueError(f"rows {missing} are not in result.examples ({list(result.examples)})")
    if not labels:
        raise ValueError("result has no example crops (evaluate() keeps them; results.json not)")
    columns = [m for m in result.methods if any(m in result.examples[r] for r in labels)]
    columns.append("in focus")
    size = 2.4
    fig, axes = plt.subplots(len(labels), len(columns), squeeze=False, dpi=100,
                             figsize=(size * len(columns), size * len(labels) + 0.3))  # fmt: skip
    for i, label in enumerate(labels):
        panels = result.examples[label]
        lo, hi = (float(v) for v in np.percentile(panels["in focus"], [0.5, 99.8]))
        for j, column in enumerate(columns):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if column in panels:
                ax.imshow(to_uint8(panels[column], lo, hi), cmap="gray", vmin=0, vmax=255,
                          interpolation="nearest")  # fmt: skip
            if i == 0:
                ax.set_title(column, fontsize=9)
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"), overwrite=overwrite)
    finally:
        plt.close(fig)


# ------------------------------------------------------------------------------------------
# Model columns from the command line (mpt-deblur evaluate, benchmarks, scripts)


def split_views(value: str) -> tuple[str, int]:
    """``"mpt-tiny@x8"`` -> ``("mpt-tiny", 8)``: the model and its test-time views."""
    from .engine.predict import ENSEMBLE_SIZES

    head, sep, tail = value.rpartition("@x")
    if not sep or not head:
        return value, 1
    if not tail.isdigit() or int(tail) not in ENSEMBLE_SIZES:
        raise ValueError(
            f"{value!r}: the test-time views after '@x' must be one of "
            f"{', '.join(map(str, ENSEMBLE_SIZES))} (e.g. mpt-tiny@x8)"
        )
    return head, int(tail)


def model_columns(values: list[str] | None) -> dict[str, Any]:
    """Column name -> model spec; ``NAME@x8`` adds a column with 8-view test-time augmentation."""
    from .models.checkpoint import bundled_models

    bundled = bundled_models()
    if values is None:
        if not bundled:
            logger.warning("no trained models are bundled; evaluating the baselines only")
        return {name: name for name in bundled}
    entries: dict[str, Any] = {}
    for value in values:
        if value.lower() == "none":
            continue
        spec, views = split_views(value)
        name = spec if spec in bundled else Path(spec).name.removesuffix(".safetensors")
        if views > 1:
            name = f"{name} ×{views}"
        base, k = name, 2
        while name in entries:
            name, k = f"{base} ({k})", k + 1
        entries[name] = Ensembled(spec, views) if views > 1 else spec
    return entries
