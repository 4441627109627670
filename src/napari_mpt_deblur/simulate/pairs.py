"""Training and evaluation pairs: real in-focus images seen through a simulated microscope.

Pipeline for one pair (:func:`make_pair`)::

    source crop ──percentile map──> x ──jitter──> x' = scale·x**gamma + background
        (optionally x' ⊛ Gaussian(content_sigma_px): a softer specimen, see
        ``SimulationConfig.soft_content_probability``)
        sharp   = camera_to_float(camera_response(x'))                 (no blur, no noise)
        blurred = camera_to_float(apply_camera(x' ⊛ PSF(defocus), rng))
        (with ``target_in_focus``: sharp is x' ⊛ PSF(0), what the microscope records in focus;
         with ``target_keeps_noise``: sharp += blurred - camera_to_float(camera_response(
         x' ⊛ PSF)), the input's own noise, so the model deblurs without denoising;
         with ``target_noise_passband`` too, only that noise filtered by
         W = min(1, |OTF(defocus)| / |OTF(0)|); with ``target_passband_blend`` as well, the
         in-focus target plus (1 - W)-filtered (x' - x' ⊛ PSF(0)): the specimen where the
         defocus lost what focus records)

Normalisation convention (used by the trainer and the evaluation harness)
-------------------------------------------------------------------------
Both images come back as float32 in *signal units*: ``(ADU - offset_adu) / (photons_per_unit ·
gain_adu_per_e)``, i.e. camera counts with the offset removed, divided by the expected count of
the source's full scale. Full scale (1.0) is the source's high percentile
(``source_percentiles[1]``, default 99.9) and 0 its low percentile (default 0.5), before the
intensity jitter. So:

* the sharp target is ``min(x', saturation_level)``: in ``[0, ~1]`` (up to ``intensity_scale``
  plus ``background``), exactly the blurred image's units, without noise;
* the blurred input has the same mean as the sharp target (the PSF has unit sum; borders are
  mirrored), lower peaks, shot and read noise (so it can dip slightly below 0) and 12/16-bit
  quantisation;
* one affine map applied to both (e.g. the inference engine's percentile normalisation computed
  on the blurred image) keeps them consistent. Evaluation computes PSNR/SSIM with
  ``data_range`` = the sharp image's range, on these units.

Pass ``source_range`` (e.g. percentiles of the *whole* source image) when making pairs from
crops: per-crop percentiles would stretch an empty background crop to full scale.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .camera import apply_camera, as_generator, camera_response, camera_to_float
from .optics import _kernel_spectrum, blur, defocus_psf
from .parameters import (
    SIMULATION_PRESETS,
    SimulationConfig,
    _as_config,
    _range,
    _require,
    camera_from_params,
    get_simulation_preset,
    list_simulation_presets,
    optics_from_params,
    sample_parameters,
)
from .volume import pseudo_volume, widefield_stack

logger = logging.getLogger(__name__)

# The ranges, presets and parameter draw live in .parameters; they are re-exported here, where
# they were defined before, so existing imports keep working.
__all__ = [
    "SIMULATION_PRESETS",
    "SimulatedPair",
    "SimulationConfig",
    "camera_from_params",
    "get_simulation_preset",
    "list_simulation_presets",
    "make_pair",
    "optics_from_params",
    "sample_parameters",
    "write_pairs",
]


@dataclass(frozen=True, eq=False)
class SimulatedPair:
    """One simulated pair. Unpacks as ``blurred, sharp = make_pair(...)``.

    Attributes
    ----------
    blurred : (M, N) float32 ndarray
        Defocused, noisy camera image in signal units (see the module notes).
    sharp : (M, N) float32 ndarray
        Target in the same units, without blur and noise.
    psf : (K, K) float64 ndarray
        The unit-sum PSF that blurred the in-focus plane (for Richardson-Lucy baselines).
    params : dict
        The parameters used (JSON-serialisable), including ``source_range``.
    """

    blurred: np.ndarray
    sharp: np.ndarray
    psf: np.ndarray
    params: dict[str, Any]

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.blurred, self.sharp))


def _source_range(
    image: np.ndarray, percentiles: Sequence[float], source_range: Sequence[float] | None
) -> tuple[float, float]:
    if source_range is not None:
        lo, hi = _range(source_range, "source_range")
    else:
        lo, hi = (float(v) for v in np.percentile(image, list(percentiles)))
    if not hi > lo:
        # Constant crop: map it to 0 (empty field) rather than amplifying rounding noise.
        logger.debug("source has no intensity range (%s, %s); using unit range", lo, hi)
        hi = lo + 1.0
    return lo, hi


def make_pair(
    sharp: np.ndarray,
    params_or_cfg: Mapping[str, Any] | SimulationConfig | str,
    rng: np.random.Generator | int | None = None,
    *,
    defocus_um: float | None = None,
    defocus_scale: float | None = None,
    source_range: tuple[float, float] | None = None,
) -> SimulatedPair:
    """Simulate a defocused camera image of an in-focus image, and the matching target.

    Parameters
    ----------
    sharp : (M, N) array_like
        Real in-focus image (any real dtype; e.g. a training crop).
    params_or_cfg : dict, SimulationConfig or str
        Concrete parameters (from :func:`sample_parameters`, reproduced exactly), or ranges /
        a preset name to draw them from with ``rng``.
    rng : numpy.random.Generator, int or None
        Drives the parameter draw (if any) and the camera noise: same seed, same pair.
    defocus_um, defocus_scale : float, optional
        Fix the nominal defocus and the nominal-to-effective factor (evaluation at fixed
        levels); with a params dict they replace its defocus.
    source_range : (float, float), optional
        Source values mapped to 0 and 1, instead of the source percentiles of ``sharp``.
        Use the whole image's percentiles when ``sharp`` is a crop.

    Returns
    -------
    SimulatedPair
        ``blurred`` and ``sharp`` float32 in signal units (module notes), ``psf``, ``params``.

    Raises
    ------
    ValueError, TypeError
        For non-2-D or non-numeric images, non-finite values, or incomplete parameters.
    """
    image = np.asarray(sharp)
    if image.dtype.kind not in "uif":
        raise TypeError(f"sharp must be a real numeric image; got dtype {image.dtype}")
    if image.ndim != 2:
        raise ValueError(f"sharp must be 2-D (M, N); got shape {image.shape}")
    if image.dtype.kind == "f" and not np.all(np.isfinite(image)):
        raise ValueError("sharp contains NaN or infinite values")
    gen = as_generator(rng)
    if isinstance(params_or_cfg, (SimulationConfig, str)):
        params = sample_parameters(
            params_or_cfg, gen, defocus_um=defocus_um, defocus_scale=defocus_scale
        )
    elif isinstance(params_or_cfg, Mapping):
        params = json.loads(json.dumps(dict(params_or_cfg)))  # deep copy; proves serialisable
        if defocus_um is not None or defocus_scale is not None:
            _require(params, ("defocus_nominal_um", "defocus_scale"))
            nominal = params["defocus_nominal_um"] if defocus_um is None else float(defocus_um)
            scale = params["defocus_scale"] if defocus_scale is None else float(defocus_scale)
            params.update(
                defocus_nominal_um=nominal, defocus_scale=scale, defocus_um=nominal * scale
            )
    else:
        raise TypeError(
            "params_or_cfg must be a parameter dict, a SimulationConfig or a preset name; "
            f"got {type(params_or_cfg).__name__}"
        )
    optics = optics_from_params(params)
    camera = camera_from_params(params)

    lo, hi = _source_range(image, params.get("source_percentiles", (0.5, 99.9)), source_range)
    params["source_range"] = [lo, hi]
    x = (image.astype(np.float32) - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    np.maximum(x, 0.0, out=x)
    gamma = float(params.get("intensity_gamma", 1.0))
    if gamma != 1.0:
        np.power(x, gamma, out=x)
    x *= np.float32(params.get("intensity_scale", 1.0))
    x += np.float32(params.get("background", 0.0))
    sigma = float(params.get("content_sigma_px", 0.0) or 0.0)
    if sigma > 0:  # a smoother specimen: the target itself is soft, not a blurred version
        from scipy.ndimage import gaussian_filter

        x = gaussian_filter(x, sigma, mode="reflect").astype(np.float32, copy=False)

    psf = defocus_psf(optics)
    signal = blur(x, psf.astype(np.float32))
    target = specimen = x
    in_focus = dataclasses.replace(optics, defocus_um=0.0)
    if params.get("target_in_focus", False):
        target = signal if optics.defocus_um == 0 else blur(x, defocus_psf(in_focus).astype(
            np.float32))
    haze = params.get("haze_layers") or []
    if haze:
        volume, z_um = pseudo_volume(x, haze)
        # Focus 0 images the section in focus; focus -d puts the section at defocus +d, like
        # the PSF above (which matters only with an index mismatch).
        hazy = widefield_stack(
            volume[1:],
            optics,
            focus_um=[0.0, -optics.defocus_um],
            z_um=z_um[1:],
            warn_truncation=False,  # faint, far-out-of-focus haze: cut tails do not matter
        )
        target = specimen = x + hazy[0]
        signal = signal + hazy[1]

    blurred = camera_to_float(apply_camera(signal, camera, gen), camera)
    target = camera_to_float(camera_response(target, camera), camera)
    if params.get("target_keeps_noise", False):
        noise = blurred - camera_to_float(camera_response(signal, camera), camera)
        if params.get("target_noise_passband", False) and optics.defocus_um != 0:
            # Keep the noise where the defocus passes texture as well as focus does (W = 1: a
            # blind model cannot tell texture from noise there); drop it where the defocus
            # erased the texture (W = 0: whatever the input shows there is noise).
            psf_in_focus = defocus_psf(in_focus)
            noise = _passband_filtered(noise, psf, psf_in_focus)
            if params.get("target_passband_blend", False):
                # The specimen where the defocus erased what focus records, the in-focus image
                # where it did not; mirror padding keeps the periodic filter from wrapping one
                # border's edges onto the other.
                specimen = camera_to_float(camera_response(specimen, camera), camera)
                target = target + _passband_filtered(specimen - target, psf, psf_in_focus,
                                                     complement=True, pad=16)
        target = target + noise
    return SimulatedPair(blurred=blurred, sharp=target, psf=psf, params=params)


def _otf_magnitude(psf: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """|OTF| of ``psf`` on the rfft2 grid of ``shape`` (a larger PSF is cropped to its centre)."""
    rows, cols = min(psf.shape[0], shape[0]), min(psf.shape[1], shape[1])
    top, left = (psf.shape[0] - rows) // 2, (psf.shape[1] - cols) // 2
    centre = psf[top : top + rows, left : left + cols]
    return np.abs(_kernel_spectrum(centre, shape, np.dtype(np.float64)))


def _passband_filtered(
    image: np.ndarray,
    psf: np.ndarray,
    psf_in_focus: np.ndarray,
    *,
    complement: bool = False,
    pad: int = 0,
) -> np.ndarray:
    """``image`` filtered by W(f) = min(1, |OTF_defocus(f)| / |OTF_in_focus(f)|), or by 1 - W.

    W is the share of what focus records that the defocused microscope still passes
    (``SimulationConfig.target_noise_passband``, ``target_passband_blend``). ``pad`` mirror-pads
    the image first (at most to its size minus one).
    """
    m, n = image.shape
    pad = min(pad, m - 1, n - 1)
    padded = np.pad(image, pad, mode="reflect") if pad > 0 else image
    shape = padded.shape
    ratio = _otf_magnitude(psf, shape) / np.maximum(_otf_magnitude(psf_in_focus, shape), 1e-6)
    weight = np.minimum(ratio, 1.0)
    if complement:
        weight = 1.0 - weight
    filtered = np.fft.irfft2(np.fft.rfft2(padded) * weight, s=shape)
    return filtered[pad : pad + m, pad : pad + n].astype(image.dtype, copy=False)


# --------------------------------------------------------------------------------------------
# Writing pair folders


def _collect_sources(sources: Any) -> list[tuple[str, np.ndarray | None]]:
    """Expand files/folders/globs into (label, array-or-None) entries (files are read later)."""
    from .._io import expand_inputs

    if isinstance(sources, (str, os.PathLike, np.ndarray)):
        sources = [sources]
    entries: list[tuple[str, np.ndarray | None]] = []
    for item in sources:
        if isinstance(item, np.ndarray):
            entries.append((f"array[{len(entries)}]", item))
            continue
        files = list(expand_inputs([item]))
        if not files:
            raise ValueError(f"source {str(item)!r} holds no image files")
        entries.extend((str(p), None) for p in files)
    if not entries:
        raise ValueError("sources is empty; give in-focus image files, folders or arrays")
    return entries


def _as_plane(array: np.ndarray, label: str) -> np.ndarray:
    plane = np.squeeze(np.asarray(array))
    if plane.ndim != 2:
        raise ValueError(
            f"source {label} must be a single 2-D plane; got shape {np.shape(array)} "
            "(split channels / z planes into separate files first)"
        )
    return plane


def _crop_shape(crop: int | Sequence[int] | None) -> tuple[int, int] | None:
    if crop is None:
        return None
    if isinstance(crop, (int, np.integer)):
        crop = (int(crop), int(crop))
    shape = tuple(int(c) for c in crop)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"crop must be a positive int or (height, width); got {crop!r}")
    return shape  # type: ignore[return-value]


def _write_json_new(path: Path, data: Any) -> None:
    """Write JSON atomically, refusing to replace an existing file (even in a race)."""
    text = json.dumps(data, indent=2, sort_keys=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
        try:
            os.link(tmp, path)  # atomic, and fails with FileExistsError instead of overwriting
        except FileExistsError:
            raise
        except OSError:  # file systems without hard links: check, then rename
            if path.exists():
                raise FileExistsError(f"{str(path)!r} already exists") from None
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_pairs(
    sources: Any,
    out_dir: str | os.PathLike,
    n: int,
    cfg: SimulationConfig | str,
    rng: np.random.Generator | int | None = None,
    crop: int | Sequence[int] | None = None,
    *,
    defocus_um: float | None = None,
    defocus_scale: float | None = None,
    save_psf: bool = False,
    prefix: str = "pair",
    start_index: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Write ``n`` simulated pairs as ``blurred/``, ``sharp/`` TIFF folders plus parameters.

    Layout: ``out_dir/blurred/<name>.tif``, ``out_dir/sharp/<name>.tif`` (float32, signal units,
    see the module notes), ``out_dir/params/<name>.json`` (the parameters, source file and crop
    box), optionally ``out_dir/psf/<name>.tif``, and ``out_dir/simulation.json`` (the config).
    Nothing existing is overwritten: clashing names raise ``FileExistsError`` before any file
    is written (use ``prefix`` / ``start_index`` to add more pairs to a folder).

    Parameters
    ----------
    sources : path, array or sequence of them
        In-focus images: files, folders (their TIFF/PNG files), glob patterns or 2-D arrays.
    out_dir : path
        Output folder (created).
    n : int
        Number of pairs.
    cfg : SimulationConfig or str
        Parameter ranges or preset name.
    rng : numpy.random.Generator, int or None
        Drives source choice, crop position, parameters and noise.
    crop : int or (int, int), optional
        Random crop size; ``None`` uses whole images.
    defocus_um, defocus_scale : float, optional
        Fix the nominal defocus / defocus scale (see :func:`make_pair`).
    save_psf : bool
        Also write each pair's PSF.
    prefix, start_index : str, int
        Pair names are ``f"{prefix}_{index:05d}"`` from ``start_index``.
    progress : callable(done, total), optional
        Called after each pair.

    Returns
    -------
    list of str
        The pair names written.
    """
    from .._io import read_image, write_image

    cfg = _as_config(cfg)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer; got {n!r}")
    crop_shape = _crop_shape(crop)
    gen = as_generator(rng)
    entries = _collect_sources(sources)
    out = Path(out_dir).expanduser()
    names = [f"{prefix}_{i:05d}" for i in range(start_index, start_index + int(n))]
    folders = ["blurred", "sharp", "params"] + (["psf"] if save_psf else [])
    suffix = {"params": ".json"}
    targets = [out / f / (name + suffix.get(f, ".tif")) for name in names for f in folders]
    clashes = [str(p) for p in targets if p.exists()]
    if clashes:
        raise FileExistsError(
            f"{len(clashes)} output files already exist (e.g. {clashes[0]!r}); choose another "
            "out_dir, prefix or start_index"
        )
    sim_json = out / "simulation.json"
    if sim_json.exists():
        existing = json.loads(sim_json.read_text(encoding="utf-8"))
        if existing != cfg.to_dict():
            raise FileExistsError(
                f"{str(sim_json)!r} describes a different simulation config; use another out_dir"
            )

    def prepare_output() -> None:
        # Only once the first pair exists, so a bad source leaves no half-made output folder.
        for folder in folders:
            (out / folder).mkdir(parents=True, exist_ok=True)
        if not sim_json.exists():
            _write_json_new(sim_json, cfg.to_dict())

    planes: dict[int, tuple[np.ndarray, tuple[float, float]]] = {}

    def load(index: int) -> tuple[np.ndarray, tuple[float, float]]:
        if index not in planes:
            label, array = entries[index]
            data = array if array is not None else read_image(label)[0]
            plane = _as_plane(data, label)
            lo, hi = (float(v) for v in np.percentile(plane, list(cfg.source_percentiles)))
            planes[index] = (plane, (lo, hi))
        return planes[index]

    for done, name in enumerate(names, start=1):
        index = int(gen.integers(len(entries)))
        plane, source_range = load(index)
        box = [0, 0, plane.shape[0], plane.shape[1]]
        if crop_shape is not None:
            ch, cw = crop_shape
            if ch > plane.shape[0] or cw > plane.shape[1]:
                raise ValueError(
                    f"crop {crop_shape} is larger than source {entries[index][0]} "
                    f"of shape {plane.shape}"
                )
            y = int(gen.integers(plane.shape[0] - ch + 1))
            x = int(gen.integers(plane.shape[1] - cw + 1))
            box = [y, x, ch, cw]
            view = plane[y : y + ch, x : x + cw]
        else:
            view = plane
        pair = make_pair(
            view,
            cfg,
            gen,
            defocus_um=defocus_um,
            defocus_scale=defocus_scale,
            source_range=source_range,
        )
        if done == 1:
            prepare_output()
        pixel = pair.params["pixel_size_um"]
        meta = {"axes": "YX", "pixel_size_um": (pixel, pixel)}
        write_image(out / "blurred" / f"{name}.tif", pair.blurred, metadata=meta, overwrite=False)
        write_image(out / "sharp" / f"{name}.tif", pair.sharp, metadata=meta, overwrite=False)
        if save_psf:
            write_image(
                out / "psf" / f"{name}.tif", pair.psf.astype(np.float32), metadata=meta,
                overwrite=False,
            )  # fmt: skip
        record = {
            **pair.params,
            "source": entries[index][0],
            "crop_box_yxhw": box,
        }
        _write_json_new(out / "params" / f"{name}.json", record)
        logger.debug("wrote pair %s (defocus %.2f µm)", name, pair.params["defocus_um"])
        if progress is not None:
            progress(done, int(n))
    return names
