"""One fine-tuning run: its data, loss, validation, guard and files.

:class:`_FinetuneRun` holds what :func:`~napari_mpt_deblur.train.finetune.finetune_iter` drives:
the user's planes and the held-out crop, the replay simulation and the selection score, the
re-blur bank, the batch stream and the :class:`~napari_mpt_deblur.train.engine.Trainer` (the
same optimiser step as supervised training). The run supplies the loss (:meth:`_FinetuneRun.loss`)
and the periodic actions (validation, preview, state saves); the
:class:`~napari_mpt_deblur.train.engine.StepLoop` takes the steps. The guard is in
:mod:`.guard` (the validation records keep the reasons it gives); the :class:`FinetuneResult`
and its verdict are here.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .._device import get_device
from ..models.info import model_info, size_multiple
from ._common import _json_default, autocast, load_state_file, psnr_ssim, step_generator
from .config import FINETUNE_RUN_CONTROL_FIELDS
from .engine import StepContext, Trainer, write_state
from .guard import GuardDecision, guard_decision, selection_score
from .losses import efcr_terms, haar_dwt, pixel_loss
from .optics_domain import (
    SimulatedScore,
    bundled_infocus_sources,
    estimate_noise_sigma,
    match_camera,
    mean_wavelength,
    planes_noise_sigma,
    simulation_for_optics,
    start_output_sources,
)
from .reblur import ReblurBank, build_reblur_bank, make_negatives, make_reblurred_set
from .trainable import select_trainable
from .updates import TrainUpdate, UpdateKind

if TYPE_CHECKING:
    from .finetune import FinetuneConfig

logger = logging.getLogger(__name__)

#: The selection score's pairs do not depend on the run's seed: one yardstick for every run.
SCORE_SEED = 2027
_STREAM_DATA = 11
_STREAM_STEP = 12


@dataclass
class FinetuneResult:
    """Outcome of :func:`finetune`.

    Attributes
    ----------
    model : nn.Module
        The fine-tuned model (best weights loaded, eval mode).
    history : list of dict
        Loss and validation records (``kind`` "loss"/"validation").
    best : dict
        Validation scores of the kept weights (``step`` 0 = the starting model).
    baseline : dict
        Validation scores of the starting model.
    checkpoint : Path or None
        The checkpoint written, if any.
    stopped : str
        "completed", "cancelled" or "time_budget".
    kept_start : bool
        True when no checkpoint beat the starting weights by ``min_gain_db`` on the selection
        score, so ``model`` holds the starting weights.
    verdict : str
        One sentence saying which weights were kept and why.
    """

    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None
    stopped: str = "completed"
    kept_start: bool = False
    verdict: str = ""


def _planes(images: Sequence[Any] | Any) -> tuple[list[np.ndarray], list[str]]:
    """User images (arrays or files) as 2-D planes with names."""
    from .data import read_planes

    if isinstance(images, (np.ndarray, str, os.PathLike)):
        images = [images]
    planes, names = [], []
    for i, item in enumerate(images):
        if isinstance(item, (str, os.PathLike)):
            parts = read_planes(item)
            label = Path(item).name
        else:
            arr = np.asarray(item)
            if arr.ndim < 2:
                raise ValueError(f"image {i} must be at least 2-D; got shape {arr.shape}")
            if arr.dtype.kind not in "uif":
                raise TypeError(f"image {i} has dtype {arr.dtype}; expected a numeric image")
            parts = list(arr.reshape((-1, *arr.shape[-2:])))
            label = f"image{i}"
        for j, p in enumerate(parts):
            planes.append(np.asarray(p))
            names.append(label + (f"[{j}]" if len(parts) > 1 else ""))
    if not planes:
        raise ValueError("unlabeled_images is empty: give at least one blurry image")
    return planes, names


def _fingerprint(planes: Sequence[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for p in planes:
        digest.update(str(p.shape).encode())
        digest.update(np.ascontiguousarray(p[::7, ::7]).tobytes())
    return digest.hexdigest()[:16]


def _model_simulation(model: nn.Module, override: str | None) -> Any:
    """The replay simulation config: override, else the model's metadata, else bbbc006."""
    from ..simulate import SimulationConfig, get_simulation_preset

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


def _reblur_bank(settings: FinetuneConfig, simulation: Any) -> ReblurBank:
    n = settings.immersion_index or float(simulation.immersion_index)
    na = settings.numerical_aperture or float(np.mean(simulation.numerical_aperture_range))
    if na >= n:
        raise ValueError(
            f"numerical_aperture {na} must be below the immersion index {n}; pass "
            "immersion_index (e.g. 1.515 for oil) with a high-NA hint"
        )
    return build_reblur_bank(
        pixel_size_um=settings.pixel_size_um or float(simulation.pixel_size_um),
        numerical_aperture=na,
        wavelength_nm=settings.wavelength_nm or mean_wavelength(simulation),
        immersion_index=n,
        defocus_dof=settings.reblur_defocus_dof,
        max_kernel_size=settings.reblur_kernel_size,
    )


def _holdout(planes: Sequence[np.ndarray], side: int, multiple: int, patch: int
             ) -> tuple[int, tuple[int, int, int, int], bool]:
    """Pick the validation crop in the largest plane, leaving room for training patches.

    Tries the centre, then a corner, then smaller crops (down to one model multiple); returns
    ``exclusive=False`` when no placement leaves a training patch beside it (a single small
    image), in which case training patches may overlap the crop.
    """
    from .sources import _can_avoid

    index = int(np.argmax([p.size for p in planes]))
    h, w = planes[index].shape
    others = len(planes) > 1
    side = max(multiple, (min(side, h, w) // multiple) * multiple)
    candidates = []
    s = side
    while s >= multiple:
        candidates += [(max(0, (h - s) // 2), max(0, (w - s) // 2), s, s), (0, 0, s, s)]
        s -= multiple
    for box in candidates:
        if others or _can_avoid((h, w), patch, box):
            return index, box, True
    return index, candidates[0], False


def score_label(selection_score: str, user_optics: bool) -> str:
    """The selection score's name in the panel's plot, status line and verdicts."""
    where = "your optics" if user_optics else "the model's training optics"
    if selection_score == "own-images":
        return f"simulated PSNR on your images at {where}"
    return f"simulated PSNR at {where}"


def _crop_padded(plane: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    y, x, hh, ww = box
    crop = plane[y : y + hh, x : x + ww]
    if crop.shape != (hh, ww):
        crop = np.pad(crop, ((0, hh - crop.shape[0]), (0, ww - crop.shape[1])), mode="symmetric")
    return crop


class _FinetuneRun:
    """State of one fine-tuning run; :func:`finetune_iter` drives it step by step."""

    def __init__(
        self,
        model: nn.Module,
        unlabeled_images: Any,
        *,
        paired: Sequence[tuple[np.ndarray, np.ndarray]] | None,
        settings: FinetuneConfig,
        replay_images: Sequence[Any] | None,
        out_path: str | os.PathLike[str] | None,
        state_path: str | os.PathLike[str] | None,
        resume: bool,
    ) -> None:
        from ..engine.normalize import IntensityNormalization, normalize, percentile_range
        from .data import (
            BatchBuilder,
            PairSimulator,
            RealPairs,
            SourceImage,
            UnlabeledPatches,
            synthetic_infocus,
        )

        s = self.settings = settings
        self.model = model
        if not any(p.requires_grad for p in model.parameters()):
            logger.info("all parameters were frozen; unfreezing them for fine-tuning")
            model.requires_grad_(True)
        self.device = get_device(s.device)
        model.to(self.device)
        info = model_info(model).to_dict()
        self.normalization = IntensityNormalization.from_dict(info.get("normalization"))
        multiple = size_multiple(model)
        patch = -(-s.patch_size // multiple) * multiple
        if patch != s.patch_size:
            logger.info("patch_size %d rounded up to %d (model multiple %d)", s.patch_size,
                        patch, multiple)
        self.patch = patch

        planes, self.image_names = _planes(unlabeled_images)
        self.fingerprint = _fingerprint(planes)
        val_index, box, exclusive = _holdout(planes, s.val_crop_size, multiple, patch)
        if not exclusive:
            logger.warning("only one small image: the validation crop overlaps training patches")
        unlabeled = UnlabeledPatches(planes, patch, holdout={val_index: box} if exclusive else None,
                                     normalization=self.normalization)
        lo, hi = percentile_range(planes[val_index], self.normalization)
        self.val_crop = normalize(_crop_padded(planes[val_index], box), lo, hi)
        self.val_range = (float(lo), float(hi))
        self.val_box = box
        self.val_image = self.image_names[val_index]

        self.simulation = _model_simulation(model, s.simulation)
        self.bank = _reblur_bank(s, self.simulation).to(self.device)
        self.replay_simulation = self.simulation
        if s.uses_user_optics:
            self.replay_simulation = simulation_for_optics(
                self.simulation, pixel_size_um=float(s.pixel_size_um),
                numerical_aperture=float(s.numerical_aperture), wavelength_nm=s.wavelength_nm,
                immersion_index=s.immersion_index, max_defocus_um=s.max_defocus_um)
        self.noise_sigma = planes_noise_sigma(planes, self.normalization)
        # read the bundled in-focus images once: camera matching and the score both use them
        score_sources = bundled_infocus_sources(self.replay_simulation)
        if s.match_camera:
            self.replay_simulation = match_camera(
                self.replay_simulation, self.noise_sigma, sources=score_sources,
                normalization=self.normalization, seed=SCORE_SEED)
        score_patch = max(multiple, (128 // multiple) * multiple)
        # The selection score's pairs are fixed here, before any step: from the bundled images,
        # or from the user's own content (the start model's output on the user's images).
        if s.selection_score == "own-images":
            score_sources = start_output_sources(model, planes, self.replay_simulation,
                                                 device=self.device, names=self.image_names,
                                                 count=s.score_pairs)
        self.score = SimulatedScore(self.replay_simulation, sources=score_sources,
                                    n_pairs=s.score_pairs, patch_size=score_patch,
                                    seed=SCORE_SEED, normalization=self.normalization,
                                    key="user" if s.selection_score == "own-images" else "sim")
        self.score_label = score_label(s.selection_score, s.uses_user_optics)

        # Batch composition.
        n_replay = n_paired = 0
        real = None
        if paired and s.mode != "reblur_only":
            real = RealPairs(list(paired), patch, normalization=self.normalization)
            n_paired = max(1, round(s.batch_size * s.paired_fraction))
        if s.mode != "reblur_only" and s.replay_fraction > 0:
            n_replay = max(1, round(s.batch_size * s.replay_fraction))
        n_reblur = max(1, s.batch_size - n_replay - n_paired)
        if s.mode in ("efcr", "replay"):
            n_replay = max(n_replay, s.batch_size - n_paired)
        simulator = None
        self.replay_description = "none"
        if n_replay:
            if replay_images is not None:
                rplanes, rnames = _planes(replay_images)
                self.replay_description = f"{len(rplanes)} in-focus images"
            else:
                rng = np.random.default_rng([s.seed, 4242])
                side = max(2 * patch, 256)
                rplanes = [synthetic_infocus((side, side), rng) for _ in range(4)]
                rnames = [f"synthetic{i}" for i in range(len(rplanes))]
                self.replay_description = "procedural in-focus images (no replay images given)"
            pct = list(self.replay_simulation.source_percentiles)
            sources = []
            for name, p in zip(rnames, rplanes):
                lo_r, hi_r = (float(v) for v in np.percentile(p, pct))
                if hi_r > lo_r:
                    sources.append(SourceImage(name=name, plane=p, value_range=(lo_r, hi_r)))
            simulator = PairSimulator(sources, self.replay_simulation, patch,
                                      patch_norm_fraction=0.25, normalization=self.normalization)
        self.n_reblur = n_reblur if s.mode not in ("efcr", "replay") else 0
        self.builder = BatchBuilder(
            seed=s.seed, stream=_STREAM_DATA, simulator=simulator, n_simulated=n_replay,
            real=real, n_real=n_paired, unlabeled=unlabeled,
            n_unlabeled=n_reblur,
        )
        self.composition = {"replay": n_replay, "paired": n_paired, "reblur": self.n_reblur,
                            "unlabeled": n_reblur}

        # Fixed validation inputs: E and two re-blurred copies with fixed noise.
        e = torch.from_numpy(np.ascontiguousarray(self.val_crop))[None, None].to(self.device)
        k = len(self.bank)
        idx = sorted({min(1, k - 1), min(2, k - 1)})
        g = torch.Generator().manual_seed(s.seed + 99)
        reblurred = []
        for i in idx:
            r = self.bank.apply(e, [i])
            if s.reblur_noise:
                sigma = estimate_noise_sigma(e)
                r = r + sigma * torch.randn(r.shape, generator=g).to(r.device)
            reblurred.append(r)
        self.val_inputs = torch.cat([e, *reblurred])

        self.n_trainable = select_trainable(model, s.trainable)
        self.trainer = Trainer(model, s.optim, total_steps=s.steps, device=self.device)
        self.amp_dtype = self.trainer.amp_dtype
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.last_val_step = -1
        self.stopped = "completed"
        self.out_path = Path(out_path) if out_path is not None else None
        if state_path is None and self.out_path is not None:
            state_path = self.out_path.with_name(self.out_path.stem + ".state.pt")
        self.state_path = Path(state_path) if state_path is not None else None
        self.base_info = info
        self.baseline: dict[str, Any] = {}
        self.best: dict[str, Any] = {}
        self.best_state: dict[str, torch.Tensor] | None = None
        self._resumed = False
        if resume:
            if self.state_path is None or not self.state_path.is_file():
                logger.warning("resume requested but there is no state file (%s); starting anew",
                               self.state_path)
            else:
                self._load_state()

    # ------------------------------------------------------------------------------------
    def start_updates(self) -> Iterator[TrainUpdate]:
        if not self._resumed:
            self.baseline = self.validate(record_history=False)
            self.best = dict(self.baseline)
            self.best_state = self._snapshot()
            self.history.append({"kind": "validation", **self.baseline})
            logger.info("fine-tuning %s: %s; composition %s; starting %s %.2f dB (re-blur "
                        "PSNR %.2f dB)", self.settings.mode, ", ".join(self.image_names),
                        self.composition, self.score_label, self.baseline["score"],
                        self.baseline["reblur_psnr"])
            yield TrainUpdate(UpdateKind.VALIDATION, 0, self.settings.steps, dict(self.baseline))
            if self.settings.preview_every:
                yield TrainUpdate(UpdateKind.PREVIEW, 0, self.settings.steps, self.preview())
        else:
            yield TrainUpdate(UpdateKind.VALIDATION, self.step, self.settings.steps,
                              dict(self.best, resumed=True))

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def restore_best(self) -> None:
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        select_trainable(self.model, "all")  # the model handed back trains like any other
        self.model.eval()

    # ------------------------------------------------------------------------------------
    def loss(self, ctx: StepContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one step (module notes of :mod:`~napari_mpt_deblur.train.finetune`)."""
        s, device = self.settings, self.device
        gen = step_generator(s.seed, _STREAM_STEP, ctx.step)
        batch = self.builder(ctx.step)
        inputs, targets = [], []
        if "blurred" in batch:
            inputs.append(batch["blurred"].to(device))
            targets.append(batch["sharp"].to(device))
        e = batch["unlabeled"].to(device)
        uses_efcr = s.mode in ("full", "efcr") and s.efcr_weight > 0
        if self.n_reblur or uses_efcr:
            g_e, members = make_reblurred_set(e, self.bank, generator=gen)
            if s.reblur_noise:
                sigma = estimate_noise_sigma(e)
                g_e = g_e + sigma * torch.randn(g_e.shape, generator=gen).to(device)
        if self.n_reblur:
            inputs.append(g_e)
            targets.append(e)
        parts: dict[str, torch.Tensor] = {}
        loss = torch.zeros((), device=device)
        restored = blurred = sharp = None
        if inputs:
            blurred = torch.cat(inputs)
            sharp = torch.cat(targets)
            restored = ctx.forward(blurred)
            parts["pixel"] = pixel_loss(restored, sharp, s.pixel_loss)
            loss = loss + parts["pixel"]
        if uses_efcr:
            f_e = ctx.forward(e)
            negatives = (make_negatives(blurred, self.bank, generator=gen)
                         if blurred is not None else [])
            terms = efcr_terms(restored, sharp, blurred, negatives=negatives,
                               unlabeled_restored=f_e, unlabeled=e, unlabeled_reblurred=members,
                               rel_weight=s.efcr_rel_weight)
            parts["efcr"] = terms.cr
            parts["efcr_rel"] = terms.rel
            loss = loss + s.efcr_weight * terms.cr
        return loss, parts

    def record_step(self, update: TrainUpdate) -> None:
        """Take in a step's LOSS record (the history and the step count)."""
        self.step = update.step
        self.history.append({"kind": "loss", "step": self.step, **update.value})

    def validation_updates(self, step: int) -> Iterator[TrainUpdate]:
        yield TrainUpdate(UpdateKind.VALIDATION, step, self.settings.steps, self.validate())

    def preview_updates(self, step: int) -> Iterator[TrainUpdate]:
        yield TrainUpdate(UpdateKind.PREVIEW, step, self.settings.steps, self.preview())

    # ------------------------------------------------------------------------------------
    @torch.no_grad()
    def _outputs(self) -> torch.Tensor:
        model = self.model
        was_training = model.training
        model.eval()
        try:
            with autocast(self.device, self.amp_dtype):
                out = model(self.val_inputs)
        finally:
            model.train(was_training)
        return out.float()

    def validate(self, *, record_history: bool = True) -> dict[str, Any]:
        out = self._outputs().cpu()
        e = self.val_inputs[:1].float().cpu()
        target = e[0, 0].numpy()
        psnrs = [psnr_ssim(out[i, 0].numpy(), target)[0] for i in range(1, out.shape[0])]
        identity = [psnr_ssim(self.val_inputs[i, 0].float().cpu().numpy(), target)[0]
                    for i in range(1, out.shape[0])]
        _, hf_out = haar_dwt(out[:1])
        _, hf_e = haar_dwt(e)
        measured = self.score(self.model, device=self.device, amp_dtype=self.amp_dtype)
        key = self.score.key
        scores = {
            "step": self.step,
            "score": measured[f"{key}_psnr"],
            "score_name": self.score_label,
            "score_by_defocus_um": measured[f"{key}_psnr_by_defocus_um"],
            **measured,
            "reblur_psnr": float(np.mean(psnrs)),
            "reblur_psnr_identity": float(np.mean(identity)),
            "hf_energy_ratio": float((hf_out**2).sum() / (hf_e**2).sum().clamp_min(1e-12)),
        }
        if record_history:
            self.last_val_step = self.step
            decision = self._guard(scores)
            self.history.append({"kind": "validation", **scores, "guard": decision.to_dict()})
            if decision.accepted:
                self.best = dict(scores)
                self.best_state = self._snapshot()
        return scores

    def _guard(self, scores: Mapping[str, Any]) -> GuardDecision:
        """The guard (:func:`guard_decision`) with this run's settings."""
        return guard_decision(scores, baseline=self.baseline, best=self.best,
                              min_gain_db=self.settings.min_gain_db,
                              max_level_loss_db=self.settings.max_level_loss_db)

    def preview(self) -> dict[str, Any]:
        out = self._outputs()[0, 0].cpu().numpy().astype(np.float32)
        return {"image": out, "input": self.val_crop.astype(np.float32), "box": self.val_box,
                "source": self.val_image, "norm_range": self.val_range}

    # ------------------------------------------------------------------------------------
    def _metadata(self) -> dict[str, Any]:
        base = self.base_info
        meta: dict[str, Any] = {
            "name": (self.out_path.stem if self.out_path else f"{base.get('name', 'model')}-ft"),
            "normalization": self.normalization.to_dict(),
            "finetune": {
                "settings": self.settings.to_dict(),
                "mode": self.settings.mode,
                "images": self.image_names,
                "image_fingerprint": self.fingerprint,
                "validation_crop": {"image": self.val_image, "box_yxhw": list(self.val_box)},
                "composition": self.composition,
                "trainable_parameters": self.n_trainable,
                "replay": self.replay_description,
                "replay_simulation": self.replay_simulation.to_dict(),
                "image_noise_sigma": self.noise_sigma,
                "score": {"name": self.score_label, **self.score.describe()},
                "reblur_defocus_um": list(self.bank.defocus_um or ()),
                "steps_done": self.step,
                "best": self.best,
                "baseline": self.baseline,
                "base_model": {k: base.get(k) for k in ("name", "source", "sha256")
                               if base.get(k) is not None},
                "stopped": self.stopped,
            },
            "simulation": base.get("simulation") or {"preset": self.simulation.name,
                                                     **self.simulation.to_dict()},
            # The base model's metrics do not describe these weights: keep them apart.
            "metrics": {"finetune_validation": self.best,
                        "base_model_metrics": base.get("metrics")},
            "description": (f"{base.get('name', 'model')} fine-tuned ({self.settings.mode}) on "
                            f"{len(self.image_names)} unlabeled images"),
        }
        if "training" in base:
            meta["training"] = base["training"]
        return meta

    def _write_checkpoint(self) -> Path | None:
        if self.out_path is None:
            return None
        from ..models.checkpoint import save_checkpoint

        current = self._snapshot()
        try:
            if self.best_state is not None:
                self.model.load_state_dict(self.best_state)
            return save_checkpoint(self.out_path, self.model, metadata=self._metadata())
        finally:
            self.model.load_state_dict(current)

    def save(self, step: int | None = None) -> Iterator[TrainUpdate]:
        """Write the checkpoint (best weights) and the resumable state (``step``: the loop's
        argument, equal to :attr:`step`)."""
        total = self.settings.steps
        path = self._write_checkpoint()
        if path is not None:
            self.out_path = path
            yield TrainUpdate(UpdateKind.CHECKPOINT, self.step, total,
                              {"path": str(path), "kind": "best", **self.best})
        if self.state_path is not None:
            pairs = {}
            if self.settings.selection_score == "own-images":
                # made with the *start* model: a resume (which may be handed the fine-tuned
                # model) scores on these pairs, not on new ones
                pairs = {"score_blurred": self.score.blurred, "score_sharp": self.score.sharp,
                         "score_defocus_um": json.dumps(self.score.defocus_um)}
            write_state(
                self.state_path, "finetune", self.step, self.trainer,
                best_model=self.best_state or {},
                history=json.dumps(self.history, default=_json_default),
                best=json.dumps(self.best),
                baseline=json.dumps(self.baseline),
                settings=json.dumps(self.settings.to_dict()),
                fingerprint=self.fingerprint,
                **pairs,
            )
            yield TrainUpdate(UpdateKind.CHECKPOINT, self.step, total,
                              {"path": str(self.state_path), "kind": "state"})

    def _load_state(self) -> None:
        assert self.state_path is not None
        state = load_state_file(self.state_path, "finetune")
        config_type = type(self.settings)
        saved = config_type.from_dict(json.loads(state["settings"]))
        differing = [f.name for f in dataclasses.fields(config_type)
                     if f.name not in FINETUNE_RUN_CONTROL_FIELDS
                     and getattr(saved, f.name) != getattr(self.settings, f.name)]
        if differing:
            raise ValueError(
                f"cannot resume {self.state_path}: settings differ in {differing}; only "
                f"{sorted(FINETUNE_RUN_CONTROL_FIELDS)} may change"
            )
        if state.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"cannot resume {self.state_path}: it was made with other images"
            )
        self.trainer.load_state(state)
        if "score_blurred" in state:  # the own-images score's pairs (selection_score is fixed)
            self.score.blurred, self.score.sharp = state["score_blurred"], state["score_sharp"]
            self.score.defocus_um = json.loads(state["score_defocus_um"])
        self.best_state = dict(state["best_model"]) or None
        self.step = int(state["step"])
        self.history = json.loads(state["history"])
        self.best = json.loads(state["best"])
        self.baseline = json.loads(state["baseline"])
        self.last_val_step = max((h["step"] for h in self.history if h["kind"] == "validation"),
                                 default=-1)
        self._resumed = True
        logger.info("resumed fine-tuning at step %d of %d", self.step, self.settings.steps)

    def verdict(self) -> tuple[bool, str]:
        """Whether the starting weights were kept, and why, in words for the panel and CLI."""
        name = self.score_label
        base, best = selection_score(self.baseline), selection_score(self.best)
        if not self.best.get("step"):
            seen = [float(h["score"]) for h in self.history
                    if h.get("kind") == "validation" and h.get("step") and "score" in h]
            top = f"; the best checkpoint reached {max(seen) - base:+.2f} dB" if seen else ""
            refused = self._refused_for_a_level()
            if refused:
                return True, (f"kept the starting model: the best checkpoint (step "
                              f"{refused[0]}) gained {refused[1]:+.2f} dB on the {name} "
                              f"({base:.2f} dB) but lost {-refused[3]:.2f} dB at "
                              f"{refused[2]} µm defocus (at most "
                              f"{self.settings.max_level_loss_db:g} dB is allowed)")
            return True, (f"kept the starting model: no checkpoint beat it by "
                          f"{self.settings.min_gain_db:g} dB on the {name} "
                          f"({base:.2f} dB){top}")
        return False, (f"fine-tuned weights of step {self.best['step']}: {name} "
                       f"{base:.2f} → {best:.2f} dB ({best - base:+.2f} dB)")

    def _refused_for_a_level(self) -> tuple[int, float, str, float] | None:
        """The best-scoring checkpoint the guard refused, at its validation, for losing too
        much on one third of the defocus range: ``(step, mean gain, range, change)``, else
        ``None`` (also for records of runs saved before the guard recorded its reasons)."""
        base = selection_score(self.baseline)
        refused = [h for h in self.history if h.get("kind") == "validation" and h.get("step")
                   and (h.get("guard") or {}).get("reason") == "level_loss"]
        if not refused:
            return None
        record = max(refused, key=selection_score)
        guard = record["guard"]
        return (int(record["step"]), selection_score(record) - base, str(guard["range"]),
                float(guard["change_db"]))

    def finish(self) -> FinetuneResult:
        self.restore_best()
        kept_start, verdict = self.verdict()
        logger.info("fine-tuning ended (%s): %s", self.stopped, verdict)
        return FinetuneResult(
            model=self.model,
            history=copy.deepcopy(self.history),
            best=dict(self.best),
            baseline=dict(self.baseline),
            checkpoint=self.out_path if self.out_path and self.out_path.exists() else None,
            stopped=self.stopped,
            kept_start=kept_start,
            verdict=verdict,
        )
