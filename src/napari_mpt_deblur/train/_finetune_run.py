"""One fine-tuning run: its loss, validation, checkpoints and resumable state.

:class:`_FinetuneRun` holds what :func:`~napari_mpt_deblur.train.finetune.finetune_iter` drives.
Its data are built once by :mod:`._finetune_data` (the user's planes and the held-out crop, the
replay simulation and the selection score, the re-blur bank, the batch stream); the steps are
taken by the :class:`~napari_mpt_deblur.train.engine.StepLoop` with the
:class:`~napari_mpt_deblur.train.engine.Trainer` (the same optimiser step as supervised
training). The run supplies the loss (:meth:`_FinetuneRun.loss`) and the periodic actions
(validation, preview, state saves), and writes its files. The guard and the verdict in words
are in :mod:`.guard` (the validation records keep the reasons it gives); the
:class:`FinetuneResult` is here. The data helpers' old names stay importable from here.
"""

from __future__ import annotations

import copy
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
from ._finetune_data import (  # noqa: F401 - SCORE_SEED: imported from here by callers
    SCORE_SEED,
    compose_batches,
    crop_padded,
    finetune_reblur_bank,
    holdout_box,
    model_simulation,
    planes_fingerprint,
    replay_and_score,
    score_label,
    user_planes,
    validation_inputs,
)
from .config import FINETUNE_RUN_CONTROL_FIELDS
from .engine import StepContext, Trainer, write_state
from .guard import GuardDecision, guard_decision, run_verdict
from .losses import efcr_terms, haar_dwt, pixel_loss
from .optics_domain import estimate_noise_sigma, planes_noise_sigma
from .reblur import make_negatives, make_reblurred_set
from .trainable import select_trainable
from .updates import TrainUpdate, UpdateKind

if TYPE_CHECKING:
    from .finetune import FinetuneConfig

logger = logging.getLogger(__name__)

_STREAM_STEP = 12

# Old names of two data helpers (now in ._finetune_data): tests and benchmarks import them here.
_model_simulation, _reblur_bank = model_simulation, finetune_reblur_bank


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
        device: torch.device | None = None,
    ) -> None:
        from ..engine.normalize import IntensityNormalization, normalize, percentile_range
        from .data import UnlabeledPatches

        s = self.settings = settings
        self.model = model
        if not any(p.requires_grad for p in model.parameters()):
            logger.info("all parameters were frozen; unfreezing them for fine-tuning")
            model.requires_grad_(True)
        self.device = device if device is not None else get_device(s.device)
        model.to(self.device)
        info = model_info(model).to_dict()
        self.normalization = IntensityNormalization.from_dict(info.get("normalization"))
        multiple = size_multiple(model)
        patch = -(-s.patch_size // multiple) * multiple
        if patch != s.patch_size:
            logger.info("patch_size %d rounded up to %d (model multiple %d)", s.patch_size,
                        patch, multiple)
        self.patch = patch

        planes, self.image_names = user_planes(unlabeled_images)
        self.fingerprint = planes_fingerprint(planes)
        val_index, box, exclusive = holdout_box(planes, s.val_crop_size, multiple, patch)
        if not exclusive:
            logger.warning("only one small image: the validation crop overlaps training patches")
        unlabeled = UnlabeledPatches(planes, patch, holdout={val_index: box} if exclusive else None,
                                     normalization=self.normalization)
        lo, hi = percentile_range(planes[val_index], self.normalization)
        self.val_crop = normalize(crop_padded(planes[val_index], box), lo, hi)
        self.val_range = (float(lo), float(hi))
        self.val_box = box
        self.val_image = self.image_names[val_index]

        self.simulation = model_simulation(model, s.simulation)
        self.bank = finetune_reblur_bank(s, self.simulation).to(self.device)
        self.noise_sigma = planes_noise_sigma(planes, self.normalization)
        self.replay_simulation, self.score = replay_and_score(
            model, planes, self.image_names, self.simulation, s,
            normalization=self.normalization, noise_sigma=self.noise_sigma, device=self.device,
            multiple=multiple)
        self.score_label = score_label(s.selection_score, s.uses_user_optics)

        plan = compose_batches(s, patch, unlabeled=unlabeled, paired=paired,
                               replay_images=replay_images,
                               replay_simulation=self.replay_simulation,
                               normalization=self.normalization)
        self.builder, self.composition = plan.builder, plan.composition
        self.n_reblur, self.replay_description = plan.n_reblur, plan.replay_description
        self.val_inputs = validation_inputs(self.val_crop, self.bank, s, self.device)

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
        differing = [name for name in config_type.field_names()
                     if name not in FINETUNE_RUN_CONTROL_FIELDS
                     and getattr(saved, name) != getattr(self.settings, name)]
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
        """Whether the starting weights were kept, and why, in words for the panel and CLI
        (:func:`~napari_mpt_deblur.train.guard.run_verdict`)."""
        return run_verdict(self.history, baseline=self.baseline, best=self.best,
                           score_name=self.score_label,
                           min_gain_db=self.settings.min_gain_db,
                           max_level_loss_db=self.settings.max_level_loss_db)

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
