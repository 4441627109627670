"""What the fine-tune panel runs, without Qt: data, the worker generator, saving, timing.

The panel (:mod:`._finetune`) collects choices and shows state; everything here takes and
returns plain data so that tests drive a whole run synchronously (:func:`run_blocking`) and
the worker thread never touches a widget or a layer. :func:`finetune_steps` loads the data and
a private copy of the start model, then yields the EFCR engine's
:class:`~napari_mpt_deblur.train.updates.TrainUpdate` records
(:func:`napari_mpt_deblur.train.finetune.finetune_iter`) and returns a
:class:`FinetuneOutcome`. The optical hints the panel prefills come from
:func:`napari_mpt_deblur.optics_metadata.optics_from_metadata` (``optics_from_layer`` here, its
old name).
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..models.catalog import ModelCatalog, get_catalog
from ..optics_metadata import OPTICS_FIELDS
from ..optics_metadata import optics_from_metadata as optics_from_layer
from ..train.updates import TrainUpdate, UpdateKind
from ._jobs import FinetuneFailed, drive, format_clock, start_job

if TYPE_CHECKING:
    import torch
    from napari.qt.threading import GeneratorWorker
    from torch import nn

    from ..models.info import DeblurModel


logger = logging.getLogger(__name__)

__all__ = [
    "OPTICS_FIELDS",
    "FinetuneData",
    "FinetuneFailed",
    "FinetuneOutcome",
    "FinetuneRequest",
    "FinetuneStatus",
    "PreviewCrop",
    "ResumePoint",
    "bioimageio_unavailable",
    "checkpoint_metadata",
    "eta_seconds",
    "export_steps",
    "finetune_steps",
    "format_clock",
    "load_data",
    "optics_from_layer",
    "run_blocking",
    "save_finetuned",
    "start_export_worker",
    "start_worker",
]

# ==========================================================================================
# Plain-data protocol between the widget and the worker (no Qt)
# ==========================================================================================
@dataclass(frozen=True)
class PreviewCrop:
    """A region the user chose to watch while training (instead of the held-out crop).

    Attributes
    ----------
    data : (M, N) array
        The pixels of the crop, in the source's units.
    box : (int, int, int, int)
        ``(y, x, height, width)`` of the crop in the source plane, pixels.
    source : str
        Name of the source (a layer name).
    """

    data: Any
    box: tuple[int, int, int, int]
    source: str


@dataclass(frozen=True)
class FinetuneData:
    """The user's data as 2-D planes, as the engine gets it.

    Attributes
    ----------
    planes : list of (M, N) arrays
        Unlabeled blurry planes (stacks are split into planes).
    names : list of str
        One readable name per plane (``"layer"``, ``"layer[3]"``, ``"file.tif[0]"``).
    origins : list of (str, str, int)
        ``("layer", layer name, flat plane index)`` or ``("file", path, plane index)``.
    pairs : list of (blurred, sharp)
        Optional labeled pairs, 2-D each.
    pair_names : list of str
        One name per pair.
    description : dict
        What was used (layers with shapes, folders, file counts): goes into the checkpoint.
    """

    planes: list[np.ndarray]
    names: list[str]
    origins: list[tuple[str, str, int]]
    pairs: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    pair_names: list[str] = field(default_factory=list)
    description: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ResumePoint:
    """What a resumed run continues from: the previous run's model, data and start model."""

    model: Any
    data: FinetuneData
    model_entry: dict[str, Any]


@dataclass(frozen=True)
class FinetuneRequest:
    """Everything one fine-tuning run needs, as plain data.

    Attributes
    ----------
    model : str
        Name of the start model in the :class:`~napari_mpt_deblur.models.catalog.ModelCatalog`.
    settings : FinetuneConfig
        Engine settings (steps, batch, patch, learning rate, EFCR weight, optics hints...).
    work_dir : str
        Folder for the run's checkpoint and resumable state.
    run_name : str
        File stem of those files.
    layers : tuple of (name, array)
        Unlabeled images from layers (``(..., M, N)``; numpy or dask).
    folders : tuple of str
        Folders of unlabeled TIFF/PNG images.
    paired_layers : tuple of (name, blurred, sharp)
        Labeled pairs from layers (same shape each).
    paired_folders : tuple of str
        Folders holding ``blur/`` (or ``blurred/``) and ``sharp/`` subfolders.
    replay_folder : str or None
        In-focus images for the replay pairs; ``None`` uses procedural images.
    preview_crop : PreviewCrop or None
        Region to re-deblur at every preview; ``None`` shows the held-out validation crop.
    optics_origin : dict
        Where each optical hint came from (``"layer metadata"``, ``"entered"``, ``"model"``).
    resume : ResumePoint or None
        Continue the run whose state is ``work_dir/run_name.state.pt``.
    """

    model: str
    settings: Any
    work_dir: str
    run_name: str
    layers: tuple[tuple[str, Any], ...] = ()
    folders: tuple[str, ...] = ()
    paired_layers: tuple[tuple[str, Any, Any], ...] = ()
    paired_folders: tuple[str, ...] = ()
    replay_folder: str | None = None
    preview_crop: PreviewCrop | None = None
    optics_origin: dict[str, str] = field(default_factory=dict)
    resume: ResumePoint | None = None

    @property
    def checkpoint_path(self) -> Path:
        """The run's working checkpoint (best weights, rewritten at every state save)."""
        return Path(self.work_dir) / f"{self.run_name}.safetensors"

    @property
    def state_path(self) -> Path:
        """The run's resumable state."""
        return Path(self.work_dir) / f"{self.run_name}.state.pt"


@dataclass(frozen=True)
class FinetuneStatus:
    """A stage of the run before training starts (reading data, loading the model)."""

    message: str


@dataclass
class FinetuneOutcome:
    """A finished (completed, stopped or out-of-time) run.

    Attributes
    ----------
    reason : {"completed", "cancelled", "time_budget"}
        Why it ended.
    steps_done : int
        Optimiser steps done in total (including those before a resume).
    best, baseline : dict
        Validation scores of the kept weights and of the starting model.
    model : torch.nn.Module
        The model with the best weights, in eval mode.
    checkpoint : Path or None
        The working checkpoint the engine wrote (best weights and the engine's header).
    state_path : Path or None
        Resumable state.
    settings : FinetuneConfig
        Settings of the run.
    data : FinetuneData
        The planes it trained on (a resume reuses them).
    model_entry : dict
        Catalog entry of the start model.
    run_name : str
        Stem of the working files.
    optics_origin : dict
        Where each optical hint came from.
    replay_folder : str or None
        In-focus images used for replay.
    history : list of dict
        Loss and validation records.
    kept_start : bool
        The guard kept the starting weights (no checkpoint beat them on the selection score).
    verdict : str
        Which weights were kept and why, in one sentence.
    """

    reason: str
    steps_done: int
    best: dict[str, Any]
    baseline: dict[str, Any]
    model: DeblurModel
    checkpoint: Path | None
    state_path: Path | None
    settings: Any
    data: FinetuneData
    model_entry: dict[str, Any]
    run_name: str = "run"
    optics_origin: dict[str, str] = field(default_factory=dict)
    replay_folder: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    kept_start: bool = False
    verdict: str = ""

    @property
    def resumable(self) -> bool:
        """Whether a resumable state was written."""
        return self.state_path is not None and self.state_path.is_file()


def bioimageio_unavailable() -> str | None:
    """Why exporting for bioimage.io is impossible here (``None``: it is possible).

    The export validates the package with ``bioimageio.spec``, an optional dependency.
    """
    import importlib.util

    try:
        found = importlib.util.find_spec("bioimageio.spec") is not None
    except (ImportError, ValueError):
        found = False
    if found:
        return None
    return ("Exporting needs the bioimageio.spec package: "
            "pip install 'napari-mpt-deblur[bioimageio]'")


def export_steps(
    checkpoint: str | os.PathLike, output: str | os.PathLike
) -> Generator[str, None, Any]:
    """Export a saved checkpoint as a bioimage.io package; the worker generator of the panel.

    Yields once (the stage) so that a quit worker stops before the slow part, then returns the
    :class:`~napari_mpt_deblur.bioimageio.ExportReport`. The package is written atomically by
    :func:`~napari_mpt_deblur.bioimageio.export_bioimageio` (a partial file, then a rename), so
    a failed export leaves any earlier file at ``output`` untouched.
    """
    from ..bioimageio import export_bioimageio

    yield "exporting"
    return export_bioimageio(checkpoint, output)


def start_export_worker(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    *,
    on_returned: Callable[[Any], None] | None = None,
    on_finished: Callable[[], None] | None = None,
) -> GeneratorWorker:
    """Start :func:`export_steps` in a napari worker; errors return as :class:`FinetuneFailed`."""
    return start_job(export_steps(checkpoint, output), FinetuneFailed, "bioimage.io export",
                     on_returned=on_returned, on_finished=on_finished)


def _split_planes(array: Any, label: str) -> list[np.ndarray]:
    data = np.asarray(array)  # dask layers are computed here, in the worker thread
    if data.ndim < 2:
        raise ValueError(f"{label} must be at least 2-D (M, N); got shape {data.shape}")
    if data.dtype.kind not in "uif":
        raise TypeError(f"{label} has dtype {data.dtype}; expected a numeric image")
    return list(data.reshape((-1, *data.shape[-2:])))


def load_data(request: FinetuneRequest) -> FinetuneData:
    """Read every data source of ``request`` into 2-D planes (runs in the worker thread).

    Raises
    ------
    ValueError
        No unlabeled image at all, a paired layer pair of different shapes, or a folder that
        holds no images.
    FileNotFoundError
        A folder that does not exist.
    """
    from ..train.data import find_images, find_pair_files, read_planes

    planes: list[np.ndarray] = []
    names: list[str] = []
    origins: list[tuple[str, str, int]] = []
    description: dict[str, Any] = {"layers": [], "folders": [], "paired_layers": [],
                                   "paired_folders": []}
    for name, array in request.layers:
        parts = _split_planes(array, f"layer {name!r}")
        for i, plane in enumerate(parts):
            planes.append(plane)
            names.append(name if len(parts) == 1 else f"{name}[{i}]")
            origins.append(("layer", name, i))
        description["layers"].append({"name": name, "shape": list(np.shape(array)),
                                      "dtype": str(np.asarray(parts[0]).dtype),
                                      "planes": len(parts)})
    for folder in request.folders:
        files = find_images([folder])
        for path in files:
            parts = read_planes(path)
            for i, plane in enumerate(parts):
                planes.append(np.asarray(plane))
                names.append(path.name if len(parts) == 1 else f"{path.name}[{i}]")
                origins.append(("file", str(path), i))
        description["folders"].append({"path": str(folder), "files": [p.name for p in files]})
    if not planes:
        raise ValueError("no blurry images to fine-tune on: choose image layers or a folder")

    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    pair_names: list[str] = []
    for name, blurred, sharp in request.paired_layers:
        b_parts = _split_planes(blurred, f"paired layer {name!r} (blurred)")
        s_parts = _split_planes(sharp, f"paired layer {name!r} (sharp)")
        if len(b_parts) != len(s_parts) or b_parts[0].shape != s_parts[0].shape:
            raise ValueError(
                f"paired layers {name!r}: blurred and sharp must have the same shape; got "
                f"{np.shape(blurred)} and {np.shape(sharp)}"
            )
        for i, (b, s) in enumerate(zip(b_parts, s_parts)):
            pairs.append((b, s))
            pair_names.append(name if len(b_parts) == 1 else f"{name}[{i}]")
        description["paired_layers"].append({"name": name, "shape": list(np.shape(blurred))})
    for folder in request.paired_folders:
        found = find_pair_files(folder)
        for bpath, spath in found:
            b_parts, s_parts = read_planes(bpath), read_planes(spath)
            if len(b_parts) != len(s_parts):
                raise ValueError(f"{bpath.name}: blurred and sharp have different plane counts")
            for i, (b, s) in enumerate(zip(b_parts, s_parts)):
                pairs.append((np.asarray(b), np.asarray(s)))
                pair_names.append(bpath.stem + (f"[{i}]" if len(b_parts) > 1 else ""))
        description["paired_folders"].append({"path": str(folder), "pairs": len(found)})
    description.update({"planes": len(planes), "pairs": len(pairs),
                        "replay_folder": request.replay_folder})
    return FinetuneData(planes, names, origins, pairs, pair_names, description)


def _load_start_model(catalog: ModelCatalog, name: str, device: torch.device) -> nn.Module:
    """A private copy of the start model: training must never change a model others use.

    ``device`` is the run's, resolved once by :func:`finetune_steps`."""
    return catalog.load(name, device=device, copy=True)  # one road: models.resolve


def _engine_plane(source: Any) -> int | None:
    """Index ``k`` of the engine's name ``"image<k>"`` for the k-th array it was given."""
    if isinstance(source, str) and source.startswith("image") and source[5:].isdigit():
        return int(source[5:])
    return None


def _preview_value(value: dict[str, Any], data: FinetuneData) -> dict[str, Any]:
    """The engine's preview in the data's units, named after its real source."""
    out = dict(value)
    lo_hi = out.pop("norm_range", None)
    if lo_hi is not None:
        lo, hi = (float(v) for v in lo_hi)
        out["image"] = np.asarray(out["image"], np.float32) * (hi - lo) + lo
        out["input"] = np.asarray(out["input"], np.float32) * (hi - lo) + lo
    k = _engine_plane(out.get("source"))
    if k is not None and k < len(data.names):
        out["source"] = data.names[k]
        out["origin"] = data.origins[k]
    return out


def _crop_preview(model: nn.Module, crop: PreviewCrop, device: torch.device) -> dict[str, Any]:
    """Deblur the user's crop with the current weights, exactly as the Deblur widget would,
    on the run's ``device`` (resolved once per run: ``deblur`` takes it as it is)."""
    from ..engine.predict import deblur

    was_training = model.training
    try:
        image = deblur(np.asarray(crop.data), model, axes="YX", device=device)
    finally:
        model.train(was_training)
    return {"image": np.asarray(image, np.float32), "input": np.asarray(crop.data, np.float32),
            "box": tuple(crop.box), "source": crop.source,
            "origin": ("layer", crop.source, -1)}


def finetune_steps(
    request: FinetuneRequest,
    *,
    catalog: ModelCatalog | None = None,
    cancel: threading.Event | None = None,
) -> Generator[TrainUpdate | FinetuneStatus, None, FinetuneOutcome | None]:
    """Fine-tune as ``request`` says, yielding progress; return the outcome.

    Yields :class:`FinetuneStatus` records while reading data and loading the model, then the
    engine's :class:`TrainUpdate` records (PREVIEW values are converted to the data's units and
    carry an ``origin``; DONE carries no model). Setting ``cancel`` stops the run after the step
    in progress, keeping the best weights, and still returns an outcome; ``None`` is returned
    only when the run was stopped before the model was loaded. Errors propagate.
    """
    from .._device import get_device
    from ..train.finetune import finetune_iter

    catalog = catalog if catalog is not None else get_catalog()
    settings = request.settings
    # The one resolution of the user's device choice in this run: the start model, the
    # engine's run and the crop previews all take this torch.device as it is.
    device = get_device(settings.device)
    resume = request.resume
    if resume is None:
        yield FinetuneStatus("Reading images…")
        data = load_data(request)
        yield FinetuneStatus(f"Loading model {request.model}…")
        model = _load_start_model(catalog, request.model, device)
        entry = catalog.get(request.model).to_dict()
    else:
        data = resume.data
        yield FinetuneStatus("Preparing to resume…")
        model = copy.deepcopy(resume.model)
        entry = dict(resume.model_entry)
    if cancel is not None and cancel.is_set():
        return None
    Path(request.work_dir).mkdir(parents=True, exist_ok=True)
    yield FinetuneStatus("Scoring the starting model on a held-out crop…"
                         if resume is None else "Loading the saved state…")
    replay = None
    if request.replay_folder:
        from ..train.data import find_images

        replay = find_images([request.replay_folder])
    done: dict[str, Any] | None = None
    done_step = 0
    updates = finetune_iter(
        model, data.planes, paired=data.pairs or None, settings=settings,
        replay_images=replay, out_path=request.checkpoint_path, state_path=request.state_path,
        resume=resume is not None, cancel=cancel, device=device,
    )
    for update in updates:
        if update.kind is UpdateKind.ERROR:
            continue  # the exception itself follows
        if update.kind is UpdateKind.PREVIEW:
            value = (_crop_preview(model, request.preview_crop, device)
                     if request.preview_crop is not None else _preview_value(update.value, data))
            update = TrainUpdate(update.kind, update.step, update.total, value)
        elif update.kind is UpdateKind.DONE:
            done, done_step = dict(update.value), int(update.step)
            update = TrainUpdate(update.kind, update.step, update.total,
                                 {k: v for k, v in done.items() if k != "result"})
        yield update
    if done is None:  # pragma: no cover - the engine always ends with DONE or raises
        return None
    result = done["result"]
    return FinetuneOutcome(
        reason=str(done["reason"]), steps_done=done_step,
        best=dict(result.best), baseline=dict(result.baseline), model=result.model,
        checkpoint=result.checkpoint,
        state_path=request.state_path if request.state_path.is_file() else None,
        settings=settings, data=data, model_entry=entry, run_name=request.run_name,
        optics_origin=dict(request.optics_origin), replay_folder=request.replay_folder,
        history=list(result.history), kept_start=bool(result.kept_start),
        verdict=str(result.verdict),
    )


def run_blocking(
    request: FinetuneRequest,
    *,
    catalog: ModelCatalog | None = None,
    cancel: threading.Event | None = None,
    on_update: Callable[[TrainUpdate | FinetuneStatus], None] | None = None,
) -> FinetuneOutcome | None:
    """Drive :func:`finetune_steps` to the end in the calling thread (tests, scripts)."""
    return drive(finetune_steps(request, catalog=catalog, cancel=cancel), on_update)


def start_worker(
    request: FinetuneRequest,
    *,
    catalog: ModelCatalog | None = None,
    cancel: threading.Event | None = None,
    on_update: Callable[[Any], None] | None = None,
    on_returned: Callable[[Any], None] | None = None,
    on_finished: Callable[[], None] | None = None,
) -> GeneratorWorker:
    """Start :func:`finetune_steps` in a napari generator worker (callbacks run in the GUI)."""
    return start_job(finetune_steps(request, catalog=catalog, cancel=cancel), FinetuneFailed,
                     "fine-tuning", on_yielded=on_update, on_returned=on_returned,
                     on_finished=on_finished)


# ==========================================================================================
# Saving
# ==========================================================================================
def checkpoint_metadata(outcome: FinetuneOutcome, *, name: str) -> dict[str, Any]:
    """Header entries for a saved fine-tuned model: the engine's record, with real data names.

    Starts from the header the engine wrote into the working checkpoint (settings, composition,
    validation scores, base model), then names the planes after their layers and files, and
    adds the data description, where each optical hint came from, and the save time.
    """
    from ..models.checkpoint import read_header

    header: dict[str, Any] = {}
    if outcome.checkpoint is not None and Path(outcome.checkpoint).is_file():
        header = dict(read_header(outcome.checkpoint) or {})
    keep = ("normalization", "finetune", "simulation", "metrics", "description", "training")
    meta = {k: header[k] for k in keep if k in header}
    finetune = dict(meta.get("finetune") or {})
    finetune.setdefault("settings", outcome.settings.to_dict())
    finetune.setdefault("best", outcome.best)
    finetune.setdefault("baseline", outcome.baseline)
    finetune["images"] = list(outcome.data.names)
    finetune["paired"] = list(outcome.data.pair_names)
    finetune["data"] = outcome.data.description
    finetune["optics_hints"] = {
        f: {"value": getattr(outcome.settings, f), "origin": outcome.optics_origin.get(f, "model")}
        for f in OPTICS_FIELDS
    }
    crop = dict(finetune.get("validation_crop") or {})
    k = _engine_plane(crop.get("image"))
    if k is not None and k < len(outcome.data.names):
        crop["image"] = outcome.data.names[k]
        finetune["validation_crop"] = crop
    finetune["steps_done"] = outcome.steps_done
    finetune["stopped"] = outcome.reason
    finetune["base_model_entry"] = outcome.model_entry
    finetune["saved"] = datetime.now(UTC).isoformat(timespec="seconds")
    finetune["tool"] = "napari panel 'Defocus Deblur: Fine-tune'"
    meta["finetune"] = finetune
    meta["name"] = name
    base = outcome.model_entry.get("name", "model")
    meta["description"] = (f"{base} fine-tuned ({outcome.settings.mode}) on "
                           f"{len(outcome.data.names)} unlabeled planes"
                           + (f" and {len(outcome.data.pair_names)} pairs"
                              if outcome.data.pair_names else ""))
    return meta


def save_finetuned(outcome: FinetuneOutcome, path: str | os.PathLike, *, name: str) -> Path:
    """Write the run's best model as a project checkpoint, atomically; returns the path.

    ``.safetensors`` is appended when ``path`` has another suffix.
    """
    from ..models.checkpoint import save_checkpoint

    path = Path(path).expanduser()
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    return save_checkpoint(path, outcome.model, metadata=checkpoint_metadata(outcome, name=name))


# ==========================================================================================
# Timing
# ==========================================================================================
def eta_seconds(
    *, start_step: int, start_time: float, step: int, now: float, total: int,
    deadline: float | None = None,
) -> float | None:
    """Seconds left, from the pace since ``start_step``; capped by a time-budget ``deadline``.

    ``None`` until one step has been timed.
    """
    if step <= start_step or now <= start_time:
        return None
    per_step = (now - start_time) / (step - start_step)
    left = max(0, total - step) * per_step
    if deadline is not None:
        left = min(left, max(0.0, deadline - now))
    return left

