"""The test protocol: what is evaluated, through which microscope, with which noise.

Everything that fixes a number in the quality table lives here, so that the harness
(:func:`~napari_mpt_deblur.evaluation.evaluate`), the Richardson–Lucy tuning and the scripts
that reuse the protocol on validation data (``scripts/select_checkpoint.py``) simulate the
same pairs:

* the eval image sets (:data:`IMAGE_SETS`) and the real defocus pair (:data:`REAL_PAIR_FOLDER`);
* :class:`EvalConfig`: defocus levels, objective, camera, seed, crops, and where the data are.
  Nothing here knows where the project's data live: the data root is always passed in
  (``eval_config(data_root=...)``, ``EvalConfig(eval_dir=..., val_dir=...)``);
* the named regimes (:data:`EVAL_REGIMES`, :func:`eval_config`);
* the concrete simulator parameters of one (wavelength, level) cell
  (:func:`simulation_params`) and the camera-noise streams (:func:`noise_rng`), keyed by names
  so that any subset of images or levels reproduces the pairs of the full run.
"""

from __future__ import annotations

import dataclasses
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._dataclass_io import DictRoundTrip, composed_of_parts
from ..simulate.camera import CameraConfig
from ..simulate.optics import OpticsHints

__all__ = [
    "BLURRED",
    "EVAL_REGIMES",
    "IMAGE_SETS",
    "REAL_PAIR_FOLDER",
    "RICHARDSON_LUCY",
    "RICHARDSON_LUCY_REAL",
    "EvalConfig",
    "ImageSet",
    "eval_config",
    "noise_rng",
    "read_plane",
    "simulation_params",
]

#: Method names of the two built-in baselines (also the column titles of the table).
BLURRED = "blurred input"
RICHARDSON_LUCY = "Richardson–Lucy (true PSF)"
#: Column title of RL on the real pair, whose true PSF is unknown.
RICHARDSON_LUCY_REAL = "Richardson–Lucy (simulated PSF)"
#: Folder of ``eval/`` holding the real defocus pair.
REAL_PAIR_FOLDER = "bbbc006_real_pair"
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


@composed_of_parts
@dataclass(frozen=True)
class EvalConfig(DictRoundTrip):
    """Everything that fixes the evaluation table (recorded in ``results.json``).

    The objective and the camera are the shared parts, held as fields: ``optics``
    (:class:`~napari_mpt_deblur.simulate.optics.OpticsHints`) and ``camera``
    (:class:`~napari_mpt_deblur.simulate.camera.CameraConfig`). As in the run configs of
    :mod:`napari_mpt_deblur.train.config` (:func:`~napari_mpt_deblur._dataclass_io.
    composed_of_parts`), their fields read and write flat (``cfg.numerical_aperture``,
    ``EvalConfig(bit_depth=8)``, the keys of ``results.json``), so every ``results.json``
    written so far reads unchanged. Only the fields the protocol sets are flat: the emission
    wavelength belongs to each image set (``optics.wavelength_nm`` stays ``None``), the camera
    always draws shot noise and its gain follows from ``full_scale_fraction``.

    Parameters
    ----------
    eval_dir : str, optional
        The test-set root (``DATA/eval``): image-set folders and the real pair. No default:
        the package does not guess where the data live (:func:`eval_config` takes the data
        root); it may stay ``None`` for uses that only need the optics and the camera.
    val_dir : str, optional
        Validation images (``DATA/val``), the only data Richardson–Lucy is tuned on.
    sets : tuple of str
        Keys of :data:`IMAGE_SETS` to evaluate.
    levels_um : tuple of float
        Defocus levels, µm (exact: the nominal-to-effective defocus scale is 1). 0 is the
        in-focus level (camera noise only): a deblurrer must leave a sharp image as it is.
    optics : OpticsHints
        The simulated objective (dry, 20×-like) and camera pixel in the sample plane, flat as
        ``numerical_aperture``, ``immersion_index``, ``pixel_size_um`` (all required).
    camera : CameraConfig
        The simulated camera, flat as ``photons_per_unit`` (photo-electrons at the source's
        full scale, its 99.9th percentile: the photon budget), ``read_noise_e`` (electrons
        rms), ``offset_adu`` and ``bit_depth`` (ADC bits); its gain is set from
        ``full_scale_fraction`` (:meth:`~napari_mpt_deblur.simulate.camera.CameraConfig.
        at_full_scale`, as the simulator builds each drawn camera).
    full_scale_fraction : float
        Fraction of the ADU range above offset used by full scale (sets the gain).
        ``photons_per_unit`` to ``full_scale_fraction``: the camera, built and validated by
        :meth:`~napari_mpt_deblur.simulate.camera.CameraConfig.at_full_scale` as the
        simulator builds each drawn camera (:attr:`camera`).
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

    eval_dir: str | None = None
    val_dir: str | None = None
    sets: tuple[str, ...] = ("w1", "w2")
    levels_um: tuple[float, ...] = (0.0, 2.0, 4.0, 8.0, 16.0, 24.0)
    optics: OpticsHints = field(
        default_factory=lambda: OpticsHints(pixel_size_um=0.645, numerical_aperture=0.5,
                                            immersion_index=1.0),
        metadata={"flat": ("numerical_aperture", "immersion_index", "pixel_size_um")})
    camera: CameraConfig = field(
        default_factory=lambda: CameraConfig(photons_per_unit=1500.0, read_noise_e=4.0,
                                             offset_adu=110.0, bit_depth=12),
        metadata={"flat": ("photons_per_unit", "read_noise_e", "offset_adu", "bit_depth")})
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
        for name in ("eval_dir", "val_dir"):
            value = getattr(self, name)
            set_(name, None if value is None else os.fspath(value))
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
        for name in ("full_scale_fraction", "real_pair_defocus_um", "real_pair_wavelength_nm"):
            set_(name, _positive(getattr(self, name), name))
        # the parts checked the rest when built (NA below the index, offset below saturation)
        optics = self.optics
        if optics.wavelength_nm is not None:
            raise ValueError("EvalConfig.optics.wavelength_nm must be None: each image set has "
                             f"its own emission wavelength; got {optics.wavelength_nm!r}")
        set_("optics", dataclasses.replace(optics, **{
            name: _positive(getattr(optics, name), name)
            for name in ("numerical_aperture", "immersion_index", "pixel_size_um")}))
        camera = self.camera
        if not camera.shot_noise:
            raise ValueError("EvalConfig.camera must draw shot noise (the protocol's camera)")
        set_("camera", CameraConfig.at_full_scale(
            photons_per_unit=_positive(camera.photons_per_unit, "photons_per_unit"),
            read_noise_e=_non_negative(camera.read_noise_e, "read_noise_e"),
            offset_adu=_non_negative(camera.offset_adu, "offset_adu"),
            bit_depth=camera.bit_depth, full_scale_fraction=self.full_scale_fraction,
        ))
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
        return self.camera.gain_adu_per_e

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


def eval_config(
    regime: str = "20x", *, data_root: str | os.PathLike | None = None, **overrides: Any
) -> EvalConfig:
    """The :class:`EvalConfig` of a named regime (:data:`EVAL_REGIMES`), with ``overrides``.

    Parameters
    ----------
    regime : str
        A key of :data:`EVAL_REGIMES`.
    data_root : path, optional
        The folder holding ``eval/`` and ``val/`` (the command-line tools default to
        ``../shared/data`` from the repository root); sets ``eval_dir`` and ``val_dir`` unless
        those are overridden themselves. Not checked here: :func:`evaluate` says clearly when
        it is missing.
    **overrides
        :class:`EvalConfig` fields; ``None`` keeps the regime's value (``levels_um=None``
        keeps the regime's levels).
    """
    if regime not in EVAL_REGIMES:
        raise ValueError(
            f"unknown evaluation regime {regime!r}; choose from {', '.join(EVAL_REGIMES)}"
        )
    fields = {**EVAL_REGIMES[regime], **{k: v for k, v in overrides.items() if v is not None}}
    if data_root is not None:
        fields.setdefault("eval_dir", os.fspath(Path(data_root) / "eval"))
        fields.setdefault("val_dir", os.fspath(Path(data_root) / "val"))
    return EvalConfig(**fields)


def _data_folder(path: str | os.PathLike | None, field_name: str) -> Path:
    """``path`` as an existing folder, or an error that says which data folder is missing.

    The harness never guesses where the data are, so both "not given" and "not there" end
    here with a message that names the field and what it should hold.
    """
    what = {"eval_dir": "the test set (DATA/eval)", "val_dir": "the validation images (DATA/val)"}
    if path is None:
        raise ValueError(
            f"EvalConfig.{field_name} is not set: pass the data root holding eval/ and val/, "
            "e.g. eval_config(data_root='path/to/data') or mpt-deblur evaluate --data PATH"
        )
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{field_name} {str(folder)!r} ({what.get(field_name, 'data')}) does not exist; "
            "point the data root (--data, or eval_config(data_root=...)) at the folder holding "
            "eval/ and val/"
        )
    return folder


def simulation_params(cfg: EvalConfig, wavelength_nm: float, defocus_um: float) -> dict[str, Any]:
    """Concrete simulator parameters for one eval cell (no random draws, no intensity jitter).

    Fixed parameters (rather than a preset's ranges) make the columns of the table differ only
    by defocus and seeded camera noise. The dict is what :func:`~napari_mpt_deblur.simulate.
    make_pair` accepts as ``params_or_cfg``.
    """
    wavelength_nm = _positive(wavelength_nm, "wavelength_nm")
    defocus_um = float(defocus_um)
    camera = cfg.camera
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
        "photons_per_unit": camera.photons_per_unit,
        "read_noise_e": camera.read_noise_e,
        "offset_adu": camera.offset_adu,
        "bit_depth": camera.bit_depth,
        "full_scale_fraction": cfg.full_scale_fraction,
        "gain_adu_per_e": camera.gain_adu_per_e,
        "intensity_scale": 1.0,
        "intensity_gamma": 1.0,
        "background": 0.0,
        "haze_layers": [],
        "source_percentiles": list(cfg.source_percentiles),
    }


def _psf(cfg: EvalConfig, wavelength_nm: float, defocus_um: float) -> np.ndarray:
    from ..simulate import defocus_psf, optics_from_params

    return defocus_psf(optics_from_params(simulation_params(cfg, wavelength_nm, defocus_um)))


def _key(value: float) -> str:
    """A wavelength or level as the string key of the JSON records (``4.0`` -> ``"4"``)."""
    return f"{float(value):g}"


def _image_files(folder: Path, *, recursive: bool = False) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"no such image folder: {folder}")
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in
                  _IMAGE_SUFFIXES)  # fmt: skip


def read_plane(path: str | os.PathLike) -> np.ndarray:
    """The single 2-D plane of an image file, in its stored dtype (``ValueError`` otherwise)."""
    from .._io import read_image

    path = Path(path)

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
    """The camera-noise generator of one simulated pair.

    Keyed by names (a tag such as the set key, the image name, the level), not by positions,
    so that any subset of images or levels gets the same noise as the full run.
    """
    words = [int(seed), zlib.crc32(tag.encode()), zlib.crc32(name.encode()),
             round(float(defocus_um) * 1000)]  # fmt: skip
    return np.random.default_rng(words)


def _simulate(
    source: np.ndarray, cfg: EvalConfig, wavelength_nm: float, defocus_um: float, rng: Any
) -> Any:
    """One eval pair: ``source`` (whole-image percentiles, then cropped) through the protocol."""
    from ..simulate import make_pair

    lo, hi = (float(v) for v in np.percentile(source, list(cfg.source_percentiles)))
    crop = _central_crop(source, cfg.crop_px)
    params = simulation_params(cfg, wavelength_nm, defocus_um)
    return make_pair(crop, params, rng, source_range=(lo, hi))
