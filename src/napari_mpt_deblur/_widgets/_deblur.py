"""The "Defocus Deblur" dock widget: pick an image, a model and a device, deblur, compare.

The widget only collects choices and shows state; the work is the core ``deblur`` driven by
:mod:`._worker` in a napari thread worker, and the layer bookkeeping is :mod:`._layers`. Sub
widgets are ``self._name`` attributes so tests (and scripts) can set them directly, then call
:meth:`DeblurWidget.start` or click ``self._run``.

A run is cancelled when its input layer is removed (its result would belong to nothing in the
viewer) and when the viewer closes; either way nothing is added. Removing any other layer does
not disturb it.

The Optics group (pixel size, NA, emission wavelength, immersion index: the fine-tune panel's
fields, :mod:`._optics`) is filled from the chosen layer's metadata and scale. An
optics-conditioned model gets it with every tile; for a blind model, every bundled one so far,
the fields are shown disabled. Whatever the model, a notice suggests fine-tuning when the layer's
pixel size is far from the sampling the model was trained at.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, Container, Label, ProgressBar, PushButton

from ..models.catalog import ModelCatalog, get_catalog
from ._compare import CompareWidget
from ._form import field_row, finish_panel, scrolling_form, wrap_label
from ._jobs import Job
from ._layers import (
    METADATA_KEY,
    PlaneSelection,
    find_result_layer,
    image_choices,
    input_of_result,
    is_comparison_layer,
    layer_axes,
    make_provenance,
    result_layer_kwargs,
    same_layer,
    select_plane,
    stack_axes,
)
from ._optics import OpticsFields, sampling_notice
from ._pickers import LOAD_CHECKPOINT, ModelPicker, device_picker
from ._worker import (
    ActivityProgress,
    CloseWatch,
    DeblurFailed,
    DeblurOutcome,
    DeblurProgress,
    DeblurRequest,
    Stage,
    describe_progress,
    describe_work,
)

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

__all__ = ["LOAD_CHECKPOINT", "DeblurWidget"]

MODEL_TOOLTIP = "Bundled weights, checkpoints you loaded, or load one from disk"
TILE_CHOICES = (
    ("auto (fits in memory)", "auto"),
    ("whole plane", "0"),
    ("128 px", "128"),
    ("256 px", "256"),
    ("512 px", "512"),
    ("1024 px", "1024"),
    ("2048 px", "2048"),
)
SCOPE_CHOICES = (("whole stack", "stack"), ("current slice (preview)", "slice"))
#: Test-time augmentation (engine ``ensemble``): views averaged per tile.
QUALITY_CHOICES = (("standard", 1), ("high: 8 orientations averaged (8× slower)", 8))
OPTICS_USED_TOOLTIP = ("The model is optics-conditioned: it is told these optics with every "
                       "tile. Filled from the layer's metadata; 'unknown' fields are not given "
                       "(without pixel size and NA it runs on its default)")
OPTICS_BLIND_TOOLTIP = ("{model} is blind to optics: it sees pixels only and would ignore "
                        "these values. Optics-conditioned models use them")


@dataclass
class _Job(Job):
    """What the widget remembers about the run in flight."""

    layer: Any
    axes: str
    plane: PlaneSelection | None
    planes: int = 1
    reason: str = ""  # why it was cancelled, when not by the user


class DeblurWidget(Container):
    """Dock widget that deblurs image layers with MPT models.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer (napari passes it when the widget is opened from the Plugins menu).
    catalog : ModelCatalog, optional
        Where the model choices come from; default: the catalog shared with the reader and the
        fine-tune panel.
    """

    def __init__(self, viewer: napari.viewer.Viewer, catalog: ModelCatalog | None = None) -> None:
        super().__init__(labels=False)
        self._viewer = viewer
        self._catalog = catalog if catalog is not None else get_catalog()
        self._job: _Job | None = None
        self._last_result: Any = None
        self._closed = False
        self._close_watch = CloseWatch(self.native, self._on_viewer_closed)

        self._layer = ComboBox(label="Image", choices=self._layer_choices, nullable=True)
        self._models = ModelPicker(
            self._catalog, label="Model", tooltip=MODEL_TOOLTIP,
            dialog_title="Load a deblurring checkpoint", on_change=self._update_state,
            on_catalog_change=self._update_state, follow_selection=True,
        )
        self._model = self._models.combo
        self._device = device_picker()
        self._tile = ComboBox(label="Tile size", choices=TILE_CHOICES, value="auto")
        self._scope = ComboBox(label="Stack", choices=SCOPE_CHOICES, value="stack")
        self._quality = ComboBox(label="Quality", choices=QUALITY_CHOICES, value=1)
        self._optics = OpticsFields(unknown_text="unknown")
        self._optics_title = Label(value="<b>Optics</b> of your microscope")
        self._optics_note = Label(label="Note", value="")
        wrap_label(self._optics_note)
        self._optics_note.visible = False
        self._optics_layer: Any = None  # the layer the optics fields were filled from
        self._run = PushButton(text="Deblur")
        self._progress = ProgressBar(label="Progress", value=0, min=0, max=1, visible=False)
        self._status = Label(label="Status", value="Ready.")
        wrap_label(self._status)  # long messages must not widen the dock
        self._compare = CompareWidget(viewer, self.comparison_pair)
        self._layer.tooltip = "Image layer to deblur (follows the layer selection)"
        self._tile.tooltip = "Large images are cut into overlapping tiles that fit in memory"
        self._scope.tooltip = "Deblur every plane, or only the one shown (quick preview)"
        self._quality.tooltip = (
            "High: each tile is deblurred in its 8 rotations and mirror images and the results "
            "are averaged; about +0.3 dB PSNR for 8× the time, same memory"
        )
        self._form = scrolling_form(self, [
            self._layer, self._model, self._device, self._tile, self._scope, self._quality,
            self._optics_title, *self._optics.widgets.values(), self._optics_note,
            field_row(self._run), self._progress, self._status, self._compare,
        ])
        finish_panel(self, self._form)

        self._select_active_layer()
        self._update_state()

        self._layer.changed.connect(self._update_state)
        self._optics.pixel_size.changed.connect(self._update_optics)
        self._run.changed.connect(self._on_run_clicked)
        layers = viewer.layers
        layers.selection.events.active.connect(self._on_active_layer)
        for event in (layers.events.inserted, layers.events.removed, layers.events.moved):
            event.connect(self._on_layers_changed)
        for layer in layers:
            layer.events.name.connect(self._on_layers_changed)

    # ------------------------------------------------------------------ choices
    def _layer_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return image_choices(self._viewer.layers)

    def _model_choices(self, _widget: Any = None) -> list[tuple[str, str]]:
        return self._models.choices()

    def _select_active_layer(self) -> None:
        layer = self._viewer.layers.selection.active
        target = self._input_for(layer)
        if target is not None:
            self._layer.value = target
        elif self._layer.value is None:
            choices = self._layer_choices()
            if choices:
                self._layer.value = choices[-1][1]

    def _input_for(self, layer: Any) -> Any:
        """The layer the picker should show when ``layer`` is selected (a result -> its input)."""
        from napari.layers import Image

        if not isinstance(layer, Image) or is_comparison_layer(layer):
            return None
        source = input_of_result(self._viewer.layers, layer)
        return source if source is not None else layer

    # ------------------------------------------------------------------ events
    def _on_active_layer(self, event: Any = None) -> None:
        if self.running or self._closed:
            return
        active = self._viewer.layers.selection.active
        target = self._input_for(active)
        if target is not None:
            self._layer.reset_choices()
            self._layer.value = target
            if not same_layer(active, target):  # a result was selected: compare it with its input
                self._last_result = active
        self._update_state()

    def _on_layers_changed(self, event: Any = None) -> None:
        if self._closed:
            return
        kind = getattr(event, "type", "") if event is not None else ""
        if kind == "inserted":
            event.value.events.name.connect(self._on_layers_changed)
        job = self._job
        if kind == "removed" and job is not None and same_layer(event.value, job.layer):
            self._stop(job, f"the input layer {job.layer.name!r} was removed")
        current = self._layer.value
        self._layer.reset_choices()
        if current is not None and current in self._viewer.layers:
            self._layer.value = current
        elif self._layer.value is None:
            self._select_active_layer()
        self._update_state()

    # ------------------------------------------------------------------ state
    @property
    def running(self) -> bool:
        """True while a deblurring run is in flight."""
        return self._job is not None

    def _update_state(self, *_: Any) -> None:
        layer = self._layer.value
        is_stack = False
        if layer is not None:
            try:
                is_stack = bool(stack_axes(layer_axes(layer)))
            except ValueError:
                is_stack = False
        self._scope.visible = is_stack
        model_ok = self._models.ready
        if self.running:
            self._run.text = "Cancel"
            self._run.enabled = not self._job.cancelled
        else:
            self._run.text = "Deblur"
            self._run.enabled = layer is not None and model_ok
            if not model_ok and not len(self._catalog):
                self._status.value = "No trained model is installed yet: load a checkpoint."
        for widget in (self._layer, self._model, self._device, self._tile, self._scope,
                       self._quality):
            widget.enabled = not self.running
        self._update_optics()
        self._compare.update_enabled()

    def _update_optics(self, *_: Any) -> None:
        """Refill the optics from a newly chosen layer; enable them for a conditioned model;
        show the sampling notice."""
        layer = self._layer.value
        changed = (layer is not None or self._optics_layer is not None) and not same_layer(
            layer, self._optics_layer)
        if changed:
            self._optics_layer = layer
            self._optics.fill(layer, clear=True)
        model = self._models.optics()
        self._optics.set_enabled(
            model.conditioned and not self.running,
            OPTICS_USED_TOOLTIP if model.conditioned
            else OPTICS_BLIND_TOOLTIP.format(model=self._model.value or "The model"))
        notice = sampling_notice(self._optics.values()["pixel_size_um"], model.pixel_sizes_um)
        self._optics_note.value = notice
        self._optics_note.visible = bool(notice)

    def optics(self) -> dict[str, float] | None:
        """The optics a run gives the model: the known fields for an optics-conditioned model,
        ``None`` for a blind one (``ValueError`` for impossible values, e.g. NA above n)."""
        if not self._models.optics().conditioned:
            return None
        from ..simulate.optics import OpticsHints

        known = {k: v for k, v in self._optics.values().items() if v is not None}
        OpticsHints(**known)  # validated here, where the user can correct it
        return known or None

    def _set_status(self, text: str) -> None:
        self._status.value = text

    # ------------------------------------------------------------------ running
    def _on_run_clicked(self, *_: Any) -> None:
        if self.running:
            self.cancel()
        else:
            self.start()

    def start(self) -> None:
        """Deblur the chosen layer in a background worker (no-op while a run is in flight)."""
        from napari.utils.notifications import show_warning

        from ._worker import start_worker

        if self.running or self._closed:
            return
        layer, model = self._layer.value, self._model.value
        if layer is None or model in (None, LOAD_CHECKPOINT):
            show_warning("Choose an image layer and a model first.")
            return
        if layer.multiscale:
            show_warning(
                f"{layer.name!r} is a multiscale (pyramid) layer; open its full-resolution level "
                "as an image, or use the command line (mpt-deblur deblur) for very large data."
            )
            return
        try:
            axes = layer_axes(layer)
        except ValueError as exc:
            show_warning(str(exc))
            return
        plane = None
        image = layer.data
        if self._scope.value == "slice" and stack_axes(axes):
            plane = select_plane(layer, tuple(self._viewer.dims.point))
            image = layer.data[plane.slices(layer.data.ndim)]
        tile = None if self._tile.value == "auto" else int(self._tile.value)
        try:
            optics = self.optics()
        except ValueError as exc:
            show_warning(f"Optics: {exc}")
            return
        request = DeblurRequest(image=image, axes=axes, model=model, device=self._device.value,
                                tile=tile, label=layer.name, ensemble=int(self._quality.value),
                                optics=optics)
        what = layer.name
        if plane is not None:
            what += " (" + ", ".join(f"{k}={v}" for k, v in plane.describe().items()) + ")"
        planes = 1 if plane is not None else math.prod(
            layer.data.shape[i] for i in stack_axes(axes))
        job = _Job(layer=layer, axes=axes, plane=plane,
                   activity=ActivityProgress(f"Deblurring {what}"), planes=planes)
        self._job = job
        self._progress.value, self._progress.max = 0, 0
        self._progress.visible = True
        self._set_status(f"Loading model {model}…")
        self._update_state()
        self._close_watch.attach()
        job.worker = start_worker(
            request, catalog=self._catalog, cancel=job.cancel,
            on_progress=lambda update: self._on_progress(job, update),
            on_returned=lambda outcome: self._on_returned(job, outcome),
            on_finished=lambda: self._on_finished(job),
        )

    def cancel(self) -> None:
        """Stop the run after the tile in progress; no layer is added or changed."""
        if self._job is not None:
            self._stop(self._job, "")

    def _stop(self, job: _Job, reason: str) -> None:
        job.reason = job.reason or reason
        job.quit()
        self._set_status("Cancelling after the current tile…")
        self._update_state()

    def _on_viewer_closed(self) -> None:
        """Stop the run; from now on touch neither the viewer nor (possibly deleted) widgets."""
        self._closed = True
        self._models.disconnect()
        job = self._job
        if job is not None:
            job.reason = job.reason or "the viewer was closed"
            job.quit()

    def _cancelled_text(self, job: _Job) -> str:
        return f"Cancelled: {job.reason}; nothing was added." if job.reason else \
            "Cancelled: nothing was added."

    def _on_progress(self, job: _Job, update: DeblurProgress) -> None:
        if job is not self._job or self._closed:
            return
        if update.stage is Stage.RUNNING:
            if not job.cancel.is_set():
                self._set_status(describe_progress(update))
            if update.total > 0:
                self._progress.max = update.total
                self._progress.value = update.done
        # last: napari's activity dock may process pending Qt events while it repaints, which
        # can deliver this run's end (status "Done", job cleared) before this call returns
        if update.stage is Stage.RUNNING:
            job.activity.update(update.done, update.total)

    def _on_returned(self, job: _Job, outcome: DeblurOutcome | DeblurFailed | None) -> None:
        from napari.utils.notifications import notification_manager, show_error

        if self._closed:  # the viewer is gone; so is any place to show this
            logger.debug("deblurring ended after the viewer closed: %r", type(outcome).__name__)
            return
        if isinstance(outcome, DeblurFailed):
            exc = outcome.error
            self._set_status(f"Failed: {exc}")
            # a notification with the traceback behind its "details" button
            notification_manager.receive_error(type(exc), exc, exc.__traceback__)
            return
        if outcome is None or job.cancel.is_set():
            self._set_status(self._cancelled_text(job))
            return
        try:
            layer = self._show_result(job, outcome)
        except Exception as exc:  # a bad kwarg must not leave the widget stuck
            logger.exception("could not add the deblurred layer")
            show_error(f"Deblurring finished but the result could not be shown: {exc}")
            self._set_status(f"Failed: {exc}")
            return
        report = outcome.report
        work = describe_work(int(report.get("planes") or 1), int(report.get("n_tiles") or 0))
        self._set_status(f"Done: {report.get('seconds', 0.0):.1f} s on {report.get('device')}, "
                         f"{work} → {layer.name}")

    def _on_finished(self, job: _Job) -> None:
        job.close_activity()
        if job is self._job:
            self._job = None
            if self._closed:
                return
            self._progress.visible = False
            if job.cancel.is_set() and not self._status.value.startswith("Cancelled"):
                self._set_status(self._cancelled_text(job))
            self._update_state()

    def _show_result(self, job: _Job, outcome: DeblurOutcome) -> Any:
        """Add the result as a layer, or update the one from an earlier run with same settings."""
        provenance = make_provenance(
            input_name=job.layer.name, axes=job.axes, entry=outcome.entry,
            model_info=outcome.model_info, report=outcome.report, plane=job.plane,
        )
        kwargs = result_layer_kwargs(job.layer, outcome.data, provenance=provenance,
                                     plane=job.plane)
        existing = find_result_layer(self._viewer.layers, provenance["key"])
        if existing is not None:
            existing.data = outcome.data
            existing.translate = kwargs["translate"]
            existing.metadata = kwargs["metadata"]
            layer = existing
        else:
            layer = self._viewer.add_image(outcome.data, **kwargs)
        self._last_result = layer
        self._compare.update_enabled()
        return layer

    # ------------------------------------------------------------------ comparison
    def comparison_pair(self) -> tuple[Any, Any]:
        """``(input layer, its latest result)`` for the compare buttons (``None`` if missing)."""
        source = self._layer.value
        if source is None:
            return None, None
        layers = self._viewer.layers
        last = self._last_result
        if (last is not None and last in layers
                and same_layer(input_of_result(layers, last), source)):
            return source, last
        results = [layer for layer in layers
                   if METADATA_KEY in (layer.metadata or {})
                   and same_layer(input_of_result(layers, layer), source)]
        return source, (results[-1] if results else None)
