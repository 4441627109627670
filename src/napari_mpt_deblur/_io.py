"""Image files in and out: TIFF/OME-TIFF (metadata and pixel size kept) and PNG.

Writes are atomic (a temporary file in the target folder, then ``os.replace``) and never replace
an existing file unless asked, so a crash or a kill leaves either the old file or a complete new
one, and user data is never overwritten by accident (:func:`~napari_mpt_deblur.files.atomic_write`,
public in :mod:`napari_mpt_deblur.files`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .files import atomic_write, remove_stale_temp_files  # re-exported: their home before files
from .optics_metadata import (  # re-exported: their home before optics_metadata
    LENGTH_UM,
    layer_pixel_size_um,
    read_pixel_size_um,
    tiff_pixel_size_um,
)

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_SUFFIXES",
    "LENGTH_UM",
    "atomic_write",
    "expand_inputs",
    "layer_pixel_size_um",
    "read_image",
    "read_pixel_size_um",
    "remove_stale_temp_files",
    "write_image",
]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
_TIFF = (".tif", ".tiff")


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Read an image and what is known about it.

    Returns
    -------
    array : numpy.ndarray
    metadata : dict
        ``axes`` (e.g. ``"ZYX"``; ``None`` when unknown), ``pixel_size_um`` (``(y, x)`` or
        ``None``), ``ome_xml`` (str or ``None``), ``source`` (path string).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such image file: {path}")
    suffix = path.suffix.lower()
    if suffix in _TIFF:
        return _read_tiff(path)
    if suffix in IMAGE_SUFFIXES:
        import imageio.v3 as iio

        array = np.asarray(iio.imread(path))
        axes = "YXC" if array.ndim == 3 and array.shape[-1] in (3, 4) else None
        return array, {"axes": axes, "pixel_size_um": None, "ome_xml": None, "source": str(path)}
    raise ValueError(
        f"{path.name}: unsupported file type {suffix!r}; supported: {', '.join(IMAGE_SUFFIXES)}"
    )


def _read_tiff(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            array = series.asarray()
            axes = series.axes
            ome = tif.ome_metadata if tif.is_ome else None
            pixel_size = tiff_pixel_size_um(tif, ome)
    except (tifffile.TiffFileError, ValueError, OSError) as exc:
        raise ValueError(f"{path.name} is not a readable TIFF file ({exc})") from None
    axes = _clean_axes(axes, array.ndim)
    return array, {"axes": axes, "pixel_size_um": pixel_size, "ome_xml": ome, "source": str(path)}


def _clean_axes(axes: str | None, ndim: int) -> str | None:
    if not axes or len(axes) != ndim:
        return None
    axes = axes.upper().replace("S", "C").replace("I", "Q")
    if "Y" not in axes or "X" not in axes or len(set(axes)) != len(axes):
        return None
    if set(axes) - set("TZCYXQ"):
        return None
    return axes


def write_image(
    path: str | os.PathLike,
    array: np.ndarray,
    metadata: dict[str, Any] | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write an image atomically; TIFF output keeps axes and pixel size (OME-TIFF for .ome.tif)."""
    path = Path(path)
    metadata = metadata or {}
    suffix = path.suffix.lower()
    if suffix in _TIFF:
        import tifffile

        axes = metadata.get("axes")
        pixel = metadata.get("pixel_size_um")

        def writer(tmp: str) -> None:
            kwargs: dict[str, Any] = {"photometric": "minisblack"}
            if (
                axes
                and axes.endswith("C")
                and array.shape[-1] in (3, 4)
                and array.dtype == np.uint8
            ):
                kwargs["photometric"] = "rgb"
            meta: dict[str, Any] = {}
            if axes:
                meta["axes"] = axes.replace("Q", "I")
            if pixel:
                meta["PhysicalSizeY"], meta["PhysicalSizeX"] = float(pixel[0]), float(pixel[1])
                meta["PhysicalSizeYUnit"] = meta["PhysicalSizeXUnit"] = "µm"
                kwargs["resolution"] = (1.0 / float(pixel[1]), 1.0 / float(pixel[0]))
                kwargs["resolutionunit"] = "MICROMETER"
            tifffile.imwrite(tmp, array, ome=True, metadata=meta or None, **kwargs)

        return atomic_write(path, writer, overwrite=overwrite)
    if suffix == ".png":
        import imageio.v3 as iio

        return atomic_write(
            path, lambda tmp: iio.imwrite(tmp, array, extension=".png"), overwrite=overwrite
        )
    raise ValueError(f"cannot write {suffix!r} files; use .tif, .ome.tif or .png")


def expand_inputs(items: Iterable[str | os.PathLike]) -> Iterator[Path]:
    """Files named directly, matched by glob patterns, or found in folders (sorted, unique)."""
    import glob

    seen: set[Path] = set()
    for item in items:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            # Hidden files are temp files of interrupted writes or OS metadata ("._x.tif").
            candidates = sorted(
                p
                for p in path.iterdir()
                if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
            )
        elif any(ch in text for ch in "*?["):
            candidates = [Path(p) for p in sorted(glob.glob(text, recursive=True))]
        elif path.exists():
            candidates = [path]
        else:
            raise FileNotFoundError(f"no such file or folder: {text}")
        for candidate in candidates:
            resolved = candidate.resolve()
            if resolved not in seen and candidate.is_file():
                seen.add(resolved)
                yield candidate
