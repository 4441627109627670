"""Checkpoints: the project's safetensors format and the authors' released files.

Nothing here unpickles arbitrary objects: safetensors files hold only tensors and a JSON header,
and torch files are read with ``torch.load(weights_only=True)``, which refuses code-carrying
pickles. Shapes are checked against the header before a model is built, and file sizes are
checked before anything is read, so a hostile or corrupt file fails with a clear message.

This module knows no architecture: what a header's ``arch`` means (config class, key filter,
config inference for header-less files, size checks) is registered by each architecture module
(:class:`~napari_mpt_deblur.models._registry.Architecture`). Names and caching live in
:mod:`.resolve` (``resolve_model``, ``load_model``), shipped weights in :mod:`.pretrained`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import tempfile
import warnings
import zipfile
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._registry import architecture_of, get_architecture, list_architectures
from .info import model_info

if TYPE_CHECKING:
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "build_model",
    "config_from_header",
    "file_sha256",
    "load_checkpoint",
    "model_from_state_dict",
    "read_header",
    "save_checkpoint",
]

HEADER_KEY = "napari_mpt_deblur"
FORMAT_VERSION = 1
MAX_CHECKPOINT_BYTES = 2 * 1024**3  # the published MPT is ~80 MB; refuse absurd files
TORCH_SUFFIXES = (".pth", ".pt", ".pytorch", ".ckpt", ".bin")
# Header fields a saved model carries over from its info (not "key": a fine-tuned copy of
# shipped weights is not those weights; not the load-time source/sha256).
_SAVED_INFO = ("name", "training", "simulation", "metrics", "finetune", "description", "lineage")

# Names that moved when this module became architecture-free (issue #30): still importable
# from here, with a DeprecationWarning naming their home (see __getattr__).
_MOVED = {
    "load_model": "resolve",
    "bundled_models": "pretrained",
    "default_model_name": "pretrained",
    "DEFAULT_MODEL": "pretrained",
    "infer_mpt_config": "mpt",
    "strip_prefixes": "mpt",
    "AUTHOR_PREFIXES": "mpt",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        home = f"{__package__}.{_MOVED[name]}"
        module = import_module(home)
        if name == "DEFAULT_MODEL":
            warnings.warn(f"{__name__}.DEFAULT_MODEL is deprecated; use {home}.DEFAULT_PRETRAINED "
                          f"(the key) or {home}.default_model_name() (the old name)",
                          DeprecationWarning, stacklevel=2)
            return module.default_model_name()
        warnings.warn(f"{__name__}.{name} has moved; import it from {home}",
                      DeprecationWarning, stacklevel=2)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _package_version() -> str:
    """The installed package's version, without importing the package root."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("napari-mpt-deblur")
    except PackageNotFoundError:  # pragma: no cover - running from an uninstalled tree
        return "unknown"


class CheckpointError(ValueError):
    """A checkpoint file cannot be used (unsafe, corrupt, or for another architecture)."""


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------
def save_checkpoint(
    path: str | os.PathLike, model: nn.Module, *, metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` as safetensors with a JSON header, atomically (temp file + rename).

    The header records everything needed to rebuild the model without code from the file:
    ``arch``, ``config``, ``routing``, channels, ``normalization`` and the model's
    :class:`~napari_mpt_deblur.models.info.ModelInfo` (name, description, training, simulation,
    lineage ...), then ``metadata`` on top.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        path = (
            path.with_suffix(path.suffix + ".safetensors")
            if path.suffix
            else path.with_suffix(".safetensors")
        )
    info = model_info(model)
    header: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "package_version": _package_version(),
        "arch": info.arch or architecture_of(model.config).name,
        "config": model.config.to_dict(),
        "routing": getattr(model.config, "routing", None),
        "in_channels": model.config.in_channels,
        "out_channels": model.config.out_channels,
        "normalization": info.normalization,
    }
    saved = info.to_dict()
    if info.key:  # weights derived from shipped ones record which, instead of claiming the key
        saved["lineage"] = [*saved.get("lineage", []), info.key]
    for key in _SAVED_INFO:
        if saved.get(key):
            header[key] = saved[key]
    header.update(metadata or {})
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={HEADER_KEY: json.dumps(header, default=_json_default)})
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp creates 0600; checkpoints are shared files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint header")


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file (provenance in layer metadata and model cards)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_file(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(
            f"{path} is empty (0 bytes): the file is truncated or not a checkpoint"
        )
    if size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(
            f"{path} is {size / 1e9:.1f} GB, larger than any supported model "
            f"({MAX_CHECKPOINT_BYTES / 1e9:.0f} GB limit)"
        )


def read_header(path: str | os.PathLike) -> dict[str, Any] | None:
    """The project header of a safetensors checkpoint (``None`` for other files)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return None
    _check_file(path)
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path} is not a valid safetensors file ({exc})") from None
    if HEADER_KEY not in meta:
        return None
    try:
        return json.loads(meta[HEADER_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} has a corrupt header ({exc})") from None


def load_checkpoint(
    path: str | os.PathLike,
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Read a checkpoint's tensors and header without executing anything from the file.

    Returns ``(state_dict, header)``; ``header`` is ``None`` for the authors' files.
    """
    path = Path(path)
    _check_file(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        header = read_header(path)
        try:
            return load_file(str(path)), header
        except Exception as exc:
            raise CheckpointError(f"{path} is corrupt or truncated ({exc})") from None
    return _load_torch_file(path)


def _load_torch_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    import torch

    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refusing to load {path}: it contains Python objects other than tensors, and "
            "unpickling them could run arbitrary code. Only plain state dicts are accepted "
            f"(torch.load(weights_only=True) said: {str(exc).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is corrupt, truncated or not a PyTorch file ({exc})"
        ) from None
    header = None
    if isinstance(obj, dict) and HEADER_KEY in obj:
        header = (
            json.loads(obj[HEADER_KEY]) if isinstance(obj[HEADER_KEY], str) else obj[HEADER_KEY]
        )
    return _find_state_dict(obj, path), header


def _find_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    import torch

    if isinstance(obj, dict):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(obj) - 2:
            return tensors
        for key in ("state_dict", "model", "net", "params", "network", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                return _find_state_dict(obj[key], path)
    raise CheckpointError(f"{path} holds no model state dict (found {type(obj).__name__})")


# --------------------------------------------------------------------------------------------
# Building models (through the registered architectures)
# --------------------------------------------------------------------------------------------
def config_from_header(header: Any):
    """The architecture config recorded in a header; anything malformed is a CheckpointError."""
    if not isinstance(header, dict):
        raise CheckpointError(
            f"checkpoint header must be a JSON object, not {type(header).__name__}"
        )
    name = header.get("arch", "mpt")
    config = header.get("config")
    if not isinstance(config, dict):
        raise CheckpointError("checkpoint header has no architecture 'config' object")
    try:
        arch = get_architecture(name)
    except ValueError:
        raise CheckpointError(f"checkpoint is for an unknown architecture {name!r}") from None
    try:
        return arch.config_class.from_dict(config)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint header has an invalid {name} config: {exc}") from None


_config_from_header = config_from_header  # the name bioimage.io packages of 0.1 used


def infer_config(state_dict: dict[str, torch.Tensor], routing: str | None = None):
    """The config of a header-less state dict (an authors' file), from its keys and shapes.

    Every architecture that can read header-less files is asked in turn; the first that
    recognises the tensors wins. ``CheckpointError`` repeats what each one objected.
    """
    errors = []
    for name in list_architectures():
        arch = get_architecture(name)
        if arch.infer_config is None:
            continue
        try:
            return arch.infer_config(arch.filter_state_dict(dict(state_dict)), routing)
        except CheckpointError as exc:
            errors.append(str(exc))
    raise CheckpointError("; ".join(errors) or "this file has no header and no architecture "
                          "can read header-less weights")


def build_model(config) -> nn.Module:
    """An untrained network for an architecture config (any registered architecture)."""
    return architecture_of(config).build(config)


def model_from_state_dict(
    state_dict: dict[str, torch.Tensor], header: dict[str, Any] | None = None, *, config=None
) -> nn.Module:
    """Build the right model for a state dict and load it strictly (shapes checked first)."""
    if config is None:
        config = config_from_header(header) if header is not None else infer_config(state_dict)
    arch = architecture_of(config)
    state_dict = arch.filter_state_dict(dict(state_dict))
    if arch.check_config is not None:
        arch.check_config(config, state_dict)
    model = build_model(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if wrong:
            details.append(f"{len(wrong)} shape mismatches (e.g. {wrong[:2]})")
        raise CheckpointError("checkpoint does not match the model: " + "; ".join(details))
    model.load_state_dict(state_dict, strict=True)
    return model
