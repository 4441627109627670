"""Our model back from a bioimage.io package exported by :func:`~.export.export_bioimageio`.

Loading needs no ``bioimageio`` package: the description is read with PyYAML and the weights
with ``torch.load(weights_only=True)``, from a zip or a folder, with size limits.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import torch
from torch import nn

from .network import ARCHITECTURE_CALLABLE, ARCHITECTURE_MODULE, CONFIG_KEY

__all__ = ["RDF_NAMES", "is_bioimageio_package", "load_bioimageio"]


RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
_MAX_WEIGHTS_BYTES = 2 * 1024**3


def is_bioimageio_package(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a bioimage.io package: a zip or folder with an ``rdf.yaml``
    (or ``bioimageio.yaml``), or that file itself."""
    path = Path(path)
    if path.is_dir():
        return any((path / n).is_file() for n in RDF_NAMES)
    if path.name in RDF_NAMES or path.name.endswith(".bioimageio.yaml"):
        return path.is_file()
    if path.suffix == ".zip" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return any(n in zf.namelist() for n in RDF_NAMES)
    return False


class _PackageReader:
    """Files of a package, from a zip or a folder, with size limits."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip = zipfile.ZipFile(path) if path.suffix == ".zip" else None
        self.root = path.parent if path.is_file() and self.zip is None else path
        names = self.zip.namelist() if self.zip else [p.name for p in self.root.iterdir()]
        if path.is_file() and self.zip is None:
            self.rdf = path.name
        else:
            found = [n for n in RDF_NAMES if n in names]
            if not found:
                raise ValueError(f"{path} has no rdf.yaml: not a bioimage.io package")
            self.rdf = found[0]

    def read(self, name: str) -> bytes:
        if "/" in name.strip("./") or ".." in name or "://" in name:
            raise ValueError(f"refusing to read {name!r}: only files inside the package are used")
        if self.zip is not None:
            info = self.zip.getinfo(name)
            if info.file_size > _MAX_WEIGHTS_BYTES:
                raise ValueError(f"{name} in {self.path} is too large ({info.file_size} bytes)")
            return self.zip.read(name)
        file = self.root / name
        if file.stat().st_size > _MAX_WEIGHTS_BYTES:
            raise ValueError(f"{file} is too large")
        return file.read_bytes()

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def load_bioimageio(
    path: str | os.PathLike, device: str | torch.device | None = "auto"
) -> nn.Module:
    """Our model back from a bioimage.io package exported by :func:`export_bioimageio`.

    Returns the bare network (not the wrapper), like ``load_model``: ``model.info`` holds the
    checkpoint header stored in the package, so ``deblur`` normalises as before. Only packages
    whose ``pytorch_state_dict`` architecture is ours can be loaded; weights are read with
    ``torch.load(weights_only=True)`` and checked against the SHA-256 in the description.
    """
    import yaml

    from .._device import get_device
    from ..models.checkpoint import CheckpointError, model_from_state_dict
    from ..models.info import ModelInfo, attach_info

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"bioimage.io package not found: {path}")
    reader = _PackageReader(path)
    try:
        rdf = yaml.safe_load(reader.read(reader.rdf))
        entry = ((rdf or {}).get("weights") or {}).get("pytorch_state_dict") or {}
        arch = entry.get("architecture") or {}
        if (arch.get("import_from"), arch.get("callable")) != (
            ARCHITECTURE_MODULE, ARCHITECTURE_CALLABLE
        ):
            raise CheckpointError(
                f"{path} does not hold a napari-mpt-deblur network (its pytorch_state_dict "
                f"architecture is {arch.get('import_from')}.{arch.get('callable')})"
            )
        header = dict(((rdf.get("config") or {}).get(CONFIG_KEY)) or {})
        kwargs = arch.get("kwargs") or {}
        header.update(arch=kwargs.get("arch"), config=kwargs.get("config"),
                      normalization=kwargs.get("normalization"))
        data = reader.read(str(entry.get("source", "")))
    finally:
        reader.close()
    digest = hashlib.sha256(data).hexdigest()
    if entry.get("sha256") and entry["sha256"] != digest:
        raise CheckpointError(f"{path}: the weights do not match their SHA-256 (corrupt package)")
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    prefix = "net."
    if not all(k.startswith(prefix) for k in state):
        raise CheckpointError(f"{path}: unexpected weight names (expected {prefix!r} prefixes)")
    net = model_from_state_dict({k[len(prefix):]: v for k, v in state.items()}, header)
    attach_info(net, ModelInfo.from_header(
        {k: v for k, v in header.items() if k != "config"},
        config=net.config.to_dict(),
        name=header.get("name") or rdf.get("name"),
        source=str(path),
        sha256=digest,
        routing=getattr(net.config, "routing", None),
        authors_checkpoint=False,
        bioimageio={"name": rdf.get("name"), "format_version": rdf.get("format_version")},
    ))
    return net.eval().to(get_device(device))
