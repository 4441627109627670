"""The "Defocus Deblur: Fine-tune" dock widget: adapt a model to the user's own blurry images.

The widget collects choices and shows state; the work is the core EFCR engine
(:func:`napari_mpt_deblur.train.finetune.finetune_iter`), driven by one generator,
:func:`~._finetune_job.finetune_steps` (Qt-free, in :mod:`._finetune_job`), that the widget runs
in a napari ``thread_worker`` and tests drive synchronously (``run_blocking``). The worker
receives a plain :class:`FinetuneRequest` (arrays, folder paths, a catalog entry name, a
``FinetuneConfig``), never a widget or a layer, and yields the engine's typed
:class:`~napari_mpt_deblur.train.updates.TrainUpdate` records, which the widget turns into the
progress bar, the plots and the preview layer.

Life of a run:

* **Start** reads the data (layers, a folder of TIFFs, optional pairs) in the worker thread,
  loads a private copy of the start model, and trains. Checkpoint and resumable state go to a
  per-widget working folder (deleted when the widget goes away).
* **Stop** sets a cancel event: the engine finishes the step in progress, validates, writes the
  best weights and its state, and ends. The best weights are kept, never the last ones, judged
  by the selection score (PSNR on fixed simulated pairs at the user's optics, from in-focus
  images the run never trains on); the starting model counts and is kept unless beaten.
* **Removing a layer** the run trains on does not disturb it: the run holds the arrays it was
  given and keeps training on them; only previews of a removed layer are no longer shown.
  **Closing the viewer** quits the run at its next step; nothing is shown or listed after that.
* When a run ends its model is listed at once in the shared model catalog (in memory), so the
  Defocus Deblur widget can use it. **Save** writes it as a project checkpoint (atomic; the
  header records the data, the optics hints and every setting) and replaces the in-memory entry
  by the file. **Resume** continues a stopped run from its state.

Sub-widgets are ``self._name`` attributes so tests and scripts can set them directly. The
panel is three parts: the fields, their tooltips and plots, and what they mean as settings
(:mod:`._finetune_form`), listing, saving and exporting a finished run
(:mod:`._finetune_results`), and here the events and the run control. The model and device
pickers and the worker plumbing are shared with the other panels (:mod:`._pickers`,
:mod:`._jobs`).
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..models.catalog import ModelCatalog, get_catalog
from ..train.config import FINETUNE_RUN_CONTROL_FIELDS
from ..train.updates import TrainUpdate, UpdateKind
from ._finetune_form import (
    MODE_CHOICES,
    PREVIEW_KEY,
    REBLUR_SERIES,
    SCORE_SERIES,
    SCORE_TITLE,
    FinetuneForm,
)
from ._finetune_job import (
    FinetuneData,
    FinetuneOutcome,
    FinetuneRequest,
    FinetuneStatus,
    PreviewCrop,
    ResumePoint,
    checkpoint_metadata,
    eta_seconds,
    finetune_steps,
    format_clock,
    load_data,
    optics_from_layer,
    run_blocking,
    save_finetuned,
    start_worker,
)
from ._finetune_results import FinetuneResults
from ._jobs import ActivityProgress, CloseWatch, FinetuneFailed, Job
from ._pickers import LOAD_CHECKPOINT

if TYPE_CHECKING:
    import napari


logger = logging.getLogger(__name__)

__all__ = [
    "LOAD_CHECKPOINT",
    "MODE_CHOICES",
    "PREVIEW_SUFFIX",
    "REBLUR_SERIES",
    "SCORE_SERIES",
    "SCORE_TITLE",
    "FinetuneData",
    "FinetuneFailed",
    "FinetuneOutcome",
    "FinetuneRequest",
    "FinetuneStatus",
    "FinetuneWidget",
    "PreviewCrop",
    "checkpoint_metadata",
    "eta_seconds",
    "finetune_steps",
    "load_data",
    "optics_from_layer",
    "run_blocking",
    "save_finetuned",
    "start_worker",
]

#: Suffix of the preview layer's name (``"<source> [fine-tune preview]"``).
PREVIEW_SUFFIX = " [fine-tune preview]"


# ==========================================================================================
# The widget
# ==========================================================================================
@dataclass
class _Job(Job):
    """What the widget remembers about the run in flight."""

    request: FinetuneRequest
    started: float
    train_start_step: int | None = None
    train_start_time: float | None = None
    deadline: float | None = None
    last_step: int = 0
    total: int = 0
    smoothed: float | None = None
    outcome: FinetuneOutcome | None = None


class FinetuneWidget(FinetuneResults, FinetuneForm):
    """Dock widget that fine-tunes a deblurring model on the user's own blurry images (EFCR).

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer (napari passes it when the widget is opened from the Plugins menu).
    catalog : ModelCatalog, optional
        Start models come from, and fine-tuned models go to, this catalog; default: the one
        shared with the Defocus Deblur widget and the reader.
    """

    def __init__(self, viewer: napari.viewer.Viewer, catalog: ModelCatalog | None = None) -> None:
        super().__init__(labels=False)
        self._viewer = viewer
        self._catalog = catalog if catalog is not None else get_catalog()
        self._job: _Job | None = None
        self._last: FinetuneOutcome | None = None
        self._name_edited = False
        self._runs = 0
        self._work_dir: Path | None = None
        self._closed = False
        self._init_results()
        self._build_form()

        self._apply_preset(self._preset.value)
        self._on_model_changed(self._model.value)
        self._select_active_layer()
        self._prefill_optics()
        self._update_state()

        self._preset.changed.connect(self._apply_preset)
        self._name.changed.connect(self._on_name_edited)
        self._images.changed.connect(self._on_images_changed)
        self._folder.changed.connect(self._update_state)
        self._advanced.changed.connect(self._on_advanced)
        self._start.changed.connect(self._on_start_clicked)
        self._resume.changed.connect(lambda *_: self.resume())
        self._save.changed.connect(lambda *_: self.save())
        self._export.changed.connect(lambda *_: self.export_bioimageio())
        layers = viewer.layers
        for event in (layers.events.inserted, layers.events.removed, layers.events.moved):
            event.connect(self._on_layers_changed)
        for layer in layers:
            layer.events.name.connect(self._on_layers_changed)
        self._close_watch = CloseWatch(self.native, self._on_viewer_closed)

    def _select_active_layer(self) -> None:
        """Preselect the user's own blurry data: the active layer, unless it is a deblurred
        result (those carry the plugin's provenance in their metadata); then its input, or the
        last layer that is not a result. Fine-tuning on a result would teach the model to
        sharpen what is already sharp."""
        from ._layers import input_of_result

        active = self._viewer.layers.selection.active
        choices = [layer for _, layer in self._image_choices()]
        originals = [layer for layer in choices if not _is_result(layer)]
        source = input_of_result(self._viewer.layers, active) if active is not None else None
        if active is not None and any(active == layer for layer in originals):
            self._images.value = [active]
        elif source is not None and any(source == layer for layer in originals):
            self._images.value = [source]
        elif not self._images.value and (originals or choices):
            self._images.value = [(originals or choices)[-1]]

    # ------------------------------------------------------------------ events
    def _on_layers_changed(self, event: Any = None) -> None:
        if self._closed:
            return
        if event is not None and getattr(event, "type", "") == "inserted":
            event.value.events.name.connect(self._on_layers_changed)
        images = [layer for _, layer in self._image_choices()]
        shapes = [layer for _, layer in self._preview_choices()]
        for widget, valid in ((self._images, images), (self._paired_blurred, images),
                              (self._paired_sharp, images), (self._preview_region, shapes)):
            current = widget.value
            with widget.changed.blocked():
                widget.reset_choices()
                if widget is self._images:
                    widget.value = [layer for layer in current if layer in valid]
                else:
                    widget.value = current if current is not None and current in valid else None
        self._update_state()

    def _on_images_changed(self, *_: Any) -> None:
        self._prefill_optics()
        self._update_state()

    def _on_model_changed(self, value: Any = None) -> None:
        """A new start model (from :class:`~._pickers.ModelPicker`): suggest a result name and
        offer the Adapt choices it supports (a choice it lacks falls back to the first)."""
        if value is not None and not self._name_edited:
            self._set_name(f"{value}-ft")
        self._trainable.reset_choices()
        self._update_state()

    def _set_name(self, text: str) -> None:
        with self._name.changed.blocked():
            self._name.value = text

    def _on_name_edited(self, *_: Any) -> None:
        self._name_edited = bool(self._name.value.strip())

    def _on_viewer_closed(self) -> None:
        """Quit the run at its next step; from now on touch neither the viewer nor widgets.

        Quit, not a clean stop: a final validation and save would be wasted, since nothing is
        listed after the viewer closed and the working folder goes with the panel. Files the
        run already wrote are complete (every write is atomic).
        """
        self._closed = True
        self._models.disconnect()
        if self._export_worker is not None:
            self._export_worker.quit()
        if self._job is not None:
            self._job.quit()

    # ------------------------------------------------------------------ state
    @property
    def running(self) -> bool:
        """True while a fine-tuning run is in flight."""
        return self._job is not None

    @property
    def last_outcome(self) -> FinetuneOutcome | None:
        """The last finished run (``None`` before the first one ends)."""
        return self._last

    def _has_data(self) -> bool:
        return bool(self._images.value) or self._folder.value is not None

    def _update_state(self, *_: Any) -> None:
        model_ok = self._models.ready
        running = self.running
        if running:
            stopping = self._job.cancel.is_set()
            self._start.text = "Stopping…" if stopping else "Stop"
            self._start.enabled = not stopping
        else:
            self._start.text = "Start"
            self._start.enabled = model_ok and self._has_data()
            if not model_ok and not len(self._catalog):
                self._status.value = "No trained model is installed yet: load a checkpoint."
        self._resume.enabled = (not running and self._last is not None and self._last.resumable)
        self._save.enabled = not running and self._last is not None
        self._export.enabled = (self._export_unavailable is None and not running
                                and self._saved_checkpoint is not None
                                and self._export_worker is None)
        self._export.text = ("Exporting…" if self._export_worker is not None
                             else "Export for bioimage.io…")
        for widget in (self._images, self._folder, self._paired_blurred, self._paired_sharp,
                       self._paired_folder, self._preset, self._model, self._batch_size,
                       self._patch_size, self._lr, self._efcr_weight, self._replay, self._mode,
                       self._replay_folder, self._device, self._seed, self._pixel_size,
                       self._na, self._wavelength, self._index, self._max_defocus, self._steps,
                       self._time_budget, self._val_every, self._preview_every,
                       self._preview_region, self._name, self._output):
            widget.enabled = not running

    def _set_status(self, text: str) -> None:
        self._status.value = text

    def _ensure_work_dir(self) -> Path:
        if self._work_dir is None or not self._work_dir.is_dir():
            self._work_dir = Path(tempfile.mkdtemp(prefix="napari-mpt-finetune-"))
            weakref.finalize(self, shutil.rmtree, str(self._work_dir), True)
        return self._work_dir

    def build_request(self) -> FinetuneRequest:
        """A request for a new run from the current fields (``ValueError`` explains problems)."""
        model = self._model.value
        if not self._models.ready:
            raise ValueError("choose a start model first")
        layers = []
        for layer in self._images.value or []:
            if layer.multiscale:
                raise ValueError(f"{layer.name!r} is a multiscale layer; choose a single-scale "
                                 "image or a folder of TIFFs")
            layers.append((layer.name, layer.data))
        folder = self._folder.value
        if not layers and folder is None:
            raise ValueError("choose at least one blurry image layer or a folder of images")
        blurred, sharp = self._paired_blurred.value, self._paired_sharp.value
        paired_layers: tuple = ()
        if (blurred is None) != (sharp is None):
            raise ValueError("a labeled pair needs both 'Paired: blurred' and 'Paired: sharp'")
        if blurred is not None:
            if tuple(blurred.data.shape) != tuple(sharp.data.shape):
                raise ValueError(
                    f"paired layers must have the same shape; {blurred.name!r} is "
                    f"{tuple(blurred.data.shape)} and {sharp.name!r} is {tuple(sharp.data.shape)}"
                )
            paired_layers = ((f"{blurred.name}|{sharp.name}", blurred.data, sharp.data),)
        settings = self.settings()
        self._runs += 1
        return FinetuneRequest(
            model=str(model), settings=settings, work_dir=str(self._ensure_work_dir()),
            run_name=f"run{self._runs}", layers=tuple(layers),
            folders=(str(folder),) if folder is not None else (),
            paired_layers=paired_layers,
            paired_folders=((str(self._paired_folder.value),)
                            if self._paired_folder.value is not None else ()),
            replay_folder=(str(self._replay_folder.value)
                           if self._replay_folder.value is not None else None),
            preview_crop=self._preview_crop(), optics_origin=self._optics_origin(),
        )

    # ------------------------------------------------------------------ running
    def _on_start_clicked(self, *_: Any) -> None:
        if self.running:
            self.stop()
        else:
            self.start()

    def start(self) -> None:
        """Start a new fine-tuning run in a background worker (no-op while one runs)."""
        from napari.utils.notifications import show_warning

        if self.running:
            return
        try:
            request = self.build_request()
        except (TypeError, ValueError) as exc:
            show_warning(f"Cannot start fine-tuning: {exc}")
            self._set_status(f"Cannot start: {exc}")
            return
        self._loss_plot.clear()
        self._val_plot.clear()
        self._launch(request, f"Fine-tuning {request.model}")

    def resume(self) -> None:
        """Continue the last run from its saved state with the current Steps/time budget."""
        from napari.utils.notifications import show_warning

        last = self._last
        if self.running or last is None:
            return
        if not last.resumable:
            show_warning("The last run left no state to resume from; start a new run.")
            return
        steps = int(self._steps.value)
        if steps <= last.steps_done:
            show_warning(f"The run already did {last.steps_done} steps: raise 'Steps' above "
                         "that to continue it.")
            self._set_status(f"Raise 'Steps' above {last.steps_done} to resume.")
            return
        budget_min = float(self._time_budget.value)
        control = {"steps": steps, "time_budget_s": budget_min * 60.0 if budget_min else None,
                   "device": str(self._device.value), "val_every": int(self._val_every.value),
                   "preview_every": int(self._preview_every.value)}
        settings = last.settings.replace(**control)
        try:
            current = self.settings().to_dict()
        except ValueError:
            current = {}
        ignored = sorted(k for k, v in current.items()
                         if k not in FINETUNE_RUN_CONTROL_FIELDS and v != settings.to_dict().get(k))
        try:
            crop = self._preview_crop()
        except ValueError as exc:
            show_warning(str(exc))
            crop = None
        request = FinetuneRequest(
            model=str(last.model_entry.get("name", "")), settings=settings,
            work_dir=str(last.state_path.parent), run_name=last.run_name,
            replay_folder=last.replay_folder, preview_crop=crop,
            optics_origin=dict(last.optics_origin),
            resume=ResumePoint(last.model, last.data, last.model_entry),
        )
        self._launch(request, f"Resuming fine-tuning at step {last.steps_done}")
        if ignored:
            self._set_status("Resuming with the run's own settings (changes to "
                             f"{', '.join(ignored)} apply to a new run only)…")

    def _launch(self, request: FinetuneRequest, description: str) -> None:
        job = _Job(request=request, activity=ActivityProgress(description),
                   started=time.monotonic(),
                   total=request.settings.steps)
        self._job = job
        self._progress.max = max(1, request.settings.steps)
        self._progress.value = self._last.steps_done if request.resume and self._last else 0
        self._set_status(f"{description}…")
        self._update_state()
        self._close_watch.attach()
        job.worker = start_worker(
            request, catalog=self._catalog, cancel=job.cancel,
            on_update=lambda update: self._on_update(job, update),
            on_returned=lambda outcome: self._on_returned(job, outcome),
            on_finished=lambda: self._on_finished(job),
        )

    def stop(self) -> None:
        """Stop after the step in progress; the best weights so far are kept and listed."""
        job = self._job
        if job is None:
            return
        job.cancel.set()
        self._set_status("Stopping after the current step (validating and saving the best "
                         "weights)…")
        self._update_state()

    # ------------------------------------------------------------------ updates (GUI thread)
    def _on_update(self, job: _Job, update: Any) -> None:
        if job is not self._job or self._closed:
            return
        if isinstance(update, FinetuneStatus):
            if not job.cancel.is_set():
                self._set_status(update.message)
            return
        kind = update.kind
        if kind is UpdateKind.LOSS:
            self._on_loss(job, update)
        elif kind is UpdateKind.VALIDATION:
            self._on_validation(job, update)
        elif kind is UpdateKind.PREVIEW:
            try:
                self._show_preview(update)
            except Exception:  # a preview must never stop training
                logger.exception("could not show the fine-tuning preview")

    def _on_loss(self, job: _Job, update: TrainUpdate) -> None:
        now = time.monotonic()
        if job.train_start_step is None:
            job.train_start_step, job.train_start_time = update.step - 1, job.started
        job.last_step, job.total = update.step, update.total
        loss = float(update.value.get("loss", float("nan")))
        if math.isfinite(loss):
            job.smoothed = loss if job.smoothed is None else 0.9 * job.smoothed + 0.1 * loss
        self._loss_plot.append("loss", update.step, loss)
        if job.smoothed is not None:
            self._loss_plot.append("smoothed", update.step, job.smoothed)
        self._progress.max = max(1, update.total)
        self._progress.value = min(update.step, update.total)
        job.activity.update(update.step, update.total)
        eta = eta_seconds(start_step=job.train_start_step, start_time=job.train_start_time,
                          step=update.step, now=now, total=update.total, deadline=job.deadline)
        if not job.cancel.is_set():
            text = f"Step {update.step}/{update.total} · loss {loss:.4g}"
            if eta is not None:
                text += f" · ETA {format_clock(eta)}"
            self._set_status(text)

    def _on_validation(self, job: _Job, update: TrainUpdate) -> None:
        value = update.value
        if update.step == 0 or value.get("resumed"):
            # training starts now: time the steps (and the budget) from here
            job.train_start_step, job.train_start_time = update.step, time.monotonic()
            budget = job.request.settings.time_budget_s
            job.deadline = job.train_start_time + budget if budget else None
        if value.get("resumed"):
            return
        score = float(value.get("score", float("nan")))
        if update.step == 0:
            self._val_plot.set_reference(score, "start")
            name = str(value.get("score_name", "simulated PSNR"))
            self._val_plot.title = f"{SCORE_TITLE}: {name}"
        self._val_plot.append(SCORE_SERIES, update.step, score)
        self._val_plot.append(REBLUR_SERIES, update.step,
                              float(value.get("reblur_psnr", float("nan"))))
        self._val_plot.append("sharpness", update.step,
                              float(value.get("hf_energy_ratio", float("nan"))))
        if not job.cancel.is_set() and update.step == 0:
            self._set_status(f"Starting model: {value.get('score_name', 'score')} "
                             f"{score:.2f} dB")

    def _show_preview(self, update: TrainUpdate) -> None:
        value = update.value
        image = np.asarray(value["image"], dtype=np.float32)
        source = str(value.get("source", "preview"))
        y, x = (int(v) for v in tuple(value.get("box", (0, 0)))[:2])
        origin = value.get("origin") or ("", "", 0)
        kwargs: dict[str, Any] = {"name": f"{source}{PREVIEW_SUFFIX}"}
        layer = None
        if origin[0] == "layer":
            if origin[1] not in self._viewer.layers:
                return  # its layer was removed during the run: a preview would float alone
            layer = self._viewer.layers[origin[1]]
        if layer is not None:
            scale = np.asarray(layer.scale, dtype=float)[-2:]
            translate = np.asarray(layer.translate, dtype=float)[-2:]
            kwargs["scale"] = tuple(scale)
            kwargs["translate"] = tuple(translate + np.array([y, x]) * scale)
            kwargs["contrast_limits"] = tuple(layer.contrast_limits)
            kwargs["colormap"] = layer.colormap.name
            # same units as its source: napari warns about layers with mixed units
            kwargs["units"] = tuple(layer.units)[-2:]
        else:
            lo, hi = np.percentile(image, (0.5, 99.8))
            kwargs["contrast_limits"] = (float(lo), float(hi) if hi > lo else float(lo) + 1.0)
        kwargs["metadata"] = {PREVIEW_KEY: {"step": update.step, "source": source,
                                            "box": list(value.get("box", ()))}}
        name = kwargs["name"]
        if name in self._viewer.layers:
            target = self._viewer.layers[name]
            target.data = image
            target.metadata = kwargs["metadata"]
            if "translate" in kwargs:
                target.translate = kwargs["translate"]
        else:
            self._viewer.add_image(image, **kwargs)
            # keep the user's data layer selected, not the new preview
            if layer is not None:
                self._viewer.layers.selection.active = layer

    def _on_returned(self, job: _Job, outcome: Any) -> None:
        from napari.utils.notifications import notification_manager

        if isinstance(outcome, FinetuneFailed):
            exc = outcome.error
            if not self._closed:
                self._set_status(f"Failed: {exc}")
            notification_manager.receive_error(type(exc), exc, exc.__traceback__)
            return
        if self._closed:
            return
        if outcome is None:
            self._set_status("Stopped before training began: nothing to keep.")
            return
        job.outcome = outcome
        self._last = outcome
        try:
            self._publish(outcome)
        except Exception as exc:  # listing must not hide the result
            logger.exception("could not list the fine-tuned model")
            self._set_status(f"Fine-tuned, but the model could not be listed: {exc}")
            return
        what = {"completed": "Done", "cancelled": "Stopped",
                "time_budget": "Time budget reached"}.get(outcome.reason, outcome.reason)
        self._set_status(
            f"{what} after {outcome.steps_done} steps: {outcome.verdict}. Listed as "
            f"{self._memory_entry!r}; Save writes it to a file"
            + ("; Resume continues." if outcome.reason != "completed" else ".")
        )

    def _on_finished(self, job: _Job) -> None:
        job.close_activity()
        if job is self._job:
            self._job = None
            if not self._closed:
                self._update_state()

def _is_result(layer: Any) -> bool:
    """A deblurred result of this plugin (its provenance is in ``metadata``)."""
    from ._layers import METADATA_KEY

    return METADATA_KEY in (getattr(layer, "metadata", None) or {})
