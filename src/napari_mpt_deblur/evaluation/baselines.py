"""The Richardson–Lucy baseline, run with the true PSF, and the tuning of its iteration count.

A deblurring model is only worth shipping if it beats the classical answer to the same
problem given every advantage: Richardson–Lucy with the PSF the image was simulated with. Its
one parameter, the iteration count, is its regulariser, so it is tuned per emission wavelength
and defocus level, on validation images only (tuning on ``eval/`` would flatter it), and cached
in a JSON file (``cache_path``; the command-line tools keep it in ``benchmarks/results``) so that
the table is reproducible and the tuning is paid once.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..metrics import psnr, ssim
from .protocol import (
    IMAGE_SETS,
    EvalConfig,
    _data_folder,
    _image_files,
    _key,
    _non_negative,
    _positive,
    _simulate,
    noise_rng,
    read_plane,
)

logger = logging.getLogger(__name__)

__all__ = ["RL_CANDIDATES", "RLTuning", "richardson_lucy_deconvolve", "tune_richardson_lucy"]

#: Iteration counts tried by :func:`tune_richardson_lucy` (up to ``EvalConfig.rl_max_iter``).
RL_CANDIDATES = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100, 125, 150,
                 200, 250, 300)  # fmt: skip
_RL_PATIENCE = 3  # candidates in a row below the best before tuning stops early
_CACHE_FORMAT = 1


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
    from .._io import atomic_write

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
    _check_not_eval(root, None if cfg.eval_dir is None else Path(cfg.eval_dir))
    files = _image_files(_data_folder(root, "val_dir"), recursive=True)
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
