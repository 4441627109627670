"""The models a user can pick: bundled weights plus checkpoints added while the program runs.

The napari widgets, the reader (a dropped checkpoint file) and the fine-tune panel all share one
:class:`ModelCatalog` (:func:`get_catalog`), so a model added anywhere appears in every picker.
The catalog is plain Python (no Qt): pickers subscribe with :meth:`ModelCatalog.connect` and
rebuild their choices from :meth:`ModelCatalog.entries` when told, never keeping a copy.

Nothing is loaded when an entry is added; files are only checked enough to fail early on what
cannot be a checkpoint (missing, wrong suffix, corrupt safetensors header). Weights are read by
:meth:`ModelCatalog.load`, which the widgets call in a worker thread.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MethodType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .info import DeblurModel

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "CatalogEntry",
    "CatalogEvent",
    "ModelCatalog",
    "ModelOptics",
    "add_checkpoint",
    "get_catalog",
    "is_checkpoint_path",
]

#: File suffixes accepted as checkpoints: the project's safetensors and the authors' torch files.
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".pytorch")

def is_checkpoint_path(path: str | os.PathLike) -> bool:
    """True when ``path`` has a checkpoint suffix (the file is not opened)."""
    return Path(path).suffix.lower() in CHECKPOINT_SUFFIXES


@dataclass(frozen=True)
class CatalogEntry:
    """One pickable model.

    Attributes
    ----------
    name : str
        Unique display name (the shipped weights' label, e.g. ``mpt-tiny``, or the checkpoint
        file's stem).
    kind : {"bundled", "checkpoint", "memory"}
        Where the weights come from.
    source : str or None
        What :func:`~napari_mpt_deblur.models.resolve.resolve_model` needs: a pretrained key
        (``mpt_tiny.defocus``) or a file path; ``None`` for an in-memory model.
    description : str
        One line for tooltips (architecture, file, header name).
    model : torch.nn.Module or None
        The network itself for ``kind == "memory"`` (a freshly fine-tuned model, or a test model).
    """

    name: str
    kind: str
    source: str | None
    description: str = ""
    model: DeblurModel | None = field(default=None, compare=False, repr=False)

    @property
    def label(self) -> str:
        """Text for a combo box: the name and where it comes from."""
        where = {"bundled": "bundled", "checkpoint": "file", "memory": "in memory"}[self.kind]
        return f"{self.name} ({where})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (layer metadata, logs); the in-memory model is left out."""
        return {"name": self.name, "kind": self.kind, "source": self.source,
                "description": self.description}


@dataclass(frozen=True)
class ModelOptics:
    """What a model knows of optics, read from its header (no weights are loaded).

    Attributes
    ----------
    conditioned : bool
        The network takes the microscope's optics (``MPTConfig.optics_conditioning``).
    pixel_sizes_um : tuple of float
        The pixel sizes it was trained at, one per simulated microscope (a simulation
        mixture's members); empty when the header does not say.
    """

    conditioned: bool = False
    pixel_sizes_um: tuple[float, ...] = ()

    @classmethod
    def from_header(cls, header: Mapping[str, Any] | None) -> ModelOptics:
        """The optics record of a checkpoint header (``None`` or odd records: nothing known)."""
        header = header or {}
        config = header.get("config") if isinstance(header.get("config"), Mapping) else {}
        simulation = header.get("simulation")
        sizes: list[float] = []
        if isinstance(simulation, Mapping):
            members = simulation.get("mixture")
            configs = ([m.get("config") for m in members if isinstance(m, Mapping)]
                       if isinstance(members, list) else [simulation])
            for member in configs:
                size = member.get("pixel_size_um") if isinstance(member, Mapping) else None
                if isinstance(size, (int, float)) and size > 0 and float(size) not in sizes:
                    sizes.append(float(size))
        return cls(bool(config.get("optics_conditioning", False)), tuple(sizes))


@dataclass(frozen=True)
class CatalogEvent:
    """What changed in a :class:`ModelCatalog`.

    Attributes
    ----------
    kind : {"added", "removed", "select", "reset"}
        ``"select"`` means an already listed entry was offered again (e.g. the same checkpoint
        dropped twice) and pickers should select it.
    entry : CatalogEntry or None
        The entry concerned (``None`` for ``"reset"``).
    select : bool
        Whether pickers should make ``entry`` their current choice (a file the user just dropped
        or chose in a dialog, as opposed to a checkpoint written in the background).
    """

    kind: str
    entry: CatalogEntry | None = None
    select: bool = False


class ModelCatalog:
    """Models the user can pick, with change notifications.

    Parameters
    ----------
    include_bundled : bool
        List the weights shipped in the package
        (:func:`~napari_mpt_deblur.models.pretrained.list_pretrained`). Tests pass ``False``
        for a catalog whose content they control.

    Notes
    -----
    Thread-safe: entries may be added from a worker thread (a fine-tuning run writing its best
    checkpoint). Callbacks run in the thread that made the change, so GUI subscribers must hop to
    their main thread themselves. Bound methods are held weakly, so a closed widget that forgot
    to disconnect is simply dropped; other callables are held strongly.
    """

    def __init__(self, *, include_bundled: bool = True) -> None:
        self._lock = threading.RLock()
        self._entries: dict[str, CatalogEntry] = {}
        self._callbacks: list[Any] = []
        if include_bundled:
            self._add_bundled()

    # ------------------------------------------------------------------ queries
    def entries(self) -> list[CatalogEntry]:
        """All entries: bundled first (sorted), then added ones in the order they came."""
        with self._lock:
            return list(self._entries.values())

    def names(self) -> list[str]:
        """Entry names, in :meth:`entries` order."""
        return [e.name for e in self.entries()]

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get(self, name: str) -> CatalogEntry:
        """The entry called ``name``; ``ValueError`` lists the valid names otherwise."""
        with self._lock:
            try:
                return self._entries[name]
            except KeyError:
                valid = ", ".join(self._entries) or "none (load a checkpoint first)"
                raise ValueError(f"unknown model {name!r}; available models: {valid}") from None

    def find_source(self, source: str | os.PathLike) -> CatalogEntry | None:
        """The checkpoint entry whose file is ``source`` (same resolved path), if any."""
        target = _resolved(source)
        with self._lock:
            for entry in self._entries.values():
                if entry.kind == "checkpoint" and _resolved(entry.source) == target:
                    return entry
        return None

    def default_name(self) -> str | None:
        """The entry a picker should start on: the package default model when listed."""
        from .pretrained import DEFAULT_PRETRAINED

        with self._lock:
            for entry in self._entries.values():
                if entry.kind == "bundled" and entry.source == DEFAULT_PRETRAINED:
                    return entry.name
            return next(iter(self._entries), None)

    # ------------------------------------------------------------------ changes
    def add_checkpoint(
        self, path: str | os.PathLike, name: str | None = None, *, select: bool = False
    ) -> CatalogEntry:
        """List a checkpoint file (``.safetensors``, or the authors' ``.pth``/``.pt``/``.pytorch``).

        Adding a file that is already listed returns the existing entry (and, with ``select``,
        asks pickers to select it) instead of listing it twice.

        Parameters
        ----------
        path : path-like
            The checkpoint file.
        name : str, optional
            Display name; default: the file name without its suffix. A name already used by
            another model gets `` (2)``, `` (3)``... appended.
        select : bool
            Ask pickers to make this their current model (what the user just chose).

        Raises
        ------
        FileNotFoundError
            No such file.
        ValueError
            Not a checkpoint suffix, or (``CheckpointError``) a corrupt safetensors file.
        """
        from .checkpoint import read_header

        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        if not is_checkpoint_path(path):
            raise ValueError(
                f"{path.name} is not a checkpoint: expected one of "
                f"{', '.join(CHECKPOINT_SUFFIXES)}, got {path.suffix or 'no suffix'!r}"
            )
        existing = self.find_source(path)
        if existing is not None:
            if select:
                self._emit(CatalogEvent("select", existing, select=True))
            return existing
        header = read_header(path)  # cheap; raises CheckpointError on a corrupt file
        if header is None:
            what = "authors' checkpoint" if path.suffix != ".safetensors" else "safetensors weights"
        else:
            what = f"{header.get('arch', 'mpt')} checkpoint"
            if header.get("name"):
                what += f" ({header['name']})"
        entry = CatalogEntry(
            name="", kind="checkpoint", source=str(path.resolve()),
            description=f"{what}: {path}",
        )
        return self._insert(entry, name or _stem(path), select)

    def add_model(self, model: DeblurModel, name: str, *, select: bool = False) -> CatalogEntry:
        """List a network that lives only in memory (e.g. just fine-tuned, not yet saved)."""
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"name must be a non-empty string; got {name!r}")
        if not callable(model) or not hasattr(model, "parameters"):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        entry = CatalogEntry(name="", kind="memory", source=None,
                             description=f"{type(model).__name__} in memory", model=model)
        return self._insert(entry, name.strip(), select)

    def remove(self, name: str) -> None:
        """Drop an entry (``ValueError`` if unknown)."""
        with self._lock:
            entry = self.get(name)
            del self._entries[name]
        self._emit(CatalogEvent("removed", entry))

    def refresh_bundled(self) -> None:
        """Re-scan the package's weights folder (new weights installed while running)."""
        with self._lock:
            others = [e for e in self._entries.values() if e.kind != "bundled"]
            self._entries.clear()
            self._add_bundled()
            for entry in others:
                name, n = entry.name, 2
                while name in self._entries:
                    name, n = f"{entry.name} ({n})", n + 1
                self._entries[name] = CatalogEntry(name, entry.kind, entry.source,
                                                   entry.description, entry.model)
        self._emit(CatalogEvent("reset"))

    # ------------------------------------------------------------------ loading
    def load(self, name: str, device: str | torch.device | None = "auto", *,
             copy: bool = False) -> nn.Module:
        """The network of entry ``name`` on ``device`` (slow for big files: call off the GUI).

        Loaded through :func:`~napari_mpt_deblur.models.resolve.resolve_model`, so a file is
        read once and then served from its cache; ``copy=True`` gives a private deep copy for a
        caller that will change the weights (fine-tuning).
        """
        from .resolve import resolve_model

        entry = self.get(name)
        source = entry.model if entry.kind == "memory" else entry.source
        return resolve_model(source, device, copy=copy, name=entry.name)

    def optics(self, name: str) -> ModelOptics:
        """Whether entry ``name`` takes optics and what sampling it was trained at, from its
        header (cheap: no weights are read; an unreadable header knows nothing)."""
        entry = self.get(name)
        try:
            if entry.kind == "memory":
                from .info import model_info

                return ModelOptics.from_header(model_info(entry.model).to_header())
            from .checkpoint import read_header
            from .pretrained import get_pretrained

            path = (get_pretrained(entry.source).path if entry.kind == "bundled"
                    else Path(str(entry.source)))
            return ModelOptics.from_header(read_header(path))
        except Exception:  # a header that cannot be read says nothing; loading will tell
            logger.debug("could not read the optics of %r", name, exc_info=True)
            return ModelOptics()

    # ------------------------------------------------------------------ callbacks
    def connect(self, callback: Callable[[CatalogEvent], Any]) -> Callable[[CatalogEvent], Any]:
        """Call ``callback(event)`` after every change; returns ``callback`` (decorator use)."""
        if not callable(callback):
            raise TypeError(f"callback must be callable; got {type(callback).__name__}")
        ref = weakref.WeakMethod(callback) if isinstance(callback, MethodType) else callback
        with self._lock:
            self._callbacks.append(ref)
        return callback

    def disconnect(self, callback: Callable[[CatalogEvent], Any]) -> None:
        """Stop calling ``callback`` (no error if it was not connected)."""
        with self._lock:
            self._callbacks = [c for c in self._callbacks if _deref(c) not in (None, callback)]

    def _emit(self, event: CatalogEvent) -> None:
        with self._lock:
            live = [(ref, _deref(ref)) for ref in self._callbacks]
            self._callbacks = [ref for ref, fn in live if fn is not None]
        for _, fn in live:
            if fn is None:
                continue
            try:
                fn(event)
            except Exception:  # one broken subscriber must not stop the others
                logger.exception("model catalog callback %r failed", fn)

    # ------------------------------------------------------------------ internals
    def _insert(self, entry: CatalogEntry, wanted: str, select: bool) -> CatalogEntry:
        with self._lock:
            name, n = wanted, 2
            while name in self._entries:
                name, n = f"{wanted} ({n})", n + 1
            entry = CatalogEntry(name, entry.kind, entry.source, entry.description, entry.model)
            self._entries[name] = entry
        logger.info("model %r added to the catalog (%s)", name, entry.description)
        self._emit(CatalogEvent("added", entry, select=select))
        return entry

    def _add_bundled(self) -> None:
        from .checkpoint import read_header
        from .pretrained import list_pretrained

        # Pickers show the short labels (mpt-tiny); the entry's source is the pretrained key.
        for pretrained in sorted(list_pretrained(), key=lambda e: e.label):
            try:  # the header says what the weights are for (e.g. strong defocus)
                purpose = (read_header(pretrained.path) or {}).get("description")
            except (OSError, ValueError):
                purpose = None
            self._entries[pretrained.label] = CatalogEntry(
                pretrained.label, "bundled", pretrained.key,
                description=purpose or pretrained.description)


def _deref(ref: Any) -> Any:
    return ref() if isinstance(ref, weakref.WeakMethod) else ref


def _resolved(path: Any) -> str | None:
    if path is None:
        return None
    try:
        return str(Path(path).expanduser().resolve())
    except OSError:  # pragma: no cover - unreadable path components
        return str(path)


def _stem(path: Path) -> str:
    return path.name[: -len(path.suffix)] if path.suffix else path.name


_CATALOG: ModelCatalog | None = None
_CATALOG_LOCK = threading.Lock()


def get_catalog() -> ModelCatalog:
    """The catalog shared by every widget, the reader and the fine-tune panel."""
    global _CATALOG
    with _CATALOG_LOCK:
        if _CATALOG is None:
            _CATALOG = ModelCatalog()
        return _CATALOG


def add_checkpoint(path: str | os.PathLike, name: str | None = None, *,
                   select: bool = False) -> CatalogEntry:
    """List a checkpoint file in the shared catalog (see :meth:`ModelCatalog.add_checkpoint`)."""
    return get_catalog().add_checkpoint(path, name, select=select)
