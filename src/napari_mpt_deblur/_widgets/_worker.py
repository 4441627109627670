"""Run the core ``deblur`` off the GUI thread and report its progress as yielded records.

:func:`deblur_steps` is the one computation, written as a generator: it loads the model
(through the package's one model cache, :mod:`napari_mpt_deblur.models.resolve`), starts
:func:`napari_mpt_deblur.engine.predict.deblur` in a helper thread whose ``progress(done,
total)`` callbacks arrive through a queue, yields a :class:`DeblurProgress` per tile or plane,
and *returns* a :class:`DeblurOutcome` (``None`` when cancelled). The widget runs it in a
napari generator ``thread_worker`` (:func:`start_worker`); tests and the Layers → Filter
command drive the same generator synchronously (:func:`run_blocking`).

The worker receives a plain :class:`DeblurRequest` (arrays and names, no widgets or layers) and a
cancel event. Setting the event stops the engine before its next tile; closing the generator
early sets it too, and :func:`start_job` closes it as soon as a worker that was told to
``quit()`` ends, so an abandoned run never keeps computing.

The job plumbing the three panels share (:func:`start_job`, :func:`drive`,
:class:`CloseWatch`, :class:`ActivityProgress`, the error values) is :mod:`._jobs`; its names
are importable from here too.
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ._jobs import (
    ActivityProgress,
    CloseWatch,
    DeblurFailed,
    drive,
    format_clock,
    returning_errors,
    start_job,
)

if TYPE_CHECKING:
    from napari.qt.threading import GeneratorWorker

    from ..models.catalog import ModelCatalog
    from ..models.info import DeblurModel

logger = logging.getLogger(__name__)

__all__ = [
    "ActivityProgress",
    "CloseWatch",
    "DeblurFailed",
    "DeblurOutcome",
    "DeblurProgress",
    "DeblurRequest",
    "Stage",
    "clear_model_cache",
    "deblur_steps",
    "describe_progress",
    "describe_work",
    "drive",
    "format_clock",
    "plural",
    "returning_errors",
    "run_blocking",
    "start_job",
    "start_worker",
]


@dataclass(frozen=True)
class DeblurRequest:
    """Everything one run needs, as plain data.

    Attributes
    ----------
    image : array_like
        The pixels to deblur (numpy, or dask: computed in the worker thread).
    axes : str
        Layout of ``image`` (``"YX"``, ``"ZYX"``, ``"YXC"``...).
    model : str
        Name of a :class:`~napari_mpt_deblur.models.catalog.ModelCatalog` entry.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda:N"`` or ``"mps"``.
    tile : int or None
        Tile side in pixels; ``None`` picks one from free memory, ``0`` forces whole planes.
    label : str
        Short description for progress bars (usually the input layer's name).
    ensemble : int
        Test-time views averaged per tile (1, 2, 4 or 8; see :func:`~napari_mpt_deblur.deblur`).
    optics : dict or None
        The microscope (``OpticsHints`` field names; missing: unknown) for an
        optics-conditioned model; ``None``: not given (see :func:`~napari_mpt_deblur.deblur`).
    """

    image: Any
    axes: str
    model: str
    device: str = "auto"
    tile: int | None = None
    label: str = ""
    ensemble: int = 1
    optics: dict[str, float] | None = None


class Stage(enum.Enum):
    """What a :class:`DeblurProgress` record reports."""

    LOADING = "loading model"
    RUNNING = "deblurring"


@dataclass(frozen=True)
class DeblurProgress:
    """Progress of a run: ``done`` of ``total`` tiles (over all planes; a plane that is not
    tiled counts as one tile). 0/0 while loading, and in the first ``RUNNING`` record, sent
    when the engine starts (the tile count is known after the first plane).

    ``planes`` is the number of 2-D planes the engine processes (stack positions, and
    channels for a one-channel model); ``elapsed_s`` the seconds since the engine started,
    so that a percentage and an ETA can be shown once the first tile is done.
    """

    stage: Stage
    done: int = 0
    total: int = 0
    planes: int = 1
    elapsed_s: float = 0.0


def plural(count: int, word: str) -> str:
    """``"1 tile"``, ``"2 tiles"``, ``"0 planes"`` (the words used here take an "s")."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def describe_work(planes: int, tiles: int) -> str:
    """What a run processes, in its own units: ``"9 tiles"`` of one plane, ``"5 planes"``
    that are not tiled, or ``"5 planes × 4 tiles"``.

    Planes (and channels) are not tiles: calling 5 untiled planes "5 tiles" misleads a user
    who chose a tile size.
    """
    planes, tiles = max(1, int(planes)), int(tiles)
    if planes == 1:
        return plural(tiles, "tile")
    if tiles == planes:
        return plural(planes, "plane")
    per_plane, rest = divmod(tiles, planes)
    if rest == 0:
        return f"{plural(planes, 'plane')} × {plural(per_plane, 'tile')}"
    return f"{plural(planes, 'plane')}, {plural(tiles, 'tile')} in all"  # tile size changed


def describe_progress(update: DeblurProgress) -> str:
    """The status line for a progress record: what is done, percent and ETA.

    Counts what is actually processed: tiles of a single plane, planes of a stack whose planes
    are not tiled, both for a tiled stack. Percent and ETA appear once a tile is done (the ETA
    assumes the remaining tiles take as long as the finished ones on average).
    """
    if update.stage is not Stage.RUNNING:
        return "Loading model…"
    planes = max(1, update.planes)
    if update.total <= 0:
        what = "" if planes == 1 else f" {plural(planes, 'plane')}"
        return f"Deblurring{what}…"
    done, total = update.done, update.total
    per_plane = total // planes if total % planes == 0 else 0
    if planes == 1:
        count = f"{done}/{plural(total, 'tile')}"
    elif per_plane == 1:
        count = f"{done}/{plural(total, 'plane')}"
    elif per_plane > 1:
        plane = min(planes, -(-done // per_plane)) if done else 1
        count = f"plane {plane}/{planes} · {done}/{plural(total, 'tile')}"
    else:
        count = f"{done}/{total}"
    text = f"Deblurring… {count} · {100.0 * done / total:.0f}%"
    if 0 < done < total and update.elapsed_s > 0:
        eta = update.elapsed_s / done * (total - done)
        text += f" · ETA {format_clock(eta)}"
    return text


@dataclass(frozen=True)
class DeblurOutcome:
    """A finished run.

    Attributes
    ----------
    data : numpy.ndarray
        The result, same shape and dtype as the request's image.
    report : dict
        :class:`~napari_mpt_deblur.engine.predict.DeblurReport` as a dict.
    model_info : dict
        The scalar fields of the model's :class:`~napari_mpt_deblur.models.info.ModelInfo`
        (name, key, source, sha256 ...); name and architecture only for a bare network.
    entry : dict
        The catalog entry that was used (:meth:`CatalogEntry.to_dict`).
    """

    data: np.ndarray
    report: dict[str, Any]
    model_info: dict[str, Any] = field(default_factory=dict)
    entry: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------
# Model cache: the package's one cache (models.resolve), which catalog.load goes through.
# ------------------------------------------------------------------------------------------
def clear_model_cache() -> None:
    """Forget the cached models (frees their memory once nothing else holds them)."""
    from ..models.resolve import clear_model_cache as clear

    clear()


# ------------------------------------------------------------------------------------------
# The computation
# ------------------------------------------------------------------------------------------
def deblur_steps(
    request: DeblurRequest,
    *,
    catalog: ModelCatalog | None = None,
    cancel: threading.Event | None = None,
) -> Generator[DeblurProgress, None, DeblurOutcome | None]:
    """Deblur ``request.image``, yielding progress; return the outcome, or ``None`` if cancelled.

    Errors (a corrupt checkpoint, an image the model cannot take) propagate, so that napari's
    worker reports them as notifications; cancellation is not an error and returns ``None``.
    """
    from ..engine.predict import Cancelled, DeblurReport, deblur
    from ..models.catalog import get_catalog

    catalog = catalog if catalog is not None else get_catalog()
    stop = threading.Event()  # set when this generator is closed before the engine finished

    def cancelled() -> bool:
        return stop.is_set() or (cancel is not None and cancel.is_set())

    from .._device import get_device
    from ..models.info import in_channels, model_info

    yield DeblurProgress(Stage.LOADING)
    device = get_device(request.device)  # the one resolution of the user's choice on this path
    model: DeblurModel = catalog.load(request.model, device=device)
    entry = catalog.get(request.model).to_dict()
    if cancelled():
        return None
    image = np.asarray(request.image)  # a dask layer is computed here, in the worker thread
    planes = _engine_planes(image.shape, request.axes, in_channels(model))
    updates: queue.Queue = queue.Queue()
    report = DeblurReport()
    started = time.perf_counter()

    def run() -> None:
        try:
            result = deblur(
                image, model, axes=request.axes, device=device, tile=request.tile,
                ensemble=request.ensemble, cancel=cancelled, report=report,
                optics=request.optics,
                progress=lambda done, total: updates.put(("progress", done, total)),
            )
        except BaseException as exc:  # handed to the generator, which re-raises it
            updates.put(("error", exc))
        else:
            updates.put(("done", result))

    thread = threading.Thread(target=run, name=f"mpt-deblur {request.label}", daemon=True)
    thread.start()
    finished = False
    try:
        yield DeblurProgress(Stage.RUNNING, 0, 0, planes=planes)  # the model is loaded
        while True:
            kind, *payload = updates.get()
            if kind == "progress":
                yield DeblurProgress(Stage.RUNNING, int(payload[0]), int(payload[1]),
                                     planes=planes, elapsed_s=time.perf_counter() - started)
            elif kind == "error":
                finished = True
                if isinstance(payload[0], Cancelled):
                    logger.info("deblurring %s cancelled", request.label or "image")
                    return None
                raise payload[0]
            else:
                finished = True
                data = payload[0]
                break
    finally:
        if not finished:
            stop.set()
    if cancelled():
        return None
    info = {k: v for k, v in model_info(model).to_dict().items()
            if isinstance(v, (str, int, float, bool, type(None)))}
    return DeblurOutcome(data=data, report=report.to_dict(), model_info=info, entry=entry)


def _engine_planes(shape: tuple[int, ...], axes: str, in_channels: int) -> int:
    """How many 2-D planes the engine deblurs one by one (its ``_to_planes``).

    Every axis but Y and X is iterated over, channels included, except that a multi-channel
    model takes the channels of a pixel together.
    """
    count = 1
    for size, axis in zip(shape, axes, strict=False):
        if axis not in "YX":
            count *= int(size)
    if "C" in axes and in_channels > 1 and axes.index("C") < len(shape):
        count //= max(1, int(shape[axes.index("C")]))
    return max(1, count)


def run_blocking(
    request: DeblurRequest,
    *,
    catalog: ModelCatalog | None = None,
    cancel: threading.Event | None = None,
    progress: Callable[[DeblurProgress], None] | None = None,
) -> DeblurOutcome | None:
    """Drive :func:`deblur_steps` to the end in the calling thread (tests, the filter command)."""
    return drive(deblur_steps(request, catalog=catalog, cancel=cancel), progress)


def start_worker(
    request: DeblurRequest,
    *,
    catalog: ModelCatalog | None = None,
    cancel: threading.Event | None = None,
    on_progress: Callable[[DeblurProgress], None] | None = None,
    on_returned: Callable[[DeblurOutcome | DeblurFailed | None], None] | None = None,
    on_finished: Callable[[], None] | None = None,
) -> GeneratorWorker:
    """Start :func:`deblur_steps` in a napari generator worker and return it.

    The callbacks run in the GUI thread (Qt signals). ``on_returned`` receives a
    :class:`DeblurOutcome`, a :class:`DeblurFailed` (the caller shows the error) or ``None``
    (cancelled); ``on_finished`` is called after it in every case, including ``worker.quit()``.
    """
    return start_job(deblur_steps(request, catalog=catalog, cancel=cancel), DeblurFailed,
                     "deblurring", on_yielded=on_progress, on_returned=on_returned,
                     on_finished=on_finished)


