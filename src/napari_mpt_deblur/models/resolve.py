"""From a name to a network: :func:`resolve_model`, the one road, with the one model cache.

Everything that turns "which model" into a network goes through :func:`resolve_model`: the
engine (``deblur(image, model="mpt_tiny.defocus")``), the napari widgets (through
:meth:`~napari_mpt_deblur.models.catalog.ModelCatalog.load`), the fine-tune panel, the CLI and
:func:`load_model`. A source is

- a pretrained key (``"mpt_tiny.defocus"``, see :mod:`.pretrained`), or an old weights name
  (``"mpt-tiny"``, deprecated);
- a checkpoint file: the project's ``.safetensors``, or an authors' ``.pth``/``.pt``/``.pytorch``;
- a supervised run's resumable state (``state.pt``, ``state-NNNNN.pt``): its weights at its
  step, the architecture from its own config and the info from the run's ``last.safetensors``
  (:func:`~napari_mpt_deblur.train.loop.model_from_state`, read with ``weights_only=True``);
- a bioimage.io package exported by this project (zip, folder or ``rdf.yaml``);
- a network already in memory (returned as is, with its info made a ``ModelInfo``).

The cache
---------
Loading a checkpoint for every click or every ``deblur`` call would dominate short runs, so
loaded networks are kept in one least-recently-used cache of :data:`CACHE_SIZE` (2) entries,
keyed by what was asked for and the device: two, so that comparing two models does not reload
on every switch, and no more, because each may hold GPU memory. A checkpoint file is keyed by
its resolved path *and* its modification time and size, so a file rewritten while the program
runs (a fine-tuning run's ``best.safetensors``) is read again. :func:`clear_model_cache`
empties it. Cached networks are shared: callers that will change the weights (fine-tuning)
ask for ``copy=True`` and get a private deep copy; :func:`load_model` always returns a fresh
network, as it always did.
"""

from __future__ import annotations

import copy as _copy
import json
import logging
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._registry import architecture_of
from .checkpoint import (
    CheckpointError,
    config_from_header,
    file_sha256,
    infer_config,
    load_checkpoint,
    model_from_state_dict,
)
from .info import ModelInfo, attach_info, attached_info, model_info
from .pretrained import (
    DEFAULT_PRETRAINED,
    PretrainedEntry,
    get_pretrained,
    is_pretrained_name,
    pretrained_keys,
    unknown_message,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["CACHE_SIZE", "clear_model_cache", "is_training_state", "load_model", "resolve_model"]

#: How many loaded networks the cache keeps (least recently used ones are dropped first).
CACHE_SIZE = 2

_CACHE: OrderedDict[tuple, nn.Module] = OrderedDict()
#: File names ``mpt-deblur train`` gives its resumable states.
_STATE_NAME = re.compile(r"^state(-\d+)?\.pt$")
_LOCK = threading.RLock()


def is_training_state(source: Any) -> bool:
    """Whether ``source`` names a training run's resumable state (``state.pt``,
    ``state-NNNNN.pt``): such a file builds its network from its own config, so callers must
    not impose a routing or an architecture on it."""
    if not isinstance(source, (str, os.PathLike)) or is_pretrained_name(source):
        return False
    return bool(_STATE_NAME.match(Path(source).name))


def clear_model_cache() -> None:
    """Forget every cached network (frees its memory once nobody else holds it)."""
    with _LOCK:
        _CACHE.clear()


def cached_models() -> int:
    """How many networks the cache holds (for tests and diagnostics)."""
    with _LOCK:
        return len(_CACHE)


def resolve_model(
    source: Any = None,
    device: str | torch.device | None = "auto",
    *,
    routing: str | None = None,
    config: Any = None,
    copy: bool = False,
    cache: bool = True,
    name: str | None = None,
) -> nn.Module:
    """The network ``source`` names, in eval mode on ``device``, with a :class:`ModelInfo`.

    Parameters
    ----------
    source : str, path, nn.Module or None
        A pretrained key (:func:`~napari_mpt_deblur.models.pretrained.list_pretrained`), an old
        weights name (``DeprecationWarning``), a checkpoint file, a bioimage.io package, or a
        network. ``None``: the default weights (``mpt_tiny.defocus``).
    device : str or torch.device
        ``"auto"`` (CUDA, MPS, CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``; a
        ``torch.device`` is taken as already resolved (the widgets resolve once per run).
    routing : {"compat", "aligned"}, optional
        Override the CSWA routing recorded in the checkpoint (experiments only). A training
        state (``state.pt``) accepts only the routing it was trained with.
    config : architecture config or dict, optional
        For an authors' checkpoint whose block schedule is not the published one: a config, or
        the released code's constructor arguments.
    copy : bool
        Return a private deep copy that the caller may change (fine-tuning).
    cache : bool
        Use the shared cache (see the module notes). ``False`` always reads the file.
    name : str, optional
        Name for a network given without any info (e.g. its catalog name).

    Raises
    ------
    FileNotFoundError
        ``source`` is neither a pretrained key nor an existing file; the message lists the keys.
    CheckpointError
        The file is unsafe (pickled objects), corrupt, or does not match its architecture.
    """
    torch_device = _as_device(device)
    if _is_module(source):
        net = _copy.deepcopy(source) if copy else source
        current = attached_info(net)  # a ModelInfo, a dict from older code, or none
        if not isinstance(current, ModelInfo):
            info = model_info(net)
            attach_info(net, info.replace(name=name) if name and not current else info)
        return net.eval().to(torch_device)
    entry, path = _locate(DEFAULT_PRETRAINED if source is None else source)
    key = _cache_key(entry, path, torch_device, routing, config) if cache else None
    with _LOCK:
        net = _CACHE.get(key) if key is not None else None
        if net is not None:
            _CACHE.move_to_end(key)
        else:
            net = _load(entry, path, torch_device, routing=routing, config=config)
            if key is not None:
                _CACHE[key] = net
                while len(_CACHE) > CACHE_SIZE:
                    _CACHE.popitem(last=False)
    return _copy.deepcopy(net) if copy else net


def load_model(
    source: str | os.PathLike | None = None,
    device: str | torch.device | None = "auto",
    *,
    routing: str | None = None,
    config: Any = None,
) -> nn.Module:
    """Load a trained model, ready for inference (eval mode, on ``device``): a fresh network.

    Same sources and errors as :func:`resolve_model`, which it calls without the cache: the
    network returned is the caller's to change (train, fine-tune). ``model.info`` is a
    :class:`~napari_mpt_deblur.models.info.ModelInfo`: name, key, source, SHA-256, routing,
    normalisation ... ``forward`` maps ``(N, C, H, W)`` (H, W multiples of
    ``model.size_multiple``) to the same shape.
    """
    return resolve_model(source, device, routing=routing, config=config, cache=False)


# ------------------------------------------------------------------------------------------
# internals
# ------------------------------------------------------------------------------------------
def _is_module(source: Any) -> bool:
    return hasattr(source, "parameters") and callable(source) and not isinstance(
        source, (str, os.PathLike))


def _as_device(device: Any) -> torch.device:
    import torch

    if isinstance(device, torch.device):
        return device
    from .._device import get_device

    return get_device(device)


def _locate(source: str | os.PathLike) -> tuple[PretrainedEntry | None, Path]:
    """The pretrained entry (if any) and the file or package that ``source`` names."""
    if is_pretrained_name(source):
        entry = get_pretrained(str(source), warn=True)
        if not entry.path.is_file():
            raise FileNotFoundError(
                f"the weights of {entry.key!r} ({entry.file}) are not installed; installed: "
                f"{', '.join(k for k in pretrained_keys() if get_pretrained(k).path.is_file())}"
                " or none")
        return entry, entry.path
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"a model is a pretrained key, a checkpoint path or an nn.Module; got "
            f"{type(source).__name__}")
    path = Path(source).expanduser()
    if path.exists():
        return None, path
    from ._registry import list_models

    if isinstance(source, str) and source in list_models():
        raise FileNotFoundError(
            f"{source!r} is an architecture preset, not trained weights: use "
            f"create_model({source!r}) for an untrained network, or one of the pretrained "
            f"keys {', '.join(pretrained_keys())}, or a checkpoint file")
    raise FileNotFoundError(f"{unknown_message(source)}; nor is it an existing checkpoint file")


def _cache_key(entry: PretrainedEntry | None, path: Path, device: torch.device,
               routing: str | None, config: Any) -> tuple | None:
    if config is not None:
        config = config.to_dict() if hasattr(config, "to_dict") else config
        try:
            config = json.dumps(config, sort_keys=True, default=str)
        except TypeError:
            return None  # not describable: load without the cache
    try:
        resolved = path.resolve()
        stat = resolved.stat()
    except OSError:
        return None
    ident = entry.key if entry is not None else str(resolved)
    return (ident, stat.st_mtime_ns, stat.st_size, str(device), routing, config)


def _load(entry: PretrainedEntry | None, path: Path, device: torch.device, *,
          routing: str | None, config: Any) -> nn.Module:
    if entry is None:
        from ..bioimageio import is_bioimageio_package, load_bioimageio

        if is_bioimageio_package(path):  # a model-zoo package exported by this project
            net = load_bioimageio(path, device)
            attach_info(net, model_info(net))
            return net.eval()
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    if is_training_state(path):  # a training run's state: its module knows the layout
        if config is not None:
            raise ValueError("a training state is built from its own config; an architecture "
                             "config applies to checkpoints only")
        from ..train.loop import model_from_state

        net = model_from_state(path)
        own = model_info(net).routing
        if routing is not None and own is not None and routing != own:
            # Its weights were trained under its own routing: another one would silently give
            # a different network, so only the routing it already has is accepted.
            raise ValueError(f"{path} is a training state built from its own config, trained "
                             f"with routing {own!r}; it cannot be loaded with routing "
                             f"{routing!r}")
        return net.to(device)
    state_dict, header = load_checkpoint(path)
    arch_config = _config(state_dict, header, routing, config)
    net = model_from_state_dict(state_dict, header, config=arch_config)
    sha256 = file_sha256(path)
    if entry is not None and sha256 != entry.sha256:
        logger.warning("%s does not match the SHA-256 recorded for %r (%s...): the installed "
                       "weights were changed", path, entry.key, entry.sha256[:12])
    info = ModelInfo.from_header(
        {k: v for k, v in (header or {}).items() if k != "config"},
        config=net.config.to_dict(),
        name=(header or {}).get("name") or (entry.label if entry else path.stem),
        source=str(path),
        sha256=sha256,
        routing=getattr(net.config, "routing", None),
        # the family that built the network (a header-less file: whichever inferred it)
        arch=(header or {}).get("arch") or architecture_of(net.config).name,
        authors_checkpoint=header is None,
    )
    if entry is not None:
        normalization = (header or {}).get("normalization") or entry.normalization
        info = info.replace(key=entry.key, lineage=info.lineage or entry.lineage,
                            normalization=normalization)
    attach_info(net, info)
    return net.eval().to(device)


def _config(state_dict: dict, header: dict | None, routing: str | None, config: Any) -> Any:
    """The architecture config to build: given, inferred from tensors, or from the header."""
    if isinstance(config, dict):
        from ._registry import get_architecture

        arch = get_architecture((header or {}).get("arch", "mpt"))
        if arch.config_from_authors is None:
            raise ValueError(f"{arch.name} checkpoints take no constructor-argument config")
        return arch.config_from_authors(config, routing)
    if config is not None:
        return config
    if header is None:
        return infer_config(state_dict, routing)
    if routing is not None:
        parsed = config_from_header(header)
        if hasattr(parsed, "routing"):
            return parsed.replace(routing=routing)
    return None
