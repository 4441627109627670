"""Worker plumbing shared by the dock widgets: run a job generator, stop it, show its end.

Every panel's computation is a generator (progress yielded, result returned: see
:mod:`._worker`, :mod:`._finetune_job`, :mod:`._detect_job`) that receives plain data, never a
widget. This module is what the deblur, fine-tune and detection panels share around it:

* :func:`start_job` runs the generator in a napari ``thread_worker`` with ``on_yielded`` /
  ``on_returned`` / ``on_finished`` callbacks in the GUI thread; :func:`drive` runs the same
  generator synchronously (tests, scripts, the Layers menu filter).
* Errors travel as values (:class:`JobFailed` and its per-panel kinds :class:`DeblurFailed`,
  :class:`FinetuneFailed`, :class:`DetectionFailed`; see :func:`returning_errors`).
* :class:`Job` is the bookkeeping of a run in flight (cancel event, worker, activity bar),
  :class:`ActivityProgress` its bar in napari's activity dock, and :class:`CloseWatch` tells a
  panel when the viewer window that holds it closes, so that it can quit its job and stop
  touching the viewer.

Only Qt plumbing and plain data live here; nothing knows about images or models.
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from napari.qt.threading import GeneratorWorker
    from qtpy.QtWidgets import QWidget

logger = logging.getLogger(__name__)

__all__ = [
    "ActivityProgress",
    "CloseWatch",
    "DeblurFailed",
    "DetectionFailed",
    "FinetuneFailed",
    "Job",
    "JobFailed",
    "drive",
    "format_clock",
    "returning_errors",
    "start_job",
]


@dataclass(frozen=True)
class JobFailed:
    """A job that raised; returned (not raised) by the worker generator, see :func:`start_job`.

    Attributes
    ----------
    error : Exception
        What was raised, with its traceback.
    """

    error: Exception


@dataclass(frozen=True)
class DeblurFailed(JobFailed):
    """A deblurring run that raised (:func:`._worker.start_worker`)."""


@dataclass(frozen=True)
class FinetuneFailed(JobFailed):
    """A fine-tuning run or a bioimage.io export that raised (:mod:`._finetune_job`)."""


@dataclass(frozen=True)
class DetectionFailed(JobFailed):
    """A nucleus detection run that raised (:mod:`._detect_job`)."""


@dataclass(kw_only=True)
class Job:
    """What a panel keeps about the run in flight; panels subclass it with their own fields.

    Attributes
    ----------
    cancel : threading.Event
        Set to stop the job at its next step (the generator checks it).
    worker : GeneratorWorker or None
        The napari worker running it, once started.
    activity : ActivityProgress or None
        Its bar in napari's activity dock, if it has one.
    """

    cancel: threading.Event = field(default_factory=threading.Event)
    worker: GeneratorWorker | None = None
    activity: ActivityProgress | None = None

    @property
    def cancelled(self) -> bool:
        """Whether the job was told to stop."""
        return self.cancel.is_set()

    def quit(self) -> None:
        """Stop at the next step and stop iterating the worker (its result is not wanted)."""
        self.cancel.set()
        if self.worker is not None:
            self.worker.quit()

    def close_activity(self) -> None:
        """Remove the activity bar (idempotent)."""
        if self.activity is not None:
            self.activity.close()


def format_clock(seconds: float) -> str:
    """``"0:07"``, ``"12:30"``, ``"1:02:03"``: a short duration for status lines."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def drive(steps: Generator[Any, None, Any], on_update: Callable[[Any], None] | None = None) -> Any:
    """Run a job generator to the end in the calling thread; return its return value.

    The widgets' jobs are generators (progress yielded, result returned) so that one body
    serves the napari worker and plain synchronous callers (tests, scripts, the filter command).
    """
    while True:
        try:
            update = next(steps)
        except StopIteration as stop:
            return stop.value
        if on_update is not None:
            on_update(update)


def returning_errors(
    steps: Generator[Any, None, Any], failed: Callable[[Exception], Any], what: str
) -> Generator[Any, None, Any]:
    """``steps``, with an exception turned into a returned ``failed(exc)`` value.

    superqt's ``GeneratorWorker`` reads a ``RuntimeError`` escaping the generator as "the worker
    was deleted" and then emits neither ``errored`` nor ``finished``. Most torch failures are
    ``RuntimeError``s, so errors must travel as values for the GUI to hear about them.
    """
    try:
        return (yield from steps)
    except Exception as exc:
        logger.debug("%s failed", what, exc_info=True)
        return failed(exc)


def start_job(
    steps: Generator[Any, None, Any],
    failed: Callable[[Exception], Any],
    what: str,
    *,
    on_yielded: Callable[[Any], None] | None = None,
    on_returned: Callable[[Any], None] | None = None,
    on_finished: Callable[[], None] | None = None,
) -> GeneratorWorker:
    """Run the job generator ``steps`` in a started napari worker; return the worker.

    The callbacks run in the GUI thread (Qt signals): ``on_yielded`` per record,
    ``on_returned`` with the generator's return value (``failed(exc)`` when it raised), then
    ``on_finished`` in every case, including ``worker.quit()``.
    Errors come back through ``returned`` as ``failed(exc)`` (see :func:`returning_errors`).
    superqt's ``worker.quit()`` only stops *iterating*: the generator stays suspended until it
    is garbage collected, so its ``finally`` blocks (which stop the deblur engine's helper
    thread) would run at an unpredictable time, in whichever thread drops the last reference.
    Here the generator is closed in the worker thread the moment the worker ends, so a quit run
    (by a panel, or by napari when its window closes) stops computing at once.
    """
    from napari.qt.threading import create_worker
    from qtpy.QtCore import Qt

    connect = {name: fn for name, fn in (("yielded", on_yielded), ("returned", on_returned),
                                         ("finished", on_finished)) if fn is not None}
    worker = create_worker(returning_errors, steps, failed, what, _start_thread=False,
                           _connect=connect)
    # direct: runs in the worker thread, where the generator ran; a no-op once it has ended
    worker.finished.connect(steps.close, Qt.ConnectionType.DirectConnection)
    worker.start()
    return worker


class CloseWatch:
    """Calls ``on_close`` once, when the viewer window holding a panel closes.

    napari offers plugins no "viewer closed" event, and the panel's ``destroyed`` signal can
    come late: File › Close Window and quitting napari close the main window but leave its
    deletion to the event loop, which first delivers the worker signals already queued, so a
    late result could still reach the closed viewer. The watch therefore also filters the close
    events that such programmatic closes (and ``viewer.close()``) send to the top-level window;
    napari always accepts them. A close from the window manager's button is different: it may
    still be refused in napari's confirmation dialog, so for it only the deletion that follows
    acceptance (``destroyed``) counts.

    ``on_close`` may run while Qt is deleting the panel: it must only set flags, cancel and
    quit, never touch a Qt widget.

    Parameters
    ----------
    widget : QWidget
        The panel's native widget.
    on_close : callable
        Called without arguments, at most once.
    """

    def __init__(self, widget: QWidget, on_close: Callable[[], None]) -> None:
        self._widget = widget
        self._on_close = on_close
        self._window: Callable[[], Any] = lambda: None  # weak: must not keep napari's window
        self._filter: Any = None
        self.closed = False
        widget.destroyed.connect(lambda *_: self._fire())

    def attach(self) -> None:
        """Watch the top-level window that holds the panel now (docking happens after init)."""
        if self.closed:
            return
        window = self._widget
        while window.parentWidget() is not None:
            window = window.parentWidget()
        previous = self._window()
        if window is previous:
            return
        if self._filter is None:
            self._filter = _close_filter_type()(self._fire, self._widget)  # dies with the panel
        if previous is not None:
            try:
                previous.removeEventFilter(self._filter)
            except RuntimeError:  # that window is already gone
                pass
        window.installEventFilter(self._filter)
        self._window = weakref.ref(window)

    def _fire(self) -> None:
        if not self.closed:
            self.closed = True
            self._on_close()


@functools.cache
def _close_filter_type() -> type:
    """The event filter class behind :class:`CloseWatch` (Qt imported only when needed)."""
    from qtpy.QtCore import QEvent, QObject

    class CloseFilter(QObject):
        def __init__(self, callback: Callable[[], None], parent: QObject) -> None:
            super().__init__(parent)
            self._callback = callback

        def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # Qt's name
            if event.type() == QEvent.Type.Close and not event.spontaneous():
                self._callback()
            return False

    return CloseFilter


class ActivityProgress:
    """A bar in napari's activity dock for a job: indeterminate until a total is known.

    Created and updated in the GUI thread only.
    """

    def __init__(self, description: str) -> None:
        from napari.utils import progress

        self._bar = progress(total=0, desc=description)
        self._closed = False

    def update(self, done: int, total: int) -> None:
        """Show ``done`` of ``total`` (nothing changes while ``total`` is unknown, 0)."""
        if self._closed or total <= 0:
            return
        if self._bar.total != total:
            self._bar.total = total
        delta = done - self._bar.n
        if delta > 0:
            self._bar.update(delta)

    def close(self) -> None:
        """Remove the bar from the activity dock (idempotent)."""
        if not self._closed:
            self._closed = True
            self._bar.close()
