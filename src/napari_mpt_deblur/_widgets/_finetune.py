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

Sub-widgets are ``self._name`` attributes so tests and scripts can set them directly.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    Select,
    SpinBox,
)

from ..models.catalog import CatalogEvent, ModelCatalog, get_catalog
from ..train.updates import TrainUpdate, UpdateKind
from . import _dialogs, _finetune_job
from ._finetune_job import (
    FinetuneData,
    FinetuneFailed,
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
    start_export_worker,
    start_worker,
)
from ._form import field_row, finish_panel, scrolling_form, wrap_label
from ._layers import layer_source_path
from ._worker import ActivityProgress, CloseWatch, DeblurProgress, Stage

if TYPE_CHECKING:
    import napari
    from napari.qt.threading import GeneratorWorker

    from ..train.finetune import FinetuneConfig


logger = logging.getLogger(__name__)

__all__ = [
    "PREVIEW_SUFFIX",
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
#: Key of the panel's own entry in a preview layer's ``metadata``.
PREVIEW_KEY = "napari_mpt_deblur_finetune"
LOAD_CHECKPOINT = "<load checkpoint>"
MODE_CHOICES = (
    ("full EFCR (re-blur + EFCR + replay)", "full"),
    ("re-blur self-supervision only", "reblur_only"),
    ("EFCR + replay, no re-blur pixel loss", "efcr"),
    ("replay at your optics only (supervised)", "replay"),
)
_RUN_CONTROL = ("steps", "time_budget_s", "device", "val_every", "preview_every")
_MAX_PREVIEW_SIDE = 1024


#: The validation plot: the selection score (validated against the true PSNR), then diagnostics.
SCORE_TITLE = "Selection score"
SCORE_SERIES = "simulated PSNR"
REBLUR_SERIES = "re-blur PSNR (diagnostic)"


# ==========================================================================================
# The widget
# ==========================================================================================
@dataclass

class _Job:
    """What the widget remembers about the run in flight."""

    request: FinetuneRequest
    cancel: threading.Event
    activity: ActivityProgress
    started: float
    worker: GeneratorWorker | None = None
    train_start_step: int | None = None
    train_start_time: float | None = None
    deadline: float | None = None
    last_step: int = 0
    total: int = 0
    smoothed: float | None = None
    outcome: FinetuneOutcome | None = None


class FinetuneWidget(Container):
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
        from ..train.finetune import get_finetune_preset, list_finetune_presets

        super().__init__(labels=False)
        self._viewer = viewer
        self._catalog = catalog if catalog is not None else get_catalog()
        self._job: _Job | None = None
        self._last: FinetuneOutcome | None = None
        self._memory_entry: str | None = None
        self._saved_paths: set[Path] = set()
        self._saved_checkpoint: Path | None = None  # what "Export for bioimage.io" exports
        self._export_worker: GeneratorWorker | None = None
        self._export_unavailable = _finetune_job.bioimageio_unavailable()
        self._prefilled: dict[str, float] = {}
        self._name_edited = False
        self._runs = 0
        self._work_dir: Path | None = None
        self._closed = False
        self._get_preset = get_finetune_preset

        # ---- data
        self._images = Select(label="Blurry images", choices=self._image_choices,
                              allow_multiple=True)
        self._folder = FileEdit(label="…or folder", mode="d", nullable=True)
        self._paired_blurred = ComboBox(label="Paired: blurred", choices=self._image_choices,
                                        nullable=True, value=None)
        self._paired_sharp = ComboBox(label="Paired: sharp", choices=self._image_choices,
                                      nullable=True, value=None)
        self._paired_folder = FileEdit(label="Paired folder", mode="d", nullable=True)
        # ---- optics (0 = the start model's simulation optics)
        self._pixel_size = FloatSpinBox(label="Pixel size (µm)", min=0.0, max=100.0,
                                        step=0.005, value=0.0)
        self._na = FloatSpinBox(label="NA", min=0.0, max=1.7, step=0.05, value=0.0)
        self._wavelength = FloatSpinBox(label="Wavelength (nm)", min=0.0, max=2000.0,
                                        step=10.0, value=0.0)
        self._index = FloatSpinBox(label="Immersion index", min=0.0, max=2.0, step=0.01,
                                   value=0.0)
        self._max_defocus = FloatSpinBox(label="Max defocus (µm)", min=0.0, max=1000.0,
                                         step=0.5, value=0.0)
        for widget, decimals in ((self._pixel_size, 4), (self._na, 3), (self._wavelength, 0),
                                 (self._index, 3), (self._max_defocus, 2)):
            widget.native.setDecimals(decimals)
            widget.native.setSpecialValueText("from model")
        # ---- settings
        presets = list_finetune_presets()
        self._preset = ComboBox(label="Preset", choices=presets,
                                value=self._default_preset(presets))
        self._model = ComboBox(label="Start model", choices=self._model_choices, nullable=True)
        self._steps = SpinBox(label="Steps", min=1, max=1_000_000, value=200)
        self._time_budget = FloatSpinBox(label="Time budget (min)", min=0.0, max=10_000.0,
                                         step=5.0, value=0.0)
        self._time_budget.native.setSpecialValueText("none")
        self._batch_size = SpinBox(label="Batch size", min=1, max=256, value=2)
        self._patch_size = SpinBox(label="Patch size (px)", min=32, max=2048, step=32,
                                   value=128)
        self._lr = FloatSpinBox(label="Learning rate", min=1e-7, max=1e-2, step=1e-5,
                                value=5e-5)
        self._lr.native.setDecimals(7)
        self._efcr_weight = FloatSpinBox(label="EFCR weight λ", min=0.0, max=1.0, step=1e-4,
                                         value=5e-4)
        self._efcr_weight.native.setDecimals(6)
        self._replay = FloatSpinBox(label="Replay fraction", min=0.0, max=1.0, step=0.05,
                                    value=0.5)
        self._advanced = CheckBox(text="Advanced settings", value=False)
        self._mode = ComboBox(label="Objective", choices=MODE_CHOICES, value="full")
        self._replay_folder = FileEdit(label="Replay images", mode="d", nullable=True)
        self._device = ComboBox(label="Device", choices=self._device_choices)
        self._val_every = SpinBox(label="Validate every", min=1, max=100_000, value=25)
        self._preview_every = SpinBox(label="Preview every", min=0, max=100_000, value=50)
        self._preview_every.native.setSpecialValueText("never")
        self._preview_region = ComboBox(label="Preview crop", choices=self._preview_choices,
                                        nullable=True, value=None)
        self._seed = SpinBox(label="Seed", min=0, max=2**31 - 1, value=0)
        # expert settings: collapsed by default, so the panel stays short
        self._advanced_box = Container(
            widgets=[self._lr, self._efcr_weight, self._replay, self._mode,
                     self._replay_folder, self._paired_blurred, self._paired_sharp,
                     self._paired_folder, self._device, self._val_every, self._preview_every,
                     self._seed],
            labels=True, visible=False,
        )
        self._advanced_box.margins = (0, 0, 0, 0)
        # ---- output and controls
        self._name = LineEdit(label="Model name", value="")
        self._output = FileEdit(label="Save to", mode="w", filter="*.safetensors", nullable=True)
        self._start = PushButton(text="Start")
        self._resume = PushButton(text="Resume")
        self._save = PushButton(text="Save")
        buttons = Container(widgets=[self._start, self._resume, self._save], layout="horizontal",
                            labels=False)
        buttons.margins = (0, 0, 0, 0)
        self._export = PushButton(text="Export for bioimage.io…", enabled=False)
        self._progress = ProgressBar(label="Progress", value=0, min=0, max=1)
        self._status = Label(label="Status", value="")
        wrap_label(self._status)
        self._tooltips()
        self._form = scrolling_form(self, [
            Label(value="<b>Data</b> (unlabeled, blurry)"), self._images, self._folder,
            Label(value="<b>Optics</b> of your microscope"), self._pixel_size, self._na,
            self._wavelength, self._index, self._max_defocus,
            Label(value="<b>Training</b>"), self._preset, self._model, self._steps,
            self._time_budget, self._batch_size, self._patch_size, self._preview_region,
            field_row(self._advanced), self._advanced_box,
            Label(value="<b>Result</b>"), self._name, self._output, buttons,
            field_row(self._export), self._progress, self._status,
        ])
        finish_panel(self, self._form)
        self._add_plots()

        self._apply_preset(self._preset.value)
        self._model.value = self._catalog.default_name()
        self._on_model_changed(self._model.value)
        self._select_active_layer()
        self._prefill_optics()
        self._update_state()

        self._preset.changed.connect(self._apply_preset)
        self._model.changed.connect(self._on_model_changed)
        self._name.changed.connect(self._on_name_edited)
        self._images.changed.connect(self._on_images_changed)
        self._folder.changed.connect(self._update_state)
        self._advanced.changed.connect(self._on_advanced)
        self._start.changed.connect(self._on_start_clicked)
        self._resume.changed.connect(lambda *_: self.resume())
        self._save.changed.connect(lambda *_: self.save())
        self._export.changed.connect(lambda *_: self.export_bioimageio())
        self._catalog.connect(self._on_catalog_event)
        layers = viewer.layers
        for event in (layers.events.inserted, layers.events.removed, layers.events.moved):
            event.connect(self._on_layers_changed)
        for layer in layers:
            layer.events.name.connect(self._on_layers_changed)
        self._close_watch = CloseWatch(self.native, self._on_viewer_closed)

    # ------------------------------------------------------------------ construction helpers
    def _tooltips(self) -> None:
        self._images.tooltip = ("Your own blurry images (no ground truth needed); several "
                                "layers and stacks are fine. A crop of the largest is held out "
                                "to score the model.")
        self._folder.tooltip = "A folder of blurry TIFF/PNG images, used with the layers"
        self._paired_blurred.tooltip = "Optional: a blurred image whose sharp version you have"
        self._paired_sharp.tooltip = "Optional: the in-focus image matching 'Paired: blurred'"
        self._paired_folder.tooltip = "Optional: a folder with blur/ and sharp/ subfolders"
        self._pixel_size.tooltip = ("Pixel size in the sample plane; filled from the layer's "
                                    "metadata when known. 'from model': the start model's optics")
        self._na.tooltip = "Objective numerical aperture (re-blur kernels are defocus PSFs)"
        self._wavelength.tooltip = "Emission wavelength"
        self._max_defocus.tooltip = (
            "How far out of focus your images are at most. With pixel size and NA known, "
            "training pairs and the selection score are simulated at your optics up to this "
            "defocus ('from model': the model's training range carried over to your optics)")
        self._index.tooltip = "Immersion refractive index: 1.0 air, 1.333 water, 1.515 oil"
        self._preset.tooltip = "Sensible defaults for a laptop CPU or a GPU"
        self._model.tooltip = "The trained model to adapt (bundled, or a checkpoint)"
        self._steps.tooltip = "Optimiser steps (the run can be stopped earlier and resumed)"
        self._time_budget.tooltip = "Stop cleanly before this many minutes"
        self._lr.tooltip = "Peak learning rate: small, this adapts a trained model"
        self._efcr_weight.tooltip = "Weight of the EFCR contrastive term (paper: 5e-4)"
        self._replay.tooltip = ("Share of each batch that replays the model's simulated "
                                "training pairs, so that it does not forget")
        self._advanced.tooltip = ("Expert settings: learning rate, EFCR weight, replay, "
                                  "objective, paired data, device, validation and seed")
        self._mode.tooltip = "What is optimised (for comparisons); 'full' is recommended"
        self._replay_folder.tooltip = ("In-focus images for replay pairs (default: procedural "
                                       "images)")
        self._preview_region.tooltip = ("Re-deblur this region at every preview: a rectangle "
                                        "drawn in a Shapes layer; empty: the held-out crop")
        self._name.tooltip = "Name of the fine-tuned model in the Defocus Deblur widget"
        self._output.tooltip = "Checkpoint file written by Save"
        self._start.tooltip = "Start fine-tuning; Stop keeps the best weights so far"
        self._resume.tooltip = "Continue the last stopped run (Steps and time budget may change)"
        self._save.tooltip = "Write the fine-tuned model as a checkpoint and list it"
        self._export.tooltip = (self._export_unavailable or
                                "Write the saved checkpoint as a bioimage.io model package "
                                "(.zip) for the model zoo, deepImageJ, ilastik or careamics")

    def _add_plots(self) -> None:
        from ._plot import LinePlot

        self._loss_plot = LinePlot("Training loss", log_left=True)
        self._loss_plot.add_series("loss", color="#9aa5b1")
        self._loss_plot.add_series("smoothed", color="#1f77b4")
        self._val_plot = LinePlot(SCORE_TITLE, left_label="dB", right_label="ratio")
        self._val_plot.add_series(SCORE_SERIES, color="#2ca02c", markers=True)
        self._val_plot.add_series(REBLUR_SERIES, color="#9aa5b1", style="dash", markers=True)
        self._val_plot.add_series("sharpness", color="#d62728", axis="right", style="dash",
                                  markers=True)
        self._loss_plot.setToolTip("Training loss per step (grey) and its moving average")
        self._val_plot.setToolTip(
            "Selection score (green, the one that decides which weights are kept): PSNR on "
            "fixed simulated pairs at your optics, made from real in-focus images the run never "
            "trains on, in focus included; it ranks checkpoints like the true PSNR on held-out "
            "pairs (docs/finetuning.md). The starting weights are kept unless a step beats them. "
            "Diagnostics on a crop of your images: re-blur PSNR (grey; rewards what the re-blur "
            "loss trains, so it can rise while the model gets worse) and sharpness (red, detail "
            "energy of the output relative to the input)")
        layout = self._form.native.layout()
        layout.insertWidget(layout.count() - 1, self._loss_plot)  # above the closing stretch
        layout.insertWidget(layout.count() - 1, self._val_plot)

    @staticmethod
    def _default_preset(presets: Sequence[str]) -> str:
        import torch

        wanted = "gpu" if torch.cuda.is_available() else "cpu-laptop"
        return wanted if wanted in presets else presets[0]

    # ------------------------------------------------------------------ choices
    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        from napari.layers import Image

        return [(layer.name, layer) for layer in self._viewer.layers
                if isinstance(layer, Image) and not layer.rgb
                and PREVIEW_KEY not in (layer.metadata or {})]

    def _preview_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        from napari.layers import Shapes

        return [(f"rectangle in {layer.name!r}", layer) for layer in self._viewer.layers
                if isinstance(layer, Shapes)]

    def _model_choices(self, _widget: Any = None) -> list[tuple[str, str]]:
        choices = [(entry.label, entry.name) for entry in self._catalog.entries()]
        return [*choices, ("Load checkpoint…", LOAD_CHECKPOINT)]

    def _device_choices(self, _widget: Any = None) -> list[tuple[str, str]]:
        from .._device import get_device, list_devices
        from ._deblur import _describe_device

        choices = [(f"auto ({get_device('auto')})", "auto")]
        choices += [(_describe_device(name), name) for name in list_devices()]
        return choices

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

    def _prefill_optics(self) -> None:
        """Fill the optical hints from the first chosen layer's metadata, where it has them."""
        layers = list(self._images.value or [])
        if not layers:
            return
        layer = layers[0]
        try:
            hints = optics_from_layer(layer.metadata, scale=tuple(layer.scale),
                                      units=tuple(layer.units),
                                      source_path=layer_source_path(layer))
        except Exception:  # odd metadata must not break the panel
            logger.debug("could not read optics from %s", layer.name, exc_info=True)
            return
        widgets = {"pixel_size_um": self._pixel_size, "numerical_aperture": self._na,
                   "wavelength_nm": self._wavelength, "refractive_index": self._index}
        for name, value in hints.items():
            widget = widgets[name]
            if widget.min < value <= widget.max:
                widget.value = value
                self._prefilled[name] = float(widget.value)

    def _apply_preset(self, name: Any = None) -> None:
        preset = self._get_preset(str(name or self._preset.value))
        self._steps.value = preset.steps
        self._time_budget.value = (preset.time_budget_s or 0.0) / 60.0
        self._batch_size.value = preset.batch_size
        self._patch_size.value = preset.patch_size
        self._lr.value = preset.lr
        self._efcr_weight.value = preset.efcr_weight
        self._replay.value = preset.replay_fraction
        self._val_every.value = max(1, preset.val_every)
        self._preview_every.value = preset.preview_every

    def _on_model_changed(self, value: Any = None) -> None:
        if value == LOAD_CHECKPOINT:
            self._browse_checkpoint()
            return
        if value is not None and not self._name_edited:
            self._set_name(f"{value}-ft")
        self._update_state()

    def _set_name(self, text: str) -> None:
        with self._name.changed.blocked():
            self._name.value = text

    def _on_name_edited(self, *_: Any) -> None:
        self._name_edited = bool(self._name.value.strip())

    def _on_advanced(self, value: Any = None) -> None:
        self._advanced_box.visible = bool(self._advanced.value)

    def _on_catalog_event(self, event: CatalogEvent) -> None:
        """Catalog changes can come from any thread; Qt widgets must change in the GUI thread."""
        from superqt.utils import ensure_main_thread

        ensure_main_thread(self._apply_catalog_event)(event)

    def _apply_catalog_event(self, event: CatalogEvent) -> None:
        try:
            current = self._model.value
            with self._model.changed.blocked():
                self._model.reset_choices()
        except RuntimeError:  # the Qt widget was deleted (closed dock)
            self._catalog.disconnect(self._on_catalog_event)
            return
        with self._model.changed.blocked():
            if current in self._catalog:
                self._model.value = current
            elif self._catalog.default_name() is not None:
                self._model.value = self._catalog.default_name()
        if self._model.value != current:
            self._on_model_changed(self._model.value)
        self._update_state()

    def _browse_checkpoint(self) -> None:
        from napari.utils.notifications import show_error

        path = _dialogs.ask_checkpoint_path(self.native, "Start from a checkpoint")
        entry = None
        if path:
            try:
                entry = self._catalog.add_checkpoint(path, select=True)
            except (OSError, ValueError) as exc:
                show_error(f"Cannot use {Path(path).name} as a model: {exc}")
        with self._model.changed.blocked():
            self._model.reset_choices()
            self._model.value = (entry.name if entry is not None and entry.name in self._catalog
                                 else self._catalog.default_name())
        self._on_model_changed(self._model.value)

    def _on_viewer_closed(self) -> None:
        """Quit the run at its next step; from now on touch neither the viewer nor widgets.

        Quit, not a clean stop: a final validation and save would be wasted, since nothing is
        listed after the viewer closed and the working folder goes with the panel. Files the
        run already wrote are complete (every write is atomic).
        """
        self._closed = True
        self._catalog.disconnect(self._on_catalog_event)
        if self._export_worker is not None:
            self._export_worker.quit()
        job = self._job
        if job is not None:
            job.cancel.set()
            if job.worker is not None:
                job.worker.quit()

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
        model_ok = self._model.value not in (None, LOAD_CHECKPOINT)
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

    # ------------------------------------------------------------------ settings
    def settings(self) -> FinetuneConfig:
        """The engine settings the fields describe (``ValueError`` for impossible optics)."""
        hints = {
            "pixel_size_um": self._pixel_size.value, "numerical_aperture": self._na.value,
            "wavelength_nm": self._wavelength.value, "refractive_index": self._index.value,
        }
        hints = {k: (float(v) if v and v > 0 else None) for k, v in hints.items()}
        na, index = hints["numerical_aperture"], hints["refractive_index"]
        if na is not None and na >= 1.0 and (index is None or na >= index):
            raise ValueError(
                f"NA {na:g} needs an immersion medium of higher index: set 'Immersion index' "
                "(1.333 water, 1.515 oil)"
            )
        budget_min = float(self._time_budget.value)
        max_defocus = float(self._max_defocus.value)
        return self._get_preset(str(self._preset.value)).replace(
            max_defocus_um=max_defocus if max_defocus > 0 else None,
            steps=int(self._steps.value),
            time_budget_s=budget_min * 60.0 if budget_min > 0 else None,
            batch_size=int(self._batch_size.value),
            patch_size=int(self._patch_size.value),
            lr=float(self._lr.value),
            efcr_weight=float(self._efcr_weight.value),
            replay_fraction=float(self._replay.value),
            mode=str(self._mode.value),
            device=str(self._device.value),
            val_every=int(self._val_every.value),
            preview_every=int(self._preview_every.value),
            seed=int(self._seed.value),
            **hints,
        )

    def _optics_origin(self) -> dict[str, str]:
        values = {"pixel_size_um": self._pixel_size.value, "numerical_aperture": self._na.value,
                  "wavelength_nm": self._wavelength.value,
                  "refractive_index": self._index.value}
        origin = {}
        for name, value in values.items():
            if not value or value <= 0:
                origin[name] = "model"
            elif name in self._prefilled and math.isclose(value, self._prefilled[name]):
                origin[name] = "layer metadata"
            else:
                origin[name] = "entered"
        return origin

    def _preview_crop(self) -> PreviewCrop | None:
        """The rectangle chosen for previews, cut from the first chosen layer's shown plane."""
        from ._layers import layer_axes, select_plane, stack_axes

        shapes = self._preview_region.value
        layers = list(self._images.value or [])
        if shapes is None or not layers:
            return None
        if not len(shapes.data):
            raise ValueError(f"Shapes layer {shapes.name!r} is empty: draw a rectangle in it")
        image = layers[0]
        vertices = np.asarray(shapes.data[0], dtype=float)
        world = np.array([shapes.data_to_world(v) for v in vertices])
        data_pts = np.array([image.world_to_data(w[-image.ndim:]) for w in world])
        ys, xs = data_pts[:, -2], data_pts[:, -1]
        height, width = image.data.shape[-2:]
        y0, y1 = int(max(0, math.floor(ys.min()))), int(min(height, math.ceil(ys.max())))
        x0, x1 = int(max(0, math.floor(xs.min()))), int(min(width, math.ceil(xs.max())))
        if y1 - y0 < 8 or x1 - x0 < 8:
            raise ValueError(
                f"the preview rectangle in {shapes.name!r} covers {max(0, y1 - y0)}×"
                f"{max(0, x1 - x0)} px of {image.name!r}; draw one of at least 8×8 px over it"
            )
        y1, x1 = min(y1, y0 + _MAX_PREVIEW_SIDE), min(x1, x0 + _MAX_PREVIEW_SIDE)
        data = image.data
        if stack_axes(layer_axes(image)):
            plane = select_plane(image, tuple(self._viewer.dims.point))
            data = data[plane.slices(data.ndim)]
        crop = np.asarray(data[..., y0:y1, x0:x1]).reshape(y1 - y0, x1 - x0)
        return PreviewCrop(crop, (y0, x0, y1 - y0, x1 - x0), image.name)

    def _ensure_work_dir(self) -> Path:
        if self._work_dir is None or not self._work_dir.is_dir():
            self._work_dir = Path(tempfile.mkdtemp(prefix="napari-mpt-finetune-"))
            weakref.finalize(self, shutil.rmtree, str(self._work_dir), True)
        return self._work_dir

    def build_request(self) -> FinetuneRequest:
        """A request for a new run from the current fields (``ValueError`` explains problems)."""
        model = self._model.value
        if model in (None, LOAD_CHECKPOINT):
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
                         if k not in _RUN_CONTROL and v != settings.to_dict().get(k))
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
        job = _Job(request=request, cancel=threading.Event(),
                   activity=ActivityProgress(description), started=time.monotonic(),
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
        job.activity.update(DeblurProgress(Stage.RUNNING, update.step, update.total))
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
        job.activity.close()
        if job is self._job:
            self._job = None
            if not self._closed:
                self._update_state()

    # ------------------------------------------------------------------ catalog and saving
    def _model_name(self) -> str:
        name = self._name.value.strip()
        if not name and self._last is not None:
            name = f"{self._last.model_entry.get('name', 'model')}-ft"
        return name or "fine-tuned"

    def _publish(self, outcome: FinetuneOutcome) -> None:
        """List the run's model in the shared catalog (replacing this panel's previous one)."""
        if self._memory_entry is not None and self._memory_entry in self._catalog:
            self._catalog.remove(self._memory_entry)
        entry = self._catalog.add_model(outcome.model, self._model_name())
        self._memory_entry = entry.name

    def _ask_save_path(self) -> str | None:
        """Ask where to save (separate so tests can replace the modal dialog)."""
        from qtpy.QtWidgets import QFileDialog

        suggestion = str(Path.home() / f"{self._model_name()}.safetensors")
        path, _ = QFileDialog.getSaveFileName(self.native, "Save the fine-tuned model",
                                              suggestion, "Checkpoints (*.safetensors)")
        return path or None

    def _confirm_overwrite(self, path: Path) -> bool:
        """Ask before replacing a file this panel did not write (tests replace the dialog)."""
        from qtpy.QtWidgets import QMessageBox

        answer = QMessageBox.question(
            self.native, "Replace file?", f"{path} exists. Replace it with the fine-tuned model?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes

    def save(self, path: str | os.PathLike | None = None) -> Path | None:
        """Write the last run's best model to ``path`` (or 'Save to', or a dialog) and list it.

        A file this panel did not write is only replaced after the user confirms. Returns the
        written path, or ``None`` when nothing was saved.
        """
        from napari.utils.notifications import show_error, show_warning

        outcome = self._last
        if outcome is None or self.running:
            show_warning("Nothing to save yet: run (or stop) a fine-tuning first.")
            return None
        target = path if path is not None else self._output.value
        if target is None or str(target) in ("", "."):
            target = self._ask_save_path()
        if not target:
            return None
        target = Path(target).expanduser()
        if target.suffix != ".safetensors":
            target = target.with_name(target.name + ".safetensors")
        if (target.exists() and target.resolve() not in self._saved_paths
                and not self._confirm_overwrite(target)):
            self._set_status(f"Not saved: {target.name} exists.")
            return None
        name = self._model_name()
        try:
            written = save_finetuned(outcome, target, name=name)
        except (OSError, ValueError, TypeError) as exc:
            show_error(f"Could not save the fine-tuned model: {exc}")
            self._set_status(f"Save failed: {exc}")
            return None
        self._saved_paths.add(written.resolve())
        with self._output.changed.blocked():
            self._output.value = written
        if self._memory_entry is not None and self._memory_entry in self._catalog:
            self._catalog.remove(self._memory_entry)
        self._memory_entry = None
        entry = self._catalog.add_checkpoint(written, name=name, select=True)
        self._saved_checkpoint = written
        self._update_state()
        self._set_status(f"Saved {written.name} (best weights, settings and data description "
                         f"in its header); listed as {entry.name!r}.")
        return written

    # ------------------------------------------------------------------ bioimage.io export
    @property
    def exporting(self) -> bool:
        """True while a bioimage.io export is in flight."""
        return self._export_worker is not None

    def export_bioimageio(self) -> bool:
        """Export the last saved checkpoint as a bioimage.io package, in a worker thread.

        Asks for the ``.zip`` with a save dialog (which itself asks before an existing file is
        replaced). A name typed without ``.zip`` gets it, and the file of that new name is then
        not replaced, since nobody confirmed it. The package is written atomically. Returns
        whether an export was started; the result shows in the status line.
        """
        from napari.utils.notifications import show_warning

        checkpoint = self._saved_checkpoint
        if self._export_unavailable is not None:
            show_warning(self._export_unavailable)
            return False
        if checkpoint is None:
            show_warning("Save the fine-tuned model first: the saved checkpoint is exported.")
            return False
        if self.running or self.exporting:
            show_warning("Wait until the run or the export in progress has ended.")
            return False
        chosen = _dialogs.ask_save_path(self.native, "Export for bioimage.io",
                                        "bioimage.io packages (*.zip)",
                                        str(checkpoint.with_suffix(".zip")))
        if not chosen:
            return False
        target = Path(chosen).expanduser()
        if target.suffix != ".zip":
            target = target.with_name(target.name + ".zip")
            if target.exists():
                self._set_status(f"Not exported: {target.name} exists; choose that file in the "
                                 "dialog to replace it.")
                return False
        connect = {
            "returned": lambda outcome: self._on_export_returned(outcome, target),
            "finished": self._on_export_finished,
        }
        self._export_worker = start_export_worker(checkpoint, target, connect)
        self._set_status(f"Exporting {checkpoint.name} for bioimage.io to {target.name}…")
        self._update_state()
        return True

    def _on_export_returned(self, outcome: Any, target: Path) -> None:
        from napari.utils.notifications import show_error

        if self._closed:
            return
        if isinstance(outcome, FinetuneFailed):
            message = str(outcome.error) or type(outcome.error).__name__
            show_error(f"Could not export for bioimage.io: {message}")
            self._set_status(f"Export failed: {message}")
            return
        if outcome is None:
            self._set_status("Export stopped.")
            return
        formats = ", ".join(outcome.weight_formats) or "no weights"
        skipped = "".join(f"; {fmt} skipped: {why}" for fmt, why in outcome.skipped.items())
        self._set_status(f"Exported {outcome.path.name} for bioimage.io ({formats}{skipped}).")

    def _on_export_finished(self) -> None:
        self._export_worker = None
        if not self._closed:
            self._update_state()


def _is_result(layer: Any) -> bool:
    """A deblurred result of this plugin (its provenance is in ``metadata``)."""
    from ._layers import METADATA_KEY

    return METADATA_KEY in (getattr(layer, "metadata", None) or {})
