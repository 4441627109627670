"""The user's microscope as a simulation: replay pairs and a trustworthy fine-tuning score.

A model trained at one objective (the shipped ones: 20×, NA ≈ 0.5, dry, 0.645 µm/px) meets a lab
whose point-spread function belongs to another family (e.g. NA 1.4 oil at 0.1 µm/px). The lab
knows its optics (pixel size, NA, emission, immersion), so the physics of its blur can be
simulated exactly, on any in-focus content. Two things follow:

* **Replay at the user's optics**: simulated (blurred, sharp) pairs with the user's PSF family
  teach the model the new blur directly, which self-supervision on the user's blurry images alone
  cannot (``f(G(E)) ≈ E`` only teaches how to undo the *extra* blur ``G``).
* **A score that can be trusted**: the PSNR on fixed simulated pairs at the user's optics, built
  from real in-focus images that fine-tuning never sees (the bundled samples). Unlike the re-blur
  PSNR on the user's own crop, which rewards whatever the re-blur loss trains, it measures
  restoration of in-focus truth, in focus included, so a run that degrades the model scores
  lower. ``benchmarks/finetune_domain_shift.py`` checks that it ranks checkpoints like the true
  held-out PSNR (Spearman correlation).
* **Pairs from the user's own content** (:func:`start_output_sources`: the start model's output
  on the user's images; :func:`sharpest_crop_sources`) were measured against it and rank
  checkpoints worse: their "truth" keeps the blur and noise the start model left, so restoring
  better than the start is marked down (docs/finetuning.md). They stay for comparison.

The model's own simulation (:func:`model_simulation`, from its metadata) is the starting point.
The defocus range is the model's own training range measured in depths of field
(``λ·n / NA²``), carried over to the user's optics, unless the user says how far out of focus
their images are.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .._dataclass_io import renamed_arguments
from ..engine.normalize import IntensityNormalization, normalize, percentile_range
from ..models.info import model_info
from ..simulate import SimulationConfig, optics
from .data import SourceImage, build_validation_set
from .losses import haar_dwt

logger = logging.getLogger(__name__)

#: The selection score's pairs do not depend on the run's seed: one yardstick for every run.
SCORE_SEED = 2027

__all__ = [
    "SCORE_SEED",
    "SimulatedScore",
    "bundled_infocus_sources",
    "depth_of_field_um",
    "estimate_noise_sigma",
    "match_camera",
    "mean_wavelength",
    "model_simulation",
    "planes_noise_sigma",
    "sharpest_crop_sources",
    "simulation_for_optics",
    "start_output_sources",
]


@renamed_arguments(refractive_index="immersion_index")
def depth_of_field_um(wavelength_nm: float, numerical_aperture: float,
                      immersion_index: float = 1.0) -> float:
    """Deprecated: :func:`napari_mpt_deblur.simulate.depth_of_field_um`, the one definition
    (keyword arguments; this alias keeps its old order, wavelength first)."""
    warnings.warn("napari_mpt_deblur.train.optics_domain.depth_of_field_um is deprecated; use "
                  "napari_mpt_deblur.simulate.depth_of_field_um", DeprecationWarning, stacklevel=3)
    return optics.depth_of_field_um(numerical_aperture=numerical_aperture,
                                    wavelength_nm=wavelength_nm, immersion_index=immersion_index)


def model_simulation(model: nn.Module, override: str | None = None) -> SimulationConfig:
    """The simulation ``model`` was trained with: the preset named ``override``, else the
    model's metadata (a preset name or the config's fields), else ``"bbbc006"``.

    Fine-tuning carries it over to the user's optics (:func:`simulation_for_optics`) for its
    replay pairs and selection score; comparisons that must score like a run (the domain-shift
    benchmark) start from the same simulation.
    """
    from ..simulate import get_simulation_preset

    if override is not None:
        return get_simulation_preset(override)
    sim = model_info(model).simulation
    if isinstance(sim, str):
        try:
            return get_simulation_preset(sim)
        except ValueError:
            logger.warning("model's simulation preset %r is unknown; using 'bbbc006'", sim)
    elif isinstance(sim, Mapping):
        names = {f.name for f in dataclasses.fields(SimulationConfig)}
        fields = {k: v for k, v in sim.items() if k in names}
        try:
            if fields:
                return SimulationConfig.from_dict(fields)
            if isinstance(sim.get("preset"), str):
                return get_simulation_preset(sim["preset"])
        except (TypeError, ValueError) as exc:
            logger.warning("model's simulation metadata is unusable (%s); using 'bbbc006'", exc)
    return get_simulation_preset("bbbc006")


def mean_wavelength(sim: SimulationConfig) -> float:
    """The central emission wavelength of a simulation (its choices, else its range), nm."""
    if sim.wavelength_nm_choices:
        return float(np.mean(sim.wavelength_nm_choices))
    return float(np.mean(sim.wavelength_nm_range))


@renamed_arguments(refractive_index="immersion_index")
def simulation_for_optics(
    base: SimulationConfig,
    *,
    pixel_size_um: float,
    numerical_aperture: float,
    wavelength_nm: float | None = None,
    immersion_index: float | None = None,
    max_defocus_um: float | None = None,
) -> SimulationConfig:
    """``base`` (camera, content statistics, near-focus share) moved to the user's optics.

    Defocus ranges, the defocus grid step and the haze distances are rescaled by the ratio of
    depths of field, so the simulated blur covers the same *relative* range the model was trained
    on; ``max_defocus_um`` (the deepest defocus the user expects) overrides the upper end.
    ``refractive_index`` is the deprecated name of ``immersion_index``.
    """
    n = float(immersion_index or base.immersion_index)
    if numerical_aperture >= n:
        raise ValueError(
            f"numerical_aperture {numerical_aperture} must be below the immersion index {n}; "
            "give the immersion's refractive index (e.g. 1.515 for oil) with a high-NA objective"
        )
    if pixel_size_um <= 0:
        raise ValueError(f"pixel_size_um must be positive; got {pixel_size_um}")
    wavelength = float(wavelength_nm or mean_wavelength(base))
    base_dof = optics.depth_of_field_um(
        numerical_aperture=float(np.mean(base.numerical_aperture_range)),
        wavelength_nm=mean_wavelength(base), immersion_index=float(base.immersion_index))
    ratio = optics.depth_of_field_um(numerical_aperture=numerical_aperture,
                                     wavelength_nm=wavelength, immersion_index=n) / base_dof

    def scaled(pair: tuple[float, float]) -> tuple[float, float]:
        return (pair[0] * ratio, pair[1] * ratio)

    lo, hi = scaled(base.defocus_um_range)
    if max_defocus_um is not None:
        if max_defocus_um <= 0:
            raise ValueError(f"max_defocus_um must be positive; got {max_defocus_um}")
        hi = float(max_defocus_um)
        lo = min(lo, hi / 4)
    return dataclasses.replace(
        base,
        name=f"{base.name}@NA{numerical_aperture:g}/{pixel_size_um:g}um",
        numerical_aperture_range=(float(numerical_aperture), float(numerical_aperture)),
        wavelength_nm_choices=(wavelength,),
        wavelength_nm_range=(wavelength, wavelength),
        immersion_index=n,
        sample_index=None,
        depth_um_range=(0.0, 0.0),
        pixel_size_um=float(pixel_size_um),
        defocus_um_range=(lo, hi),
        near_focus_um_range=scaled(base.near_focus_um_range),
        defocus_step_um=max(base.defocus_step_um * ratio, 1e-3),
        na_step=min(base.na_step, 0.01),
        haze_distance_um_range=scaled(base.haze_distance_um_range),
    )


def bundled_infocus_sources(simulation: SimulationConfig) -> list[SourceImage]:
    """The package's real in-focus images (BBBC006 actin; ExampleHuman DNA and actin), as
    simulator sources: always present, licensed, and never used for fine-tuning."""
    from .._sample_data import load_nuclei_actin_sample, load_sample

    planes = [("sample_actin", load_sample().sharp)]
    planes += [(f"sample_{c.name}", c.sharp) for c in load_nuclei_actin_sample()]
    pct = list(simulation.source_percentiles)
    sources = []
    for name, plane in planes:
        plane = np.asarray(plane, dtype=np.float32)
        lo, hi = (float(v) for v in np.percentile(plane, pct))
        if hi > lo:
            sources.append(SourceImage(name=name, plane=plane, value_range=(lo, hi)))
    return sources


def _densest_box(plane: np.ndarray, side: int) -> tuple[int, int]:
    """Top-left corner of the ``side``² window with the highest mean (sparse nuclei images are
    mostly background; a pair cut from background scores nothing)."""
    h, w = plane.shape
    step_y, step_x = max(1, (h - side) // 4 or 1), max(1, (w - side) // 4 or 1)
    best, box = -math.inf, (0, 0)
    for y in range(0, h - side + 1, step_y):
        for x in range(0, w - side + 1, step_x):
            value = float(plane[y : y + side, x : x + side].mean())
            if value > best:
                best, box = value, (y, x)
    return box


def _spread(planes: Sequence[np.ndarray], count: int) -> list[int]:
    """``count`` plane indices spread evenly over the list (all of them when fewer)."""
    if len(planes) <= count:
        return list(range(len(planes)))
    return sorted({int(i) for i in np.rint(np.linspace(0, len(planes) - 1, count))})


def _source(name: str, plane: np.ndarray, simulation: SimulationConfig) -> SourceImage | None:
    lo, hi = (float(v) for v in np.percentile(plane, list(simulation.source_percentiles)))
    return SourceImage(name=name, plane=plane, value_range=(lo, hi)) if hi > lo else None


@torch.no_grad()
def start_output_sources(
    model: nn.Module,
    planes: Sequence[np.ndarray],
    simulation: SimulationConfig,
    *,
    device: torch.device | str = "cpu",
    names: Sequence[str] | None = None,
    window: int = 320,
    count: int = 16,
) -> list[SourceImage]:
    """Pseudo-sharp sources from the user's own images: the start model's output on them.

    The user's images are all blurry, so their sharp truth is unknown; the model we start from
    restores them partly, and its output has the user's content (structures, density, scale)
    with less blur than the input. Re-blurred at the user's optics, such a plane gives pairs
    whose *content* is the user's. Computed once, with the start model's weights, before any
    training step: the score's pairs never move with the model being trained.

    ``count`` planes (spread over the list) each give the ``window``² window with the most
    signal; the output is in the planes' own intensity units.
    """
    from ..engine.predict import deblur

    names = list(names) if names is not None else [f"image{i}" for i in range(len(planes))]
    was_training = model.training
    sources = []
    try:
        for i in _spread(planes, count):
            plane = np.asarray(planes[i], dtype=np.float32)
            side = min(window, *plane.shape)
            y, x = _densest_box(plane, side)
            crop = plane[y : y + side, x : x + side]
            restored = np.asarray(deblur(crop, model, axes="YX", device=device, tile=0,
                                         amp=False), dtype=np.float32)
            src = _source(f"{names[i]} (start model output)", restored, simulation)
            if src is not None:
                sources.append(src)
    finally:
        model.train(was_training)
    if not sources:
        raise ValueError("the start model's output on the images is flat; no score pairs")
    return sources


def focus_measure(crop: np.ndarray) -> float:
    """How in focus a crop is: the share of its (lightly smoothed) variation that is fine
    detail, ``std(g₁.₅ − g₄) / std(g₁.₅)`` with ``gσ`` a Gaussian of σ px. The σ 1.5 smoothing
    keeps pixel noise (a dim camera) from reading as detail; the ratio makes bright and dim,
    dense and sparse crops comparable. 0 for a flat crop."""
    from scipy.ndimage import gaussian_filter

    crop = np.asarray(crop, dtype=np.float32)
    fine = gaussian_filter(crop, 1.5)
    spread = float(fine.std())
    if not spread > 1e-12 * max(1.0, float(np.abs(fine).max())):
        return 0.0
    return float((fine - gaussian_filter(crop, 4.0)).std() / spread)


def sharpest_crop_sources(
    planes: Sequence[np.ndarray],
    simulation: SimulationConfig,
    *,
    names: Sequence[str] | None = None,
    window: int = 192,
    count: int = 16,
) -> list[SourceImage]:
    """The user's own least-blurred content as sources: the sharpest ``window``² crop of each
    plane by :func:`focus_measure`, the ``count`` sharpest of those. Their residual blur and
    noise become part of the "truth" of the pairs made from them."""
    names = list(names) if names is not None else [f"image{i}" for i in range(len(planes))]
    found = []
    for i, plane in enumerate(planes):
        plane = np.asarray(plane, dtype=np.float32)
        side = min(window, *plane.shape)
        step = max(1, side // 2)
        best = (-1.0, 0, 0)
        for y in range(0, plane.shape[0] - side + 1, step):
            for x in range(0, plane.shape[1] - side + 1, step):
                value = focus_measure(plane[y : y + side, x : x + side])
                if value > best[0]:
                    best = (value, y, x)
        value, y, x = best
        found.append((value, i, plane[y : y + side, x : x + side]))
    found.sort(key=lambda item: -item[0])
    sources = [_source(f"{names[i]} (sharpest crop)", crop, simulation)
               for _, i, crop in found[:count]]
    sources = [s for s in sources if s is not None]
    if not sources:
        raise ValueError("every crop of the images is flat; no score pairs")
    return sources


def estimate_noise_sigma(x: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian noise level from the Haar HH band (median absolute deviation / 0.6745).

    For white noise of std σ the orthonormal HH coefficients have std σ, and image structure
    rarely reaches HH, so the robust estimate follows the noise rather than the content.
    Returns a (N, 1, 1, 1) tensor.
    """
    _, hf = haar_dwt(x.float())
    hh = hf[:, :, 2].flatten(1)
    return (hh.abs().median(dim=1).values / 0.6745).reshape(-1, 1, 1, 1).to(x.dtype)


def planes_noise_sigma(planes: Sequence[np.ndarray],
                       normalization: IntensityNormalization | None = None) -> float:
    """Median noise level of whole planes in the engine's normalised units (each plane by its
    own percentiles, as the engine and the simulated pairs are normalised)."""
    normalization = normalization or IntensityNormalization()
    sigmas = []
    for plane in planes:
        lo, hi = percentile_range(plane, normalization)
        image = torch.from_numpy(np.ascontiguousarray(normalize(plane, lo, hi), np.float32))
        sigmas.append(float(estimate_noise_sigma(image[None, None])))
    return float(np.median(sigmas))


def match_camera(
    simulation: SimulationConfig,
    target_sigma: float,
    *,
    sources: Sequence[SourceImage] | None = None,
    normalization: IntensityNormalization | None = None,
    crop_size: int = 256,
    seed: int = 0,
) -> SimulationConfig:
    """``simulation`` with the photon count set so its blurred images are as noisy as the user's.

    A model trained on bright images meets a dim camera as much as a new objective. Whole
    simulated planes (central crops of the sources, at mid-range defocus) are measured exactly
    as the user's planes are (:func:`planes_noise_sigma`), over a grid of photon counts (read
    noise, offset and bit depth stay the model's); the photon range becomes ±50 % around the
    count that matches the user's level.
    """
    from ..simulate import make_pair

    sources = list(sources) if sources is not None else bundled_infocus_sources(simulation)
    lo, hi = simulation.defocus_um_range
    crops = []
    for src in sources:
        h, w = src.plane.shape
        y, x = max(0, (h - crop_size) // 2), max(0, (w - crop_size) // 2)
        crops.append((src.plane[y : y + crop_size, x : x + crop_size], src.value_range))
    photons = np.geomspace(1.0, 1e5, 13)
    sigmas = []
    for p in photons:
        sim = dataclasses.replace(simulation, photons_per_unit_range=(float(p), float(p)),
                                  haze_probability=0.0)
        rng = np.random.default_rng([seed, 31337])
        planes = [make_pair(crop, sim, rng, defocus_um=0.5 * (lo + hi),
                            source_range=value_range).blurred for crop, value_range in crops]
        sigmas.append(planes_noise_sigma(planes, normalization))
    # noise falls with the photon count: interpolate log(photons) against log(sigma)
    order = np.argsort(sigmas)
    log_sigma = np.log(np.maximum(np.asarray(sigmas)[order], 1e-12))
    log_photons = np.log(photons[order])
    match = float(np.exp(np.interp(np.log(max(target_sigma, 1e-12)), log_sigma, log_photons)))
    return dataclasses.replace(simulation, photons_per_unit_range=(match / 1.5, match * 1.5))


class SimulatedScore:
    """PSNR/SSIM on fixed simulated pairs at given optics, from in-focus 0 to the deepest
    defocus: the fine-tuning selection score and the number the panel plots.

    Parameters
    ----------
    simulation : SimulationConfig
        The user's optics (:func:`simulation_for_optics`) or the model's own simulation.
    sources : list of SourceImage, optional
        In-focus images never used in training; default :func:`bundled_infocus_sources`.
    n_pairs, patch_size, seed :
        The fixed pairs: ``n_pairs`` levels evenly spaced from 0 µm to the deepest defocus.
    normalization : IntensityNormalization, optional
        The model's intensity normalisation.
    key : str
        Prefix of the returned names (``<key>_psnr``, ``<key>_ssim``,
        ``<key>_psnr_by_defocus_um``), so scores made from different sources can be recorded
        side by side: "sim" for the bundled images, "user" for the user's own
        (:func:`start_output_sources`).
    """

    def __init__(
        self,
        simulation: SimulationConfig,
        *,
        sources: Sequence[SourceImage] | None = None,
        n_pairs: int = 16,
        patch_size: int = 128,
        seed: int = 2027,
        normalization: IntensityNormalization | None = None,
        key: str = "sim",
    ) -> None:
        self.key = key
        hi = float(simulation.defocus_um_range[1])
        score_sim = dataclasses.replace(simulation, defocus_um_range=(0.0, hi),
                                        near_focus_probability=0.0)
        self.simulation = score_sim
        self.sources = list(sources) if sources is not None else bundled_infocus_sources(
            score_sim)
        pairs = build_validation_set(self.sources, score_sim, n_patches=n_pairs,
                                     patch_size=patch_size, seed=seed,
                                     normalization=normalization)
        self.blurred, self.sharp = pairs.blurred, pairs.sharp
        self.defocus_um = [abs(float(p.get("defocus_um", math.nan))) for p in pairs.params]

    def describe(self) -> dict[str, Any]:
        """JSON summary for logs and checkpoint metadata."""
        sim = self.simulation
        return {
            "pairs": len(self.defocus_um),
            "sources": [s.name for s in self.sources],
            "numerical_aperture": sim.numerical_aperture_range[0],
            "pixel_size_um": sim.pixel_size_um,
            "wavelength_nm": (sim.wavelength_nm_choices[0] if sim.wavelength_nm_choices
                              else float(np.mean(sim.wavelength_nm_range))),
            "immersion_index": sim.immersion_index,
            "photons_per_unit": list(sim.photons_per_unit_range),
            "defocus_um": [round(d, 3) for d in self.defocus_um],
        }

    @torch.no_grad()
    def __call__(self, model: nn.Module, *, device: torch.device,
                 amp_dtype: torch.dtype | None = None) -> dict[str, float]:
        from .loop import evaluate_pairs

        was_training = model.training
        model.eval()
        try:
            scores = evaluate_pairs(model, self.blurred, self.sharp, device=device,
                                    amp_dtype=amp_dtype, defocus_um=self.defocus_um)
        finally:
            model.train(was_training)
        # The thirds of the defocus range (in focus ... deepest) let the guard refuse a model
        # that buys a better mean at deep defocus with a loss near focus, or the reverse.
        key = self.key
        return {f"{key}_psnr": float(scores["psnr"]), f"{key}_ssim": float(scores["ssim"]),
                f"{key}_psnr_by_defocus_um": dict(scores.get("psnr_by_defocus_um", {}))}
