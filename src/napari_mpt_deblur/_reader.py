"""napari reader for checkpoint files, and TIFF/OME-TIFF to layer data with physical pixel size.

Dropping a checkpoint (``.safetensors``, or the authors' ``.pth``/``.pt``/``.pytorch``) lists it
in the shared model catalog, selects it in any open Defocus Deblur widget and shows a
notification. That reader returns ``[(None,)]``: npe2 and napari document this value as "the
file was handled and has no layer data" (napari's own ``.py`` reader uses it), whereas an empty
list counts as a failed read and makes napari report an error or try another reader. A file
that is not a usable checkpoint raises, and napari shows the reason.

TIFF files are *not* claimed in the manifest. napari's built-in reader claims every TIFF, and
napari asks the user to choose whenever two plugins match a file (``MultipleReaderError`` from
``viewer.open``), with no priority a plugin could declare; claiming TIFFs too meant a question on
every drop. So napari opens TIFFs itself, and :func:`read_tiff` stays for scripts that want what
the command line sees (:func:`napari_mpt_deblur._io.read_image`): Y/X (and Z from OME
``PhysicalSizeZ``) as the layer's ``scale`` in µm, axis letters as ``axis_labels``
(``("z", "y", "x")``), which the Defocus Deblur widget reads back to know which axes are planes,
and non-RGB channel axes split into one layer per channel, as napari shows channels.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .optics_metadata import ome_z_spacing_um

logger = logging.getLogger(__name__)

__all__ = [
    "get_checkpoint_reader",
    "read_checkpoints",
    "read_tiff",
    "tiff_layer_data",
]

PathOrPaths = str | os.PathLike | Sequence[str | os.PathLike]
LayerDataTuple = tuple[Any, ...]

_CHANNEL_COLORMAPS = ("magenta", "green", "cyan", "yellow", "red", "blue")


def _single(path: PathOrPaths) -> str | None:
    if isinstance(path, (list, tuple)):
        return os.fspath(path[0]) if len(path) == 1 else None
    return os.fspath(path)


def read_tiff(path: PathOrPaths) -> list[LayerDataTuple]:
    """Read a TIFF/OME-TIFF into napari layer data (see :func:`tiff_layer_data`).

    For scripts that want the pixel size napari's own TIFF reader drops::

        for data, kwargs, kind in read_tiff("cells.ome.tif"):
            viewer.add_layer(napari.layers.Layer.create(data, kwargs, kind))
    """
    from ._io import read_image

    single = _single(path)
    if single is None:
        raise ValueError(f"read_tiff reads one file at a time; got {len(path)} paths")
    array, meta = read_image(single)
    return tiff_layer_data(array, meta, name=_display_stem(Path(single)))


def _display_stem(path: Path) -> str:
    name = path.name
    for ext in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def tiff_layer_data(
    array: np.ndarray, meta: dict[str, Any], *, name: str = "image"
) -> list[LayerDataTuple]:
    """Layer data tuples for an image read by :func:`napari_mpt_deblur._io.read_image`.

    Parameters
    ----------
    array : numpy.ndarray
        The pixels.
    meta : dict
        ``axes`` (``None`` when unknown: inferred from the shape), ``pixel_size_um`` (``(y, x)``
        or ``None``), ``ome_xml``, ``source``.
    name : str
        Layer name (one channel layers get `` [ch<i>]`` appended).

    Returns
    -------
    list of (data, kwargs, "image")
        One tuple, or one per channel when the image has a non-RGB channel axis.
    """
    from ._axes import infer_axes, validate_axes

    axes = meta.get("axes")
    axes = validate_axes(axes, array.ndim) if axes else infer_axes(array.shape)
    pixel = meta.get("pixel_size_um")
    z_um = ome_z_spacing_um(meta.get("ome_xml"))
    rgb = (axes.endswith("C") and array.shape[-1] in (3, 4) and array.dtype == np.uint8)
    base_meta = {
        "source": meta.get("source"),
        "pixel_size_um": tuple(pixel) if pixel else None,
        "file_axes": axes,
    }

    def spatial(layer_axes: str) -> dict[str, Any]:
        scale, units = [], []
        for letter in layer_axes:
            if letter == "Y" and pixel:
                scale.append(float(pixel[0]))
                units.append("µm")
            elif letter == "X" and pixel:
                scale.append(float(pixel[1]))
                units.append("µm")
            elif letter == "Z" and z_um:
                scale.append(z_um)
                units.append("µm")
            else:
                scale.append(1.0)
                units.append("pixel")
        return {"scale": tuple(scale), "units": tuple(units),
                "axis_labels": tuple(letter.lower() for letter in layer_axes)}

    if rgb or "C" not in axes:
        layer_axes = axes[:-1] if rgb else axes
        kwargs = {"name": name, "rgb": rgb, "metadata": {**base_meta, "axes": axes},
                  **spatial(layer_axes)}
        return [(array, kwargs, "image")]

    channel_axis = axes.index("C")
    rest = axes.replace("C", "")
    n_channels = array.shape[channel_axis]
    layers = []
    for c in range(n_channels):
        data = np.take(array, c, axis=channel_axis)
        kwargs = {
            "name": f"{name} [ch{c}]",
            "metadata": {**base_meta, "axes": rest, "channel": c},
            "colormap": (_CHANNEL_COLORMAPS[c % len(_CHANNEL_COLORMAPS)]
                         if n_channels > 1 else "gray"),
            "blending": "additive" if n_channels > 1 else "translucent",
            **spatial(rest),
        }
        layers.append((data, kwargs, "image"))
    return layers


def get_checkpoint_reader(
    path: PathOrPaths,
) -> Callable[[PathOrPaths], list[LayerDataTuple]] | None:
    """npe2 ``get_reader``: :func:`read_checkpoints` when every path is a checkpoint file."""
    from .models.catalog import is_checkpoint_path

    paths = list(path) if isinstance(path, (list, tuple)) else [path]
    if not paths or not all(is_checkpoint_path(p) for p in paths):
        return None
    return read_checkpoints


def read_checkpoints(path: PathOrPaths) -> list[LayerDataTuple]:
    """List dropped checkpoint files as models and tell the user; adds no layer.

    Returns
    -------
    list
        ``[(None,)]``, the npe2/napari "handled, no layers" value.

    Raises
    ------
    FileNotFoundError, ValueError
        A file is missing, has the wrong suffix or is a corrupt safetensors file.
    """
    from napari.utils.notifications import show_info

    from .models.catalog import get_catalog

    paths = list(path) if isinstance(path, (list, tuple)) else [path]
    catalog = get_catalog()
    for item in paths:
        entry = catalog.add_checkpoint(item, select=True)
        logger.info("checkpoint %s listed as model %r", item, entry.name)
        show_info(
            f"Model '{entry.name}' is now available in the Defocus Deblur widget (Plugins menu)."
        )
    return [(None,)]
