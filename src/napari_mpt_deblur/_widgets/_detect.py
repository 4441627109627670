"""The "Detection preview" dock widget: does deblurring change what a nucleus detector finds?

The same classical detector (:func:`napari_mpt_deblur.detect.detect_nuclei`) runs on an input
layer and on its deblurred layer, on the whole image (2-D) or on the slice the viewer shows
(stacks). Detections are matched one-to-one within half the expected diameter
(:func:`napari_mpt_deblur.detect.match_points`), and both point sets are shown as Points layers
``"<input> [nuclei]"`` and ``"<deblurred> [nuclei]"``: magenta for the input, green for the
deblurred image, a hollow ring where the other image has a matching detection and a filled disc
where only this image has one. Every point carries ``features`` (``category``, ``score``,
``diameter_px``) so hovering shows why it is there.

The widget only collects choices; the computation is :func:`~._detect_job.detection_steps`
(Qt-free, in :mod:`._detect_job`), a generator that yields :class:`DetectionProgress` and returns
a :class:`DetectionOutcome`. It runs in a napari generator worker (errors come back as
:class:`~._jobs.DetectionFailed` values, see :mod:`._jobs`); tests and scripts can drive it
synchronously with :func:`run_detection`. The Points layers and the side-by-side view are
:mod:`._detect_layers`; which pair of layers, which detectors and which planes are
:mod:`._detect_inputs` (plain functions the widget calls). The names of the job and layer
modules are importable from here too.
With "Live" ticked, any parameter change (and, for stacks, moving to another slice) re-runs it
after a short pause; a run that is overtaken is abandoned at its next step. So is a run whose
input or deblurred layer is removed (quietly: that is the user's doing, not an error), and a
run in a viewer that closes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSlider,
    FloatSpinBox,
    Label,
    PushButton,
)

from ..detect import DetectionConfig
from ._detect_inputs import (
    default_pair,
    method_choices,
    nuclear_input,
    prepare_detection,
    source_of,
)
from ._detect_job import (
    CATEGORY_MATCHED,
    CATEGORY_ONLY_DEBLURRED,
    CATEGORY_ONLY_INPUT,
    DetectionOutcome,
    DetectionProgress,
    DetectionRequest,
    blob_contrast,
    detection_steps,
    format_summary,
    nuclei_doubt,
    run_detection,
    stain_hint,
)
from ._detect_layers import (
    DEBLURRED_RGB,
    DETECTION_KEY,
    INPUT_RGB,
    NUCLEI_SUFFIX,
    DetectionLayout,
    PointsUpdate,
    apply_points_update,
    data_coordinates,
    find_points_layer,
    pixel_size_from_layer,
    plane_index,
    points_style,
)
from ._form import field_row, finish_panel, scrolling_form, wrap_label
from ._jobs import CloseWatch, DetectionFailed, Job, start_job
from ._layers import image_choices, same_layer

if TYPE_CHECKING:
    import napari
    from napari.qt.threading import GeneratorWorker

logger = logging.getLogger(__name__)

__all__ = [
    "CATEGORY_MATCHED",
    "CATEGORY_ONLY_DEBLURRED",
    "CATEGORY_ONLY_INPUT",
    "DETECTION_KEY",
    "NUCLEI_SUFFIX",
    "DetectionLayout",
    "DetectionOutcome",
    "DetectionProgress",
    "DetectionRequest",
    "DetectionWidget",
    "blob_contrast",
    "detection_steps",
    "format_summary",
    "nuclei_doubt",
    "pixel_size_from_layer",
    "plane_index",
    "run_detection",
    "stain_hint",
]

_LIVE_DELAY_MS = 300


# ------------------------------------------------------------------------------------------
# The widget
# ------------------------------------------------------------------------------------------
@dataclass
class _Job(Job):
    """The run in flight."""

    input_layer: Any
    deblurred_layer: Any
    input_index: dict[int, int]
    deblurred_index: dict[int, int]
    request: DetectionRequest
    live: bool
    where: str = ""

    @property
    def abandoned(self) -> bool:
        """Overtaken, its layer removed, or its viewer closed: its result is not wanted."""
        return self.cancelled


class DetectionWidget(Container):
    """Dock widget that detects nuclei on an input and its deblurred layer and compares them.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer (napari passes it when the widget is opened from the Plugins menu).

    Attributes
    ----------
    runs_completed : int
        Number of runs whose detections were shown (lets tests and scripts wait for a live
        re-run).
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        from qtpy.QtCore import QTimer

        super().__init__(labels=False)
        self._viewer = viewer
        self._job: _Job | None = None
        self._pending: bool | None = None  # a run was asked for while one was in flight
        self._last_error: str | None = None
        self._last_outcome: DetectionOutcome | None = None
        self._watched: list[tuple[Any, Callable[..., None]]] = []
        self._layout = DetectionLayout(viewer)
        self._closed = False
        self._close_watch = CloseWatch(self.native, self._on_viewer_closed)
        self._input_chosen = False  # the user picked the input (not this widget's default)
        self.runs_completed = 0

        self._input = ComboBox(label="Input", choices=self._image_choices, nullable=True)
        self._deblurred = ComboBox(label="Deblurred", choices=self._image_choices, nullable=True)
        self._method = ComboBox(label="Method", choices=method_choices(), value="log")
        self._diameter = FloatSpinBox(label="Diameter (µm)", value=16.0, min=0.1, max=10000.0,
                                      step=0.5)
        self._pixel_size = FloatSpinBox(label="Pixel size (µm)", value=0.645, min=0.0001,
                                        max=1000.0, step=0.005)
        self._pixel_size.native.setDecimals(4)
        self._auto_threshold = CheckBox(value=True, text="Automatic threshold (Otsu, per image)")
        self._threshold = FloatSlider(label="Threshold", value=0.3, min=0.0, max=1.0, step=0.01,
                                      enabled=False)
        self._live = CheckBox(value=False, text="Live (re-run when settings or slice change)")
        self._run = PushButton(text="Detect")
        self._status = Label(label="Status", value="")
        self._summary = Label(label="Result", value="")
        self._side_by_side = PushButton(text="Side by side")
        self._normal_view = PushButton(text="Normal view", enabled=False)
        for label in (self._status, self._summary):
            wrap_label(label)
        self._input.tooltip = "Image before deblurring"
        self._deblurred.tooltip = "The deblurred image (e.g. '<input> [deblurred]')"
        self._method.tooltip = "Classical detectors; StarDist/Cellpose when installed locally"
        self._diameter.tooltip = "Typical nucleus diameter; sets the detector's scales"
        self._pixel_size.tooltip = ("Taken from the layer's scale when its units are lengths; "
                                    "otherwise enter it here")
        self._threshold.tooltip = ("Foreground level on the percentile-normalised image "
                                   "(0 = 1st, 1 = 99.8th percentile)")
        self._live.tooltip = "Re-run shortly after any change; stacks use the slice shown"
        self._side_by_side.tooltip = "Input and deblurred in a grid, each with its detections"
        self._form = scrolling_form(self, [
            self._input, self._deblurred, self._method, self._diameter, self._pixel_size,
            field_row(self._auto_threshold), self._threshold, field_row(self._live),
            field_row(self._run), self._status, self._summary,
            field_row(self._side_by_side, self._normal_view),
        ])
        finish_panel(self, self._form)

        self._timer = QTimer(self.native)
        self._timer.setSingleShot(True)
        self._timer.setInterval(_LIVE_DELAY_MS)
        self._timer.timeout.connect(self._live_run)

        self._select_default_pair()
        self._on_layer_choice(schedule=False)

        self._input.changed.connect(self._on_input_picked)
        self._input.changed.connect(self._on_layer_choice)
        self._deblurred.changed.connect(self._on_layer_choice)
        for widget in (self._method, self._diameter, self._pixel_size, self._threshold):
            widget.changed.connect(self._schedule)
        self._auto_threshold.changed.connect(self._on_auto_threshold)
        self._live.changed.connect(self._schedule)
        self._run.changed.connect(self.start)
        self._side_by_side.changed.connect(self.show_side_by_side)
        self._normal_view.changed.connect(self.show_normal)
        layers = viewer.layers
        layers.events.inserted.connect(self._on_layer_inserted)
        layers.events.removed.connect(self._on_layer_removed)
        for layer in layers:
            layer.events.name.connect(self._on_layers_changed)
        viewer.dims.events.current_step.connect(self._on_slice_changed)
        viewer.dims.events.ndisplay.connect(self._on_slice_changed)

    # ------------------------------------------------------------------ public state
    @property
    def running(self) -> bool:
        """True while a detection run is in flight."""
        return self._job is not None

    @property
    def last_outcome(self) -> DetectionOutcome | None:
        """The last successful run's detections and agreement (``None`` before the first)."""
        return self._last_outcome

    # ------------------------------------------------------------------ choices
    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return image_choices(self._viewer.layers)

    def _source_of(self, layer: Any) -> Any:
        """The input a deblurred image came from (:func:`~._detect_inputs.source_of`)."""
        return source_of(self._viewer.layers, layer)

    def _select_default_pair(self) -> None:
        """Pre-select an (input, deblurred) pair (:func:`~._detect_inputs.default_pair`)."""
        self._set_pair(*default_pair(self._viewer.layers, self._viewer.layers.selection.active))

    def _set_pair(self, source: Any, result: Any) -> None:
        """Refresh both pickers and select ``source`` / ``result`` (``None`` when gone)."""
        layers = self._viewer.layers
        before = (self._input.value, self._deblurred.value)
        with self._input.changed.blocked(), self._deblurred.changed.blocked():
            for picker, value in ((self._input, source), (self._deblurred, result)):
                picker.reset_choices()
                picker.value = value if value is not None and value in layers else None
        after = (self._input.value, self._deblurred.value)
        if any(not (same_layer(a, b) or (a is None and b is None))
               for a, b in zip(before, after, strict=True)):
            self._on_layer_choice()
        else:
            self._update_state()

    # ------------------------------------------------------------------ events
    def _on_layer_inserted(self, event: Any) -> None:
        from napari.layers import Image

        if self._closed:
            return
        layer = event.value
        layer.events.name.connect(self._on_layers_changed)
        if isinstance(layer, Image) and self._source_of(layer) is not None:
            # a new deblurred result (e.g. from the Defocus Deblur widget): compare that pair
            self._set_pair(self._source_of(layer), layer)
        else:
            self._on_layers_changed()

    def _on_layer_removed(self, event: Any) -> None:
        if self._closed:
            return
        job = self._job
        if job is not None and not job.abandoned and any(
                same_layer(event.value, layer) for layer in (job.input_layer, job.deblurred_layer)):
            self._pending = None  # the pair is gone: nothing to re-run
            self._abandon(job)
            self._status.value = f"Stopped: layer {event.value.name!r} was removed."
        self._on_layers_changed()

    def _on_layers_changed(self, event: Any = None) -> None:
        if self._closed:
            return
        self._set_pair(self._input.value, self._deblurred.value)
        if self._input.value is None:
            self._input_chosen = False
        if self._input.value is None and self._deblurred.value is None:
            self._select_default_pair()
        elif self._deblurred.value is None and not self._input_chosen:
            self._prefer_nuclear_input()

    def _on_input_picked(self, *_: Any) -> None:
        """The picker's signal fires only for the user's (or a script's) choice: the widget's
        own choices are made with it blocked (:meth:`_set_pair`)."""
        self._input_chosen = self._input.value is not None

    def _prefer_nuclear_input(self) -> None:
        """Take a nuclear-stain layer added since over the widget's earlier default input
        (:func:`~._detect_inputs.nuclear_input`); the user's own choice is never overridden
        (the caller checks)."""
        better = nuclear_input(self._viewer.layers, self._input.value)
        if better is not None:
            self._set_pair(better, None)

    def _on_layer_choice(self, *_: Any, schedule: bool = True) -> None:
        # what is shown belongs to the previous pair: clear it (and forget it) at once
        self._summary.value = ""
        self._last_outcome = None
        if not self.running:
            self._status.value = ""
        for layer, callback in self._watched:
            try:
                layer.events.data.disconnect(callback)
            except (RuntimeError, TypeError, ValueError):
                pass
        self._watched = []
        for layer in {id(v): v for v in (self._input.value, self._deblurred.value)
                      if v is not None}.values():
            layer.events.data.connect(self._schedule)
            self._watched.append((layer, self._schedule))
        layer = self._input.value
        size = pixel_size_from_layer(layer) if layer is not None else None
        if size is not None:
            with self._pixel_size.changed.blocked():
                self._pixel_size.value = size
        self._pixel_size.enabled = size is None
        self._update_state()
        if schedule:
            self._schedule()

    def _on_auto_threshold(self, *_: Any) -> None:
        self._threshold.enabled = not self._auto_threshold.value
        self._schedule()

    def _on_slice_changed(self, event: Any = None) -> None:
        if self._closed:
            return
        if any(layer is not None and layer.ndim > 2
               for layer in (self._input.value, self._deblurred.value)):
            self._schedule()

    def _schedule(self, *_: Any) -> None:
        """Live mode: (re)start the short pause after which the detection re-runs."""
        if self._live.value and not self._closed:
            self._timer.start()

    def _live_run(self) -> None:
        if self._live.value and not self._closed:
            self.start(live=True)

    def _on_viewer_closed(self) -> None:
        """Abandon the run; from now on touch neither the viewer nor (deleted) widgets."""
        self._closed = True
        self._pending = None
        if self._job is not None:
            self._abandon(self._job)

    @staticmethod
    def _abandon(job: _Job) -> None:
        job.quit()

    # ------------------------------------------------------------------ state
    def _update_state(self) -> None:
        ready = self._input.value is not None and self._deblurred.value is not None
        self._run.enabled = ready
        self._run.text = "Detecting…" if self.running else "Detect"
        have_points = ready and all(
            find_points_layer(self._viewer.layers, layer.name, role) is not None
            for layer, role in ((self._input.value, "input"),
                                (self._deblurred.value, "deblurred")))
        self._side_by_side.enabled = have_points
        self._normal_view.enabled = self._layout.active

    # ------------------------------------------------------------------ running
    def start(self, *_: Any, live: bool = False) -> None:
        """Detect on both layers in a background worker.

        While a run is in flight, the new request waits: the running one is abandoned at its
        next step and the detection starts again with the current settings.
        """
        if self._closed:
            return
        if self.running:
            self._pending = bool(self._pending) or not live  # True: an explicit click waits
            job = self._job
            if job is not None and not job.abandoned:
                self._abandon(job)
            return
        try:
            job = self._prepare(live)
        except (ValueError, TypeError) as exc:
            self._fail(exc, live=live, traceback=False)
            return
        self._job = job
        self._status.value = f"Detecting on {job.input_layer.name}…"
        self._update_state()
        self._close_watch.attach()
        job.worker = self._start_worker(job)

    def _prepare(self, live: bool) -> _Job:
        """Validate the choices and cut out the planes (GUI thread; raises ValueError)."""
        source, result = self._input.value, self._deblurred.value
        threshold: float | str = ("otsu" if self._auto_threshold.value
                                  else float(self._threshold.value))
        config = DetectionConfig(method=self._method.value,
                                 diameter_um=float(self._diameter.value),
                                 pixel_size_um=float(self._pixel_size.value),
                                 threshold=threshold)
        dims = self._viewer.dims
        prepared = prepare_detection(source, result, dims.point, int(dims.ndisplay), config)
        return _Job(source, result, prepared.input_index, prepared.deblurred_index,
                    prepared.request, live, where=prepared.where)

    def _start_worker(self, job: _Job) -> GeneratorWorker:
        return start_job(
            detection_steps(job.request), DetectionFailed, "detection",
            on_yielded=lambda update: self._on_progress(job, update),
            on_returned=lambda outcome: self._on_returned(job, outcome),
            on_finished=lambda: self._on_finished(job),
        )

    def _on_progress(self, job: _Job, update: DetectionProgress) -> None:
        if job is self._job and not job.abandoned:
            name = (job.input_layer.name if update.stage == "input"
                    else job.deblurred_layer.name if update.stage == "deblurred" else "")
            self._status.value = (f"Detecting on {name}…" if name else "Matching…")

    def _on_returned(self, job: _Job, outcome: DetectionOutcome | DetectionFailed) -> None:
        if job.abandoned:
            return
        if isinstance(outcome, DetectionFailed):
            self._fail(outcome.error, live=job.live, traceback=True)
            return
        try:
            self._show(job, outcome)
        except Exception as exc:  # a layer problem must not leave the widget stuck
            logger.exception("could not show the detections")
            self._fail(exc, live=job.live, traceback=True)
            return
        self._last_outcome = outcome
        self._last_error = None
        self.runs_completed += 1
        doubt = nuclei_doubt(outcome, job.input_layer.name,
                             getattr(job.input_layer, "metadata", None))
        self._summary.value = format_summary(outcome, job.where, doubt)
        self._status.value = "Done"

    def _on_finished(self, job: _Job) -> None:
        if job is not self._job:
            return
        self._job = None
        if self._closed:
            return
        self._update_state()
        if self._pending is not None:
            live = not self._pending
            self._pending = None
            self.start(live=live)

    def _fail(self, exc: BaseException, *, live: bool, traceback: bool) -> None:
        """Show an error; in live mode only when it differs from the last one (no flood)."""
        from napari.utils.notifications import Notification, notification_manager, show_error

        message = str(exc) or type(exc).__name__
        self._status.value = f"Failed: {message}"
        if live and message == self._last_error:
            return
        self._last_error = message
        if traceback:  # unexpected: the traceback goes behind the notification's details
            notification_manager.dispatch(Notification.from_exception(exc))
        else:
            show_error(f"Detection preview: {message}")

    def _show(self, job: _Job, outcome: DetectionOutcome) -> None:
        """Update (or add) both Points layers; on failure, remove the ones this run added."""
        layers = self._viewer.layers
        for layer in (job.input_layer, job.deblurred_layer):
            if layer not in layers:
                raise ValueError(f"layer {layer.name!r} was removed during the detection")
        input_cat, deblurred_cat = outcome.categories()
        common = {"config": job.request.config.to_dict(), **outcome.to_dict(),
                  "slice": job.where or None}
        updates = [
            ("input", PointsUpdate(
                job.input_layer, job.input_layer.name + NUCLEI_SUFFIX,
                data_coordinates(outcome.input.points, job.input_layer, job.input_index),
                points_style(input_cat, INPUT_RGB, outcome.input),
                {"source": job.input_layer.name, "role": "input",
                 "other": job.deblurred_layer.name, **common})),
            ("deblurred", PointsUpdate(
                job.deblurred_layer, job.deblurred_layer.name + NUCLEI_SUFFIX,
                data_coordinates(outcome.deblurred.points, job.deblurred_layer,
                                  job.deblurred_index),
                points_style(deblurred_cat, DEBLURRED_RGB, outcome.deblurred),
                {"source": job.deblurred_layer.name, "role": "deblurred",
                 "other": job.input_layer.name, **common})),
        ]
        added = []
        try:
            for role, update in updates:
                layer, is_new = apply_points_update(self._viewer, update, role)
                if is_new:
                    added.append(layer)
        except Exception:
            for layer in added:
                if layer in layers:
                    layers.remove(layer)
            raise
        self._update_state()

    # ------------------------------------------------------------------ comparison view
    def show_side_by_side(self, *_: Any) -> None:
        """Input and deblurred image in a grid, each panel with its own detections."""
        from napari.utils.notifications import show_warning

        source, result = self._input.value, self._deblurred.value
        layers = self._viewer.layers
        points = [find_points_layer(layers, layer.name, role) if layer is not None else None
                  for layer, role in ((source, "input"), (result, "deblurred"))]
        if source is None or result is None or any(p is None for p in points):
            show_warning("Run the detection first: there are no detections to compare.")
            return
        self._layout.show([(source, points[0]), (result, points[1])])
        self._update_state()

    def show_normal(self, *_: Any) -> None:
        """Undo the side-by-side layout."""
        self._layout.restore()
        self._update_state()

