"""Scoring: run every method on every eval cell and record PSNR/SSIM (:func:`evaluate`).

This is the one loop behind every quality number the project reports. For each image of each
set and each defocus level it simulates the pair (:mod:`.protocol`), runs the blurred input,
Richardson–Lucy with the true PSF (:mod:`.baselines`) and each model column (:mod:`.columns`)
through the inference engine, and scores them against the sharp reference; the real BBBC006
pair is scored after an affine intensity fit (:func:`fit_affine`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import __version__
from ..metrics import psnr, ssim
from ..models.info import model_info, preset_name
from .baselines import (
    RLTuning,
    _default_tuning_cells,
    richardson_lucy_deconvolve,
    tune_richardson_lucy,
)
from .columns import _is_blind, _resolve_models, _unwrap
from .figures import _best_window
from .protocol import (
    BLURRED,
    IMAGE_SETS,
    REAL_PAIR_FOLDER,
    RICHARDSON_LUCY,
    RICHARDSON_LUCY_REAL,
    EvalConfig,
    _central_crop,
    _data_folder,
    _image_files,
    _psf,
    _simulate,
    noise_rng,
    read_plane,
)
from .results import EvalResult, Score

if TYPE_CHECKING:
    from ..models.info import DeblurModel
    from ..simulate.optics import OpticsHints
    from .columns import Ensembled

logger = logging.getLogger(__name__)

__all__ = ["evaluate", "fit_affine"]


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


def _run_methods(
    blurred: np.ndarray,
    psf: np.ndarray,
    rl_iter: int,
    models: Mapping[str, DeblurModel | Ensembled],
    device: str,
    optics: OpticsHints | None = None,
) -> Iterator[tuple[str, np.ndarray, float]]:
    """The baselines and each model on one blurred image. ``optics``, the image's true
    microscope, is what a user who knows it would give: an optics-conditioned model uses it
    (unless its column is blind), every other model ignores it."""
    yield BLURRED, blurred, 0.0
    started = time.perf_counter()
    restored = richardson_lucy_deconvolve(blurred, psf, rl_iter)
    yield RICHARDSON_LUCY, restored, time.perf_counter() - started
    if models:
        from ..engine.predict import deblur

        for name, entry in models.items():
            model, views = _unwrap(entry)
            started = time.perf_counter()
            out = deblur(blurred.astype(np.float32), model, axes="YX", device=device,
                         ensemble=views, optics=None if _is_blind(entry) else optics)
            yield name, out, time.perf_counter() - started


def evaluate(
    models: Mapping[str, DeblurModel | str | os.PathLike | Ensembled | None] | None,
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
    cfg : EvalConfig
        The protocol and where the data are, e.g. ``eval_config("20x", data_root=DATA)``. Its
        ``eval_dir`` must be set, and its ``val_dir`` too unless ``rl_tuning`` is given: the
        package has no default data location (the default ``EvalConfig()`` has none).
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
        The eval or validation folder, an image-set folder or the real pair is missing or empty.
    ValueError
        Bad configuration (``eval_dir``/``val_dir`` not set included), or a tuning without the
        needed cells.
    """
    cfg = EvalConfig() if cfg is None else cfg
    if not isinstance(cfg, EvalConfig):
        raise TypeError(f"cfg must be an EvalConfig; got {type(cfg).__name__}")
    started = time.perf_counter()
    eval_dir = _data_folder(cfg.eval_dir, "eval_dir")
    files: dict[str, list[Path]] = {}
    for key in cfg.sets:
        found = _image_files(eval_dir / IMAGE_SETS[key].folder)
        if not found:
            raise FileNotFoundError(f"no images in {eval_dir / IMAGE_SETS[key].folder}")
        files[key] = found[: cfg.max_images] if cfg.max_images else found
    pair_files = _real_pair_files(eval_dir / REAL_PAIR_FOLDER) if cfg.real_pair else None
    resolved = _resolve_models(models, cfg.device)
    if rl_tuning is None:
        val_dir = _data_folder(cfg.val_dir, "val_dir")
        rl_tuning = tune_richardson_lucy(val_dir, cfg, cache_path=rl_cache)
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
        models={name: _model_info(*_unwrap(m), blind=_is_blind(m)) for name, m in resolved.items()},
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
                    pair.blurred, psf, n_iter, resolved, cfg.device,
                    dataclasses.replace(cfg.optics, wavelength_nm=wavelength),
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


def _model_info(model: DeblurModel, views: int = 1, blind: bool = False) -> dict[str, Any]:
    """What ``results.json`` records of a model column: read through the model contract
    (:func:`~napari_mpt_deblur.models.info.model_info`), so a network with a
    :class:`~napari_mpt_deblur.models.info.ModelInfo`, an old ``dict`` info or none at all is
    described the same way as the engine and the widgets describe it."""
    info = model_info(model).to_dict()
    keep = ("name", "source", "sha256", "arch", "routing", "training", "simulation", "metrics")
    out = {k: info[k] for k in keep if k in info}
    if views > 1:
        out["ensemble"] = views
    if model_info(model).optics_conditioned:
        # what the column was told: each set's true optics, or nothing (a "@blind" column)
        out["optics"] = "withheld" if blind else "true optics of each image set"
    preset = preset_name(model)
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
    models: Mapping[str, DeblurModel | Ensembled],
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
    optics = dataclasses.replace(cfg.optics, wavelength_nm=wavelength)
    for method, out, seconds in _run_methods(blurred, psf, n_iter, models, cfg.device, optics):
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
