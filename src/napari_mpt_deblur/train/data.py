"""Training batches: the batch of each step, drawn as a function of the step, and the
validation set.

Everything random here is a function of ``(seed, stream, step)``: the batch for optimiser step
``s`` is drawn from ``numpy.random.default_rng([seed, stream, s])``. A resumed run therefore
sees exactly the batches it would have seen without the interruption, whatever the number of
DataLoader workers, and no data-loader state needs saving.

This module holds the batches of one step (:class:`BatchBuilder`, :class:`StepStream`,
:func:`make_loader`) and the fixed validation set; the sources the patches are cut from are in
:mod:`.sources` (finding and reading images, crops) and the patches themselves in
:mod:`.patches` (simulated pairs, real pairs, unlabeled images, with the intensity conventions).
Their public names are also importable from here, where they were first defined.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..engine.normalize import IntensityNormalization
from .patches import PairSimulator, RealPairs, UnlabeledPatches, find_pair_files
from .sources import (
    IMAGE_SUFFIXES,
    SourceImage,
    dihedral,
    find_images,
    load_sources,
    random_crop,
    read_planes,
    synthetic_infocus,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "BatchBuilder",
    "PairSimulator",
    "RealPairs",
    "SourceImage",
    "StepStream",
    "UnlabeledPatches",
    "ValidationSet",
    "build_validation_set",
    "dihedral",
    "find_images",
    "find_pair_files",
    "load_sources",
    "make_loader",
    "random_crop",
    "read_planes",
    "seed_worker",
    "step_rng",
    "synthetic_infocus",
]


def step_rng(seed: int, stream: int, step: int) -> np.random.Generator:
    """The generator that draws everything random for one step of one data stream."""
    return np.random.default_rng([int(seed), int(stream), int(step)])


# --------------------------------------------------------------------------------------------
# Batches per step
# --------------------------------------------------------------------------------------------


class BatchBuilder:
    """The recipe for the batch of one optimiser step; a pure function of ``step``.

    Parameters
    ----------
    seed, stream : int
        Together with the step they seed :func:`step_rng`.
    simulator : PairSimulator, optional
        Source of ``n_simulated`` simulated pairs per step.
    real : RealPairs, optional
        Source of ``n_real`` real pairs per step.
    unlabeled : UnlabeledPatches, optional
        Source of ``n_unlabeled`` unlabeled patches per step.

    The batch is a dict of float32 tensors: ``blurred`` and ``sharp`` (N, 1, P, P) for the
    pairs (simulated first) and ``unlabeled`` (M, 1, P, P), plus ``defocus_um`` (N,) (NaN for
    real pairs) and ``optics`` (N, 3): the
    :func:`~napari_mpt_deblur.models.conditioning.optics_vector` of the microscope each pair
    was simulated with (the blind vector for real pairs), for optics-conditioned models. It is
    computed from the parameters already drawn, so the draws are those of every earlier
    version.
    """

    def __init__(
        self,
        *,
        seed: int,
        stream: int = 0,
        simulator: PairSimulator | None = None,
        n_simulated: int = 0,
        real: RealPairs | None = None,
        n_real: int = 0,
        unlabeled: UnlabeledPatches | None = None,
        n_unlabeled: int = 0,
    ) -> None:
        if n_simulated and simulator is None:
            raise ValueError("n_simulated > 0 needs a simulator")
        if n_real and real is None:
            raise ValueError("n_real > 0 needs real pairs")
        if n_unlabeled and unlabeled is None:
            raise ValueError("n_unlabeled > 0 needs unlabeled images")
        if n_simulated + n_real + n_unlabeled < 1:
            raise ValueError("a batch needs at least one simulated, real or unlabeled patch")
        self.seed, self.stream = int(seed), int(stream)
        self.simulator, self.n_simulated = simulator, int(n_simulated)
        self.real, self.n_real = real, int(n_real)
        self.unlabeled, self.n_unlabeled = unlabeled, int(n_unlabeled)

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        from ..models.conditioning import optics_batch

        rng = step_rng(self.seed, self.stream, step)
        blurred, sharp, defocus, optics = [], [], [], []
        for _ in range(self.n_simulated):
            b, s, params = self.simulator.sample(rng)  # type: ignore[union-attr]
            blurred.append(b)
            sharp.append(s)
            defocus.append(float(params["defocus_um"]))
            optics.append(params)
        for _ in range(self.n_real):
            b, s = self.real.sample(rng)  # type: ignore[union-attr]
            blurred.append(b)
            sharp.append(s)
            defocus.append(math.nan)
            optics.append(None)
        batch: dict[str, torch.Tensor] = {"step": torch.tensor(int(step))}
        if blurred:
            batch["blurred"] = torch.from_numpy(np.stack(blurred)[:, None].astype(np.float32))
            batch["sharp"] = torch.from_numpy(np.stack(sharp)[:, None].astype(np.float32))
            batch["defocus_um"] = torch.tensor(defocus, dtype=torch.float32)
            batch["optics"] = optics_batch(optics)
        if self.n_unlabeled:
            patches = [self.unlabeled.sample(rng) for _ in range(self.n_unlabeled)]  # type: ignore[union-attr]
            batch["unlabeled"] = torch.from_numpy(np.stack(patches)[:, None].astype(np.float32))
        return batch


class StepStream(IterableDataset):
    """Batches for steps ``start, start + 1, ...`` (forever when ``stop`` is None).

    With ``W`` DataLoader workers, worker ``w`` builds the steps ``start + w + k·W``; the
    DataLoader interleaves workers round-robin, so batches arrive in step order and are
    identical to a single-process run.
    """

    def __init__(self, builder: Callable[[int], dict[str, torch.Tensor]], start: int = 0,
                 stop: int | None = None) -> None:
        super().__init__()
        self.builder = builder
        self.start = int(start)
        self.stop = stop

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        offset, stride = (0, 1) if info is None else (info.id, info.num_workers)
        step = self.start + offset
        while self.stop is None or step < self.stop:
            yield self.builder(step)
            step += stride


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed NumPy and ``random`` from torch's per-worker seed.

    The batches themselves are drawn from per-step generators; this only tames code that uses
    the global generators.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)  # noqa: NPY002 - seeding third-party code's global generator
    random.seed(seed)


def make_loader(
    builder: Callable[[int], dict[str, torch.Tensor]],
    *,
    start: int = 0,
    stop: int | None = None,
    num_workers: int = 0,
    seed: int = 0,
) -> DataLoader:
    """A DataLoader over :class:`StepStream` (``batch_size=None``: the builder makes batches)."""
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0; got {num_workers}")
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return DataLoader(
        StepStream(builder, start, stop),
        batch_size=None,
        num_workers=num_workers,
        worker_init_fn=seed_worker if num_workers else None,
        generator=generator,
        persistent_workers=False,
        prefetch_factor=2 if num_workers else None,
    )


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ValidationSet:
    """A fixed set of normalised validation pairs, built once per run.

    Attributes
    ----------
    blurred, sharp : Tensor (N, 1, P, P)
    params : list of dict
        Simulation parameters of each pair (defocus for per-level reporting).
    """

    blurred: torch.Tensor
    sharp: torch.Tensor
    params: list[dict[str, Any]]

    def __len__(self) -> int:
        return int(self.blurred.shape[0])

    def describe(self) -> dict[str, Any]:
        """JSON summary for logs and checkpoint metadata."""
        defocus = [abs(float(p.get("defocus_um", math.nan))) for p in self.params]
        out = {
            "n": len(self),
            "patch_size": int(self.blurred.shape[-1]),
            "sources": sorted({str(p.get("source", "")) for p in self.params}),
            "defocus_um_min": float(np.nanmin(defocus)) if defocus else None,
            "defocus_um_max": float(np.nanmax(defocus)) if defocus else None,
        }
        members = self.members
        if members is not None:
            out["members"] = {m: members.count(m) for m in dict.fromkeys(members)}
        return out

    @property
    def members(self) -> list[str] | None:
        """The mixture member of each pair (``params["member"]``); None without a mixture."""
        if not self.params or any("member" not in p for p in self.params):
            return None
        return [str(p["member"]) for p in self.params]


def build_validation_set(
    sources: Sequence[SourceImage],
    simulation: Any,
    *,
    n_patches: int,
    patch_size: int,
    seed: int,
    normalization: IntensityNormalization | None = None,
) -> ValidationSet:
    """Simulate ``n_patches`` validation pairs with a fixed seed.

    The nominal defocus is stratified over the simulation's range (evenly spaced magnitudes,
    random sign), so the score weighs every blur level equally and does not change with the
    luck of a draw; sources are used in turn. All pairs use the image-level normalisation.
    A :class:`~napari_mpt_deblur.simulate.SimulationMixture` gets ``n_patches`` split among its
    members by weight (each at least one while ``n_patches`` allows,
    :meth:`~napari_mpt_deblur.simulate.SimulationMixture.counts`), stratified over each
    member's own range, so the run's validation covers every microscope it trains on.
    """
    from ..simulate import SimulationMixture

    if n_patches < 1:
        raise ValueError(f"n_patches must be >= 1; got {n_patches}")
    sim = PairSimulator(sources, simulation, patch_size, patch_norm_fraction=0.0,
                        normalization=normalization)
    rng = np.random.default_rng([int(seed), 7919])
    if isinstance(simulation, SimulationMixture):
        strata = [(m, cfg, n) for m, (cfg, n)
                  in enumerate(zip(simulation.configs, simulation.counts(n_patches))) if n]
    else:
        strata = [(None, simulation, n_patches)]
    blurred, sharp, params = [], [], []
    i = 0
    for member, cfg, n in strata:
        lo, hi = cfg.defocus_um_range
        levels = np.linspace(lo, hi, n) if n > 1 else np.array([(lo + hi) / 2])
        for level in levels:
            sign = 1.0 if rng.random() < 0.5 else -1.0
            if cfg.defocus_sides != "both":
                sign = 1.0 if cfg.defocus_sides == "positive" else -1.0
            b, s, prm = sim.sample(rng, defocus_um=sign * float(level), patch_norm=False,
                                   source_index=i % len(sources), member=member)
            blurred.append(b)
            sharp.append(s)
            params.append(prm)
            i += 1
    return ValidationSet(
        blurred=torch.from_numpy(np.stack(blurred)[:, None].copy()),
        sharp=torch.from_numpy(np.stack(sharp)[:, None].copy()),
        params=params,
    )
