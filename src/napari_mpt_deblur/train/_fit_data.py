"""The data of a supervised run: training sources, the batch stream, the validation set.

:func:`_prepare_data` turns a :class:`~napari_mpt_deblur.train.config.TrainConfig` into what
:func:`~napari_mpt_deblur.train.loop.fit` steps through: a resumable
:class:`~napari_mpt_deblur.train.data.BatchBuilder` (simulated, real and unlabeled patches), the
fixed validation set and the re-blur bank for EFCR, plus a description for the checkpoints.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import TrainConfig
from .optics_domain import mean_wavelength
from .reblur import ReblurBank, build_reblur_bank

__all__ = ["reblur_bank_for_simulation", "simulation_from_config", "simulation_record"]

logger = logging.getLogger(__name__)


def simulation_from_config(config: TrainConfig) -> Any:
    """The simulation of a training config: the
    :class:`~napari_mpt_deblur.simulate.SimulationConfig` of its preset (with
    ``simulation_overrides``), or the :class:`~napari_mpt_deblur.simulate.SimulationMixture`
    of a mixture (:func:`~napari_mpt_deblur.simulate.parse_simulation`)."""
    from ..simulate import parse_simulation

    return parse_simulation(config.simulation, config.simulation_overrides)


def simulation_record(simulation: Any) -> dict[str, Any]:
    """What checkpoint headers record as ``"simulation"``: the config's fields and its preset
    name, or a mixture's record (its largest member's fields flat, every member under
    ``"mixture"``), so that readers of one config keep working
    (:func:`~napari_mpt_deblur.simulate.simulation_from_header` reads both)."""
    from ..simulate import SimulationMixture

    if isinstance(simulation, SimulationMixture):
        return simulation.to_dict()
    return {"preset": simulation.name, **simulation.to_dict()}


def reblur_bank_for_simulation(simulation: Any, defocus_dof: Iterable[float]) -> ReblurBank:
    """Small physical re-blur PSFs for the mid-range optics of a simulation config.

    The bank is one per run, applied to whole batches, so a mixture uses the optics of its
    largest member (:attr:`~napari_mpt_deblur.simulate.SimulationMixture.primary`): EFCR
    negatives of the other members' pairs are then re-blurred with those optics' PSFs (in
    pixels), a cruder contrast than their own would give.
    """
    from ..simulate import SimulationMixture

    if isinstance(simulation, SimulationMixture):
        simulation = simulation.primary
    return build_reblur_bank(
        pixel_size_um=float(simulation.pixel_size_um),
        numerical_aperture=float(np.mean(simulation.numerical_aperture_range)),
        wavelength_nm=mean_wavelength(simulation),
        immersion_index=float(simulation.immersion_index),
        defocus_dof=tuple(defocus_dof),
    )


@dataclass
class _RunData:
    builder: Any
    val: Any
    bank: ReblurBank | None
    simulation: Any
    description: dict[str, Any]


def _weighted_sources(
    cfg: TrainConfig, source_dirs: tuple[str, ...], simulation: Any
) -> tuple[list[Path], list[Any], list[float] | None]:
    """Source files, their planes, and (with ``cfg.source_weights``) each plane's weight.

    An entry's weight is shared among its planes in proportion to their area; a file named by
    two entries is read once, for the first.
    """
    from .data import find_images, load_sources

    if not cfg.source_weights:
        files = find_images(source_dirs, resolve=cfg.resolve_path)
        return files, load_sources(files, percentiles=simulation.source_percentiles), None
    files: list[Path] = []
    sources: list[Any] = []
    weights: list[float] = []
    seen: set[str] = set()
    for entry, weight in zip(source_dirs, cfg.source_weights):
        found = [f for f in find_images([entry], resolve=cfg.resolve_path)
                 if str(f.resolve()) not in seen]
        seen.update(str(f.resolve()) for f in found)
        if not found or not float(weight) > 0:
            continue
        planes = load_sources(found, percentiles=simulation.source_percentiles)
        area = sum(p.plane.size for p in planes)
        files.extend(found)
        sources.extend(planes)
        weights.extend(float(weight) * p.plane.size / area for p in planes)
    if not sources:
        raise ValueError("source_weights leaves no training source with a positive weight")
    return files, sources, weights


def _prepare_data(cfg: TrainConfig, patch_multiple: int) -> _RunData:
    from .data import (
        BatchBuilder,
        PairSimulator,
        RealPairs,
        UnlabeledPatches,
        build_validation_set,
        find_images,
        load_sources,
        read_planes,
    )

    for name, size in (("patch_size", cfg.patch_size),
                       ("val_patch_size", cfg.effective_val_patch_size)):
        if size % patch_multiple:
            raise ValueError(
                f"{name} must be a multiple of the model's size_multiple ({patch_multiple}); "
                f"got {size}"
            )
    simulation = simulation_from_config(cfg)
    description: dict[str, Any] = {
        "simulation_preset": cfg.simulation if isinstance(cfg.simulation, str)
        else simulation.name}
    simulator = None
    source_dirs = (*cfg.train_dirs, *cfg.extra_dirs)
    if source_dirs:
        files, sources, weights = _weighted_sources(cfg, source_dirs, simulation)
        simulator = PairSimulator(sources, simulation, cfg.patch_size, weights=weights)
        description["train_sources"] = [str(f) for f in files]
        if cfg.source_weights:
            description["source_probabilities"] = {
                s.name: round(float(p), 6) for s, p in zip(sources, simulator.probabilities)
            }
    real = None
    if cfg.paired_dirs:
        real = RealPairs.from_folders([cfg.resolve_path(d) for d in cfg.paired_dirs],
                                      cfg.patch_size)
        description["paired_sources"] = [str(cfg.resolve_path(d)) for d in cfg.paired_dirs]
    n_real = 0
    if real is not None:
        n_real = (cfg.batch_size if simulator is None
                  else round(cfg.batch_size * cfg.paired_fraction))
    unlabeled = None
    n_unlabeled = 0
    if cfg.unlabeled_dirs:
        files = find_images(cfg.unlabeled_dirs, resolve=cfg.resolve_path)
        planes = [p for f in files for p in read_planes(f)]
        unlabeled = UnlabeledPatches(planes, cfg.patch_size)
        n_unlabeled = cfg.unlabeled_batch_size
        description["unlabeled_sources"] = [str(f) for f in files]
    builder = BatchBuilder(
        seed=cfg.seed, stream=0, simulator=simulator, n_simulated=cfg.batch_size - n_real,
        real=real, n_real=n_real, unlabeled=unlabeled, n_unlabeled=n_unlabeled,
    )
    if cfg.val_dirs:
        val_files = find_images(cfg.val_dirs, resolve=cfg.resolve_path)
        val_sources = load_sources(val_files, percentiles=simulation.source_percentiles)
        description["val_sources"] = [str(f) for f in val_files]
    elif simulator is not None:
        logger.warning("no val_dirs: validating on training images (scores are optimistic)")
        val_sources = simulator.sources
        description["val_sources"] = "training images (no val_dirs)"
    else:
        raise ValueError("val_dirs is empty and there are no in-focus training images")
    val = build_validation_set(val_sources, simulation, n_patches=cfg.num_val_patches,
                               patch_size=cfg.effective_val_patch_size, seed=cfg.seed)
    description["validation"] = val.describe()
    bank = None
    if cfg.efcr_weight > 0 or (cfg.reblur_weight > 0 and unlabeled is not None):
        bank = reblur_bank_for_simulation(simulation, cfg.reblur_defocus_dof)
        description["reblur_defocus_um"] = list(bank.defocus_um or ())
    return _RunData(builder, val, bank, simulation, description)
