"""napari layers in and out of the deblurring engine (no Qt here).

Everything the widget and the Layers → Filter command need to turn an image layer into an
engine call (axes, the current plane) and a result back into a layer that sits exactly on top of
its input (scale, translate, units, axis labels, contrast) with its provenance in
``layer.metadata["napari_mpt_deblur"]``.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

__all__ = [
    "METADATA_KEY",
    "OUTPUT_SUFFIX",
    "PREVIEW_SUFFIX",
    "PlaneSelection",
    "find_result_layer",
    "input_of_result",
    "layer_axes",
    "layer_source_path",
    "make_provenance",
    "output_name",
    "region_of_input",
    "result_contrast_limits",
    "result_key",
    "result_layer_kwargs",
    "select_plane",
    "stack_axes",
]

#: Key of the provenance dict in a result layer's ``metadata``.
METADATA_KEY = "napari_mpt_deblur"
OUTPUT_SUFFIX = " [deblurred]"
PREVIEW_SUFFIX = " [deblurred preview]"

_LABEL_LETTERS = {
    "t": "T", "time": "T", "z": "Z", "depth": "Z", "c": "C", "channel": "C", "ch": "C",
    "y": "Y", "x": "X", "q": "Q",
}
_STACK_LETTERS = {0: "", 1: "Z", 2: "TZ", 3: "QTZ"}


def layer_axes(layer: napari.layers.Image) -> str:
    """Axes string of ``layer.data``, e.g. ``"YX"``, ``"ZYX"``, ``"TZYX"``, ``"YXC"`` (RGB).

    Axis labels such as ``("t", "z", "y", "x")`` (what this plugin's reader sets) are used when
    every label is a known letter; otherwise the last two axes are Y and X and leading axes are
    stacks (Z, then T), never channels: napari shows channels as separate layers.
    """
    labels = [str(label).strip().lower() for label in layer.axis_labels]
    letters = [_LABEL_LETTERS.get(label) for label in labels]
    if all(letters) and len(set(letters)) == len(letters) and {"Y", "X"} <= set(letters):
        axes = "".join(letters)  # type: ignore[arg-type]
    else:
        n_stack = layer.ndim - 2
        if n_stack not in _STACK_LETTERS:
            raise ValueError(
                f"layer {layer.name!r} has {layer.ndim} dimensions; label its axes "
                "(e.g. axis_labels=('t', 'z', 'c', 'y', 'x')) so the planes can be found"
            )
        axes = _STACK_LETTERS[n_stack] + "YX"
    return axes + ("C" if layer.rgb else "")


def layer_source_path(layer: Any) -> str | None:
    """The file napari opened ``layer`` from (``layer.source.path``), or ``None``.

    Kept for reading what napari's built-in reader drops (a TIFF's pixel size and OME-XML).
    """
    path = getattr(getattr(layer, "source", None), "path", None)
    return str(path) if isinstance(path, (str, os.PathLike)) and str(path) else None


def stack_axes(axes: str) -> list[int]:
    """Positions of the axes that are iterated over (everything except Y, X and C)."""
    return [i for i, a in enumerate(axes) if a not in "YXC"]


@dataclass(frozen=True)
class PlaneSelection:
    """One plane of a stack: data index along every stack axis.

    Attributes
    ----------
    index : dict[int, int]
        Axis position in ``layer.data`` -> index along it.
    axes : str
        The layer's axes string.
    """

    index: dict[int, int]
    axes: str

    def slices(self, ndim: int) -> tuple[slice, ...]:
        """Slices that keep every dimension (length 1 along the stack axes)."""
        return tuple(
            slice(self.index[i], self.index[i] + 1) if i in self.index else slice(None)
            for i in range(ndim)
        )

    def describe(self) -> dict[str, int]:
        """``{"Z": 12, "T": 3}``: for provenance and messages."""
        return {self.axes[i]: int(v) for i, v in sorted(self.index.items())}


def select_plane(layer: napari.layers.Image, world_point: tuple[float, ...]) -> PlaneSelection:
    """The plane of ``layer`` that the viewer shows at ``world_point`` (``viewer.dims.point``)."""
    axes = layer_axes(layer)
    point = np.asarray(world_point, dtype=float)[-layer.ndim :]
    data_pos = np.asarray(layer.world_to_data(point), dtype=float)
    shape = np.shape(_base_data(layer))
    index = {}
    for axis in stack_axes(axes):
        value = data_pos[axis] if axis < len(data_pos) else 0.0
        index[axis] = int(np.clip(math.floor(value + 0.5), 0, shape[axis] - 1))
    return PlaneSelection(index, axes)


def _base_data(layer: napari.layers.Image) -> Any:
    return layer.data[0] if layer.multiscale else layer.data


def output_name(input_name: str, preview: bool = False) -> str:
    """``"<input> [deblurred]"``, or ``"<input> [deblurred preview]"`` for one plane."""
    return f"{input_name}{PREVIEW_SUFFIX if preview else OUTPUT_SUFFIX}"


def result_key(input_name: str, model_id: str, scope: str) -> str:
    """Identity of a result: re-running with the same input, model and scope updates it."""
    return f"{input_name}|{model_id}|{scope}"


def find_result_layer(layers: Any, key: str) -> napari.layers.Image | None:
    """The last layer whose provenance has ``key`` (``None`` when there is none)."""
    found = None
    for layer in layers:
        meta = getattr(layer, "metadata", None) or {}
        if isinstance(meta.get(METADATA_KEY), dict) and meta[METADATA_KEY].get("key") == key:
            found = layer
    return found


def same_layer(a: Any, b: Any) -> bool:
    """Same layer (``==``, not ``is``: napari hands plugins proxies, a new one per access)."""
    return a is not None and b is not None and a == b


def is_comparison_layer(layer: Any) -> bool:
    """True for the temporary layers the comparison view adds (and removes again)."""
    meta = getattr(layer, "metadata", None) or {}
    return "comparison" in meta and METADATA_KEY not in meta


def image_choices(layers: Any) -> list[tuple[str, Any]]:
    """The image layers a dock offers as its input, as ``(name, layer)`` picker choices: every
    Image layer but the comparison view's temporary ones."""
    from napari.layers import Image

    return [(layer.name, layer) for layer in layers
            if isinstance(layer, Image) and not is_comparison_layer(layer)]


def input_of_result(layers: Any, result: Any) -> Any | None:
    """The input layer that ``result`` was computed from, when it is still in ``layers``."""
    meta = (getattr(result, "metadata", None) or {}).get(METADATA_KEY)
    if not isinstance(meta, dict):
        return None
    for layer in layers:
        if layer.name == meta.get("input") and not layer == result:
            return layer
    return None


def region_of_input(input_layer: napari.layers.Image, result: napari.layers.Image) -> np.ndarray:
    """The input pixels that ``result`` covers (the same plane for a preview), as an array."""
    meta = result.metadata.get(METADATA_KEY, {})
    base = _base_data(input_layer)
    if meta.get("slice") is None:
        data = np.asarray(base)
    else:
        axes = meta.get("axes") or layer_axes(input_layer)
        index = {axes.index(letter): int(v) for letter, v in meta["slice"].items()}
        data = np.asarray(base[PlaneSelection(index, axes).slices(np.ndim(base))])
    if data.shape != np.shape(result.data):
        raise ValueError(
            f"layer {result.name!r} has shape {np.shape(result.data)} but the matching part of "
            f"{input_layer.name!r} has shape {data.shape}; was the input changed since?"
        )
    return data


def _sample(array: np.ndarray, max_samples: int = 1_000_000) -> np.ndarray:
    flat = np.asarray(array).reshape(-1)
    if flat.size > max_samples:
        flat = flat[:: math.ceil(flat.size / max_samples)]
    return flat[np.isfinite(flat)] if flat.dtype.kind == "f" else flat


def result_contrast_limits(
    input_limits: tuple[float, float], result: np.ndarray, *, tolerance: float = 0.01
) -> tuple[float, float]:
    """Display range for a result, starting from the input's limits.

    The engine returns the input's units, so the input's contrast limits are the honest default:
    equal values look equal in both layers. Deblurring concentrates light into higher peaks,
    though, so when more than ``tolerance`` of the result would saturate at either end, that
    end moves to the result's 0.1 / 99.9 percentile.
    """
    lo, hi = (float(v) for v in input_limits)
    sample = _sample(result)
    if sample.size == 0:
        return lo, hi
    if float(np.mean(sample > hi)) > tolerance:
        hi = max(hi, float(np.percentile(sample, 99.9)))
    if float(np.mean(sample < lo)) > tolerance:
        lo = min(lo, float(np.percentile(sample, 0.1)))
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def _linear_offset(layer: napari.layers.Image, index: dict[int, int]) -> np.ndarray:
    """World offset (before ``affine``) of moving ``index`` pixels along the stack axes."""
    from napari.utils.transforms import CompositeAffine

    ndim = layer.ndim
    step = np.zeros(ndim)
    for axis, value in index.items():
        if axis < ndim:
            step[axis] = value
    transform = CompositeAffine(
        scale=layer.scale, translate=np.zeros(ndim), rotate=layer.rotate, shear=layer.shear,
        ndim=ndim,
    )
    return np.asarray(transform(step)) - np.asarray(transform(np.zeros(ndim)))


def result_layer_kwargs(
    input_layer: napari.layers.Image,
    result: np.ndarray,
    *,
    provenance: dict[str, Any],
    plane: PlaneSelection | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``viewer.add_image(result, **kwargs)``.

    The result lands on its input: same scale, rotation, shear, affine, units and axis labels;
    a single-plane preview is translated to the plane it came from, so it shows only there.
    """
    translate = np.asarray(input_layer.translate, dtype=float)
    if plane is not None:
        translate = translate + _linear_offset(input_layer, plane.index)
    limits = result_contrast_limits(tuple(input_layer.contrast_limits), result)
    metadata = {k: v for k, v in dict(input_layer.metadata).items() if k != METADATA_KEY}
    metadata[METADATA_KEY] = provenance
    kwargs: dict[str, Any] = {
        "name": output_name(input_layer.name, preview=plane is not None),
        "scale": tuple(float(s) for s in input_layer.scale),
        "translate": tuple(float(t) for t in translate),
        "rotate": np.asarray(input_layer.rotate),
        "shear": np.asarray(input_layer.shear),
        "affine": np.asarray(input_layer.affine.affine_matrix),
        "units": tuple(input_layer.units),
        "axis_labels": tuple(input_layer.axis_labels),
        "rgb": bool(input_layer.rgb),
        "contrast_limits": limits,
        "gamma": float(input_layer.gamma),
        "blending": str(input_layer.blending),
        "metadata": metadata,
    }
    if not input_layer.rgb:
        kwargs["colormap"] = input_layer.colormap
    return kwargs


def make_provenance(
    *,
    input_name: str,
    axes: str,
    entry: dict[str, Any],
    model_info: dict[str, Any],
    report: dict[str, Any],
    plane: PlaneSelection | None,
) -> dict[str, Any]:
    """The ``metadata["napari_mpt_deblur"]`` dict of a result layer (JSON-friendly)."""
    from .. import __version__

    sha = model_info.get("sha256")
    model_id = sha or f"{entry.get('kind')}:{entry.get('name')}"
    scope = "slice" if plane is not None else "stack"
    return {
        "key": result_key(input_name, model_id, scope),
        "input": input_name,
        "axes": axes,
        "scope": scope,
        "slice": plane.describe() if plane is not None else None,
        "model": entry.get("name"),
        "model_name": model_info.get("name"),
        "model_kind": entry.get("kind"),
        "model_source": entry.get("source"),
        "checkpoint_sha256": sha,
        "device": report.get("device"),
        "tile": report.get("tile"),
        "overlap": report.get("overlap"),
        "n_tiles": report.get("n_tiles"),
        "planes": report.get("planes"),
        "ensemble": int(report.get("ensemble", 1)),
        "seconds": round(float(report.get("seconds", 0.0)), 3),
        "clipped_low": int(report.get("clipped_low", 0)),
        "clipped_high": int(report.get("clipped_high", 0)),
        "retries": list(report.get("retries", [])),
        "optics": report.get("optics"),  # what the model was offered, and whether it used it
        "optics_used": bool(report.get("optics_used", False)),
        "plugin_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
