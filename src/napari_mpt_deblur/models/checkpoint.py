"""Checkpoints: the project's safetensors format, the authors' released files, and ``load_model``.

Nothing here unpickles arbitrary objects: safetensors files hold only tensors and a JSON header,
and torch files are read with ``torch.load(weights_only=True)``, which refuses code-carrying
pickles. Shapes are checked against the header before a model is built, and file sizes are
checked before anything is read, so a hostile or corrupt file fails with a clear message.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import tempfile
import zipfile
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__

if TYPE_CHECKING:
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "bundled_models",
    "default_model_name",
    "file_sha256",
    "load_checkpoint",
    "load_model",
    "model_from_state_dict",
    "read_header",
    "save_checkpoint",
]

HEADER_KEY = "napari_mpt_deblur"
FORMAT_VERSION = 1
MAX_CHECKPOINT_BYTES = 2 * 1024**3  # the published MPT is ~80 MB; refuse absurd files
AUTHOR_PREFIXES = ("module.Network.", "Network.", "module.")
TORCH_SUFFIXES = (".pth", ".pt", ".pytorch", ".ckpt", ".bin")
DEFAULT_MODEL = "mpt-tiny"


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
    ``arch``, ``config``, ``routing``, channels, ``normalization`` and free-form training and
    simulation descriptions from ``metadata``.
    """
    from safetensors.torch import save_file

    from ..engine.normalize import IntensityNormalization

    path = Path(path)
    if path.suffix != ".safetensors":
        path = (
            path.with_suffix(path.suffix + ".safetensors")
            if path.suffix
            else path.with_suffix(".safetensors")
        )
    info = dict(getattr(model, "info", {}) or {})
    header: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "arch": info.get("arch", _arch_of(model)),
        "config": model.config.to_dict(),
        "routing": getattr(model.config, "routing", None),
        "in_channels": model.config.in_channels,
        "out_channels": model.config.out_channels,
        "normalization": info.get("normalization", IntensityNormalization().to_dict()),
    }
    for key in ("name", "training", "simulation", "metrics", "finetune", "description"):
        if key in info:
            header[key] = info[key]
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


def _arch_of(model: nn.Module) -> str:
    return type(model).__name__.lower()


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


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the training wrappers' key prefixes (``module.Network.``, ``Network.`` ...)."""
    for prefix in AUTHOR_PREFIXES:
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


# --------------------------------------------------------------------------------------------
# Building models
# --------------------------------------------------------------------------------------------
def infer_mpt_config(state_dict: dict[str, torch.Tensor], routing: str = "compat"):
    """Reconstruct an :class:`MPTConfig` from the authors' key layout and shapes.

    Pooling rates are not stored in the weights; levels with six blocks get the published
    schedule, others a pyramid consistent with which blocks own a ``downproj``.
    """
    from .mpt import PUBLISHED_POOL_RATES, MPTConfig

    if "inproj.weight" not in state_dict or "output.weight" not in state_dict:
        raise CheckpointError(
            "this is not an MPT state dict (no 'inproj.weight'/'output.weight' keys); "
            f"first keys: {list(state_dict)[:5]}"
        )
    inproj = state_dict["inproj.weight"]
    dim, in_ch = int(inproj.shape[0]), int(inproj.shape[1])
    out_ch = int(state_dict["output.weight"].shape[0])
    stages = ("encoder_level1", "encoder_level2", "encoder_level3", "latent")
    num_blocks, heads, rates = [], [], []
    for level, stage in enumerate(stages):
        idx = {int(m.group(1)) for k in state_dict if (m := re.match(rf"{stage}\.(\d+)\.", k))}
        if not idx:
            raise CheckpointError(f"MPT state dict has no blocks for {stage}")
        n = max(idx) + 1
        num_blocks.append(n)
        heads.append(int(state_dict[f"{stage}.0.attn.relative_position_bias_table"].shape[1]))
        pooled = [f"{stage}.{i}.attn.downsamp.downproj.weight" in state_dict for i in range(n)]
        published = PUBLISHED_POOL_RATES[level]
        if n == len(published) and [r < 1 for r in published] == pooled:
            rates.append(tuple(published))
        else:
            coarse = min(published)
            rates.append(tuple(coarse if p else 1.0 for p in pooled))
    hidden = int(state_dict["encoder_level1.0.ffn.project_in1.weight"].shape[0])
    factor = 2.6 if int(dim * 2.6) == hidden else hidden / dim
    table = int(state_dict["encoder_level1.0.attn.relative_position_bias_table"].shape[0])
    window = (round(table**0.5) + 1) // 2
    return MPTConfig(
        dim=dim,
        num_blocks=tuple(num_blocks),
        heads=tuple(heads),
        ffn_expansion_factor=factor,
        pool_rates=tuple(rates),
        in_channels=in_ch,
        out_channels=out_ch,
        window_size=window,
        routing=routing,
    )


def _config_from_header(header: Any):
    """The architecture config recorded in a header; anything malformed is a CheckpointError."""
    if not isinstance(header, dict):
        raise CheckpointError(
            f"checkpoint header must be a JSON object, not {type(header).__name__}"
        )
    arch = header.get("arch", "mpt")
    config = header.get("config")
    if not isinstance(config, dict):
        raise CheckpointError("checkpoint header has no architecture 'config' object")
    try:
        if arch == "mpt":
            from .mpt import MPTConfig

            return MPTConfig.from_dict(config)
        if arch == "htcsf":
            from .htcsf import HTCSFConfig

            return HTCSFConfig.from_dict(config)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint header has an invalid {arch} config: {exc}") from None
    raise CheckpointError(f"checkpoint is for an unknown architecture {arch!r}")


def _check_config_against_tensors(config, state_dict: dict[str, torch.Tensor]) -> None:
    """Compare the header's size parameters with the tensors before building anything.

    A header must not be able to make a small file allocate a huge model.
    """
    from .mpt import MPTConfig

    if not isinstance(config, MPTConfig):
        return
    inproj, output = state_dict.get("inproj.weight"), state_dict.get("output.weight")
    if inproj is None or output is None:
        raise CheckpointError("checkpoint tensors lack 'inproj.weight'/'output.weight'")
    expected = (config.dim, config.in_channels, config.out_channels)
    found = (int(inproj.shape[0]), int(inproj.shape[1]), int(output.shape[0]))
    if expected != found:
        raise CheckpointError(
            f"checkpoint header (dim, in, out channels) = {expected} disagrees with its "
            f"tensors {found}"
        )
    stages = ("encoder_level1", "encoder_level2", "encoder_level3", "latent")
    for stage, n in zip(stages, config.num_blocks):
        count = len({k.split(".")[1] for k in state_dict if k.startswith(stage + ".")})
        if count != n:
            raise CheckpointError(
                f"checkpoint header says {n} blocks in {stage} but its tensors have {count}"
            )


def _build(config) -> nn.Module:
    from .mpt import MPT, MPTConfig

    if isinstance(config, MPTConfig):
        return MPT(config)
    from .htcsf import HTCSF

    return HTCSF(config)


def model_from_state_dict(
    state_dict: dict[str, torch.Tensor], header: dict[str, Any] | None = None, *, config=None
) -> nn.Module:
    """Build the right model for a state dict and load it strictly (shapes checked first)."""
    state_dict = strip_prefixes(dict(state_dict))
    if config is None:
        config = _config_from_header(header) if header is not None else infer_mpt_config(state_dict)
    _check_config_against_tensors(config, state_dict)
    model = _build(config)
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


def _weights_dir() -> Path:
    return Path(str(resources.files("napari_mpt_deblur") / "weights"))


def bundled_models() -> dict[str, Path]:
    """Trained weights shipped inside the package, by name."""
    folder = _weights_dir()
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.safetensors"))}


def default_model_name() -> str:
    """The model used when none is given (the CPU-friendly shipped default)."""
    return DEFAULT_MODEL


def load_model(
    source: str | os.PathLike | None = None,
    device: str | torch.device | None = "auto",
    *,
    routing: str | None = None,
    config: Any = None,
) -> nn.Module:
    """Load a trained model, ready for inference (eval mode, on ``device``).

    Parameters
    ----------
    source : str or path, optional
        A bundled model name (``list`` them with :func:`bundled_models`), a project checkpoint
        (``.safetensors``), or an authors' checkpoint (``.pth``/``.pytorch``/``.pt``; keys may be
        prefixed ``Network.`` or ``module.Network.``; channels are inferred from the weights and
        the released code's ``compat`` routing is used), or a bioimage.io package (zip, folder
        or ``rdf.yaml``) exported by ``mpt-deblur export-bioimageio``. ``None`` loads the
        default model.
    device : str or torch.device
        ``"auto"`` (CUDA, MPS, CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    routing : {"compat", "aligned"}, optional
        Override the CSWA routing recorded in the checkpoint (for experiments only).
    config : MPTConfig or dict, optional
        Architecture of an authors' checkpoint whose block schedule is not the published one
        (pooling rates are not stored in the weights): an :class:`MPTConfig` or the released
        code's constructor arguments (``dim``, ``num_blocks``, ``downpool`` ...).

    Returns
    -------
    torch.nn.Module
        ``forward`` maps ``(N, C, H, W)`` (H, W multiples of ``model.size_multiple``) to the same
        shape; ``model.info`` records name, source, SHA-256, routing and normalisation.

    Raises
    ------
    FileNotFoundError
        ``source`` is neither a bundled name nor an existing file.
    CheckpointError
        The file is unsafe (pickled objects), corrupt, or does not match the architecture.
    """
    from .._device import get_device

    source = DEFAULT_MODEL if source is None else source
    bundled = bundled_models()
    path = Path(source)
    if not (isinstance(source, str) and source in bundled):
        from ..bioimageio import is_bioimageio_package, load_bioimageio

        if is_bioimageio_package(path):  # a model-zoo package exported by this project
            return load_bioimageio(path, device)
    if isinstance(source, str) and source in bundled:
        path, name = bundled[source], source
    elif path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    elif path.is_file():
        name = path.stem
    else:
        from ._registry import list_models

        if isinstance(source, str) and source in list_models():
            raise FileNotFoundError(
                f"no trained weights are bundled for {source!r}. Bundled models: "
                f"{', '.join(bundled) or 'none'}. Use create_model({source!r}) for an untrained "
                "network, or pass a checkpoint file."
            )
        raise FileNotFoundError(
            f"{source!r} is neither a bundled model ({', '.join(bundled) or 'none'}) nor an "
            "existing checkpoint file"
        )
    state_dict, header = load_checkpoint(path)
    if isinstance(config, dict):
        from .mpt import MPTConfig

        config = MPTConfig.from_authors_config(config, routing=routing or "compat")
    if config is not None:
        pass
    elif header is None:
        config = infer_mpt_config(strip_prefixes(state_dict), routing=routing or "compat")
    elif (
        routing is not None
        and header is not None
        and hasattr(_config_from_header(header), "routing")
    ):
        config = _config_from_header(header).replace(routing=routing)
    model = model_from_state_dict(state_dict, header, config=config)
    info: dict[str, Any] = dict(header or {})
    info.pop("config", None)
    info.update(
        name=(header or {}).get("name", name),
        source=str(path),
        sha256=file_sha256(path),
        routing=getattr(model.config, "routing", None),
        arch=(header or {}).get("arch", "mpt"),
        authors_checkpoint=header is None,
    )
    info.setdefault("normalization", None)
    if info["normalization"] is None:
        from ..engine.normalize import IntensityNormalization

        info["normalization"] = IntensityNormalization().to_dict()
    model.info = info
    return model.eval().to(get_device(device))
