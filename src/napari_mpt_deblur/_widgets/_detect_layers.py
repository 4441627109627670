"""The detection preview's layers: the plane a run reads, its Points layers, the grid view.

napari models only (no Qt widgets): :func:`plane_index` picks the plane a stack shows,
:func:`apply_points_update` adds or updates the managed ``"<layer> [nuclei]"`` Points layer of
a run (hollow rings where the other image has a matching detection, filled discs where not), and
:class:`DetectionLayout` puts input and deblurred image side by side with their detections.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..detect import DetectionResult
from ..optics_metadata import isotropic_pixel_size_um
from ._compare import ViewerLayout, grid_of, show_panel_title
from ._detect_job import CATEGORY_MATCHED
from ._layers import layer_axes, layer_source_path

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

__all__ = [
    "DEBLURRED_RGB",
    "DETECTION_KEY",
    "INPUT_RGB",
    "NUCLEI_SUFFIX",
    "DetectionLayout",
    "PointsUpdate",
    "apply_points_update",
    "data_coordinates",
    "describe_plane",
    "find_points_layer",
    "pixel_size_from_layer",
    "plane_index",
    "plane_of",
    "points_style",
]

#: Key of the detection provenance in the metadata of the Points layers this widget manages.
#: Deliberately not ``_layers.METADATA_KEY``: that one marks deblurred *images*, and the Deblur
#: widget would take a points layer carrying it for a result of its input.
DETECTION_KEY = "napari_mpt_deblur_detection"
NUCLEI_SUFFIX = " [nuclei]"
#: Magenta and green: the usual colour-blind-safe pair for two-channel overlays.
INPUT_RGB = (1.0, 0.0, 1.0)
DEBLURRED_RGB = (0.0, 0.85, 0.0)
_FILL_ALPHA = 0.6
_BORDER_WIDTH = 0.12  # relative to the point size


# ------------------------------------------------------------------------------------------
# Layers (napari models only, no Qt)
# ------------------------------------------------------------------------------------------
def plane_index(layer: Any, world_point: Any, ndisplay: int = 2) -> dict[int, int]:
    """Index along every non-YX axis of ``layer`` of the plane the viewer shows.

    Unlike :func:`._layers.select_plane`, a position outside the layer is an error, not the
    nearest plane: a single-plane preview must not be compared with another slice of its input.

    Raises
    ------
    ValueError
        For RGB or multiscale layers, in the 3-D view of a stack, or when the viewer's position
        lies outside the layer along one of its stack axes.
    """
    if layer.rgb:
        raise ValueError(
            f"layer {layer.name!r} is RGB; nuclei detection needs one fluorescence channel "
            "(split the channels, e.g. Layers > Split RGB)"
        )
    if layer.multiscale:
        raise ValueError(
            f"layer {layer.name!r} is multiscale (a pyramid); open its full-resolution level as "
            "an image, or use the command line (mpt-deblur detect)"
        )
    axes = layer_axes(layer)
    extra = [i for i, letter in enumerate(axes) if letter not in "YX"]
    if not extra:
        return {}
    if ndisplay == 3:
        raise ValueError(
            f"layer {layer.name!r} is a stack shown in 3-D; switch the viewer to 2-D so that "
            "one slice is shown, and detection runs on that slice"
        )
    point = np.asarray(world_point, dtype=float)[-layer.ndim:]
    position = np.asarray(layer.world_to_data(point), dtype=float)
    shape = np.shape(layer.data)
    index: dict[int, int] = {}
    for axis in extra:
        value = math.floor(position[axis] + 0.5)
        if not 0 <= value < shape[axis]:
            raise ValueError(
                f"layer {layer.name!r} has no plane at the current {axes[axis]} position (it "
                f"covers {shape[axis]} plane(s)); move the {axes[axis]} slider onto one of them"
            )
        index[axis] = int(value)
    return index


def plane_of(layer: Any, index: dict[int, int]) -> Any:
    """The 2-D plane of ``layer.data`` at ``index`` (lazy for dask/zarr data)."""
    return layer.data[tuple(index.get(i, slice(None)) for i in range(layer.ndim))]


def describe_plane(layer: Any, index: dict[int, int]) -> str:
    if not index:
        return ""
    axes = layer_axes(layer)
    return ", ".join(f"{axes[i]}={v}" for i, v in sorted(index.items()))


def pixel_size_from_layer(layer: Any) -> float | None:
    """Pixel size in µm of ``layer``, or ``None`` when unknown.

    From its scale when the Y and X units are lengths, else, at napari's default scale, from
    the TIFF it was opened from; anisotropic pixels give their geometric mean
    (:func:`napari_mpt_deblur.optics_metadata.isotropic_pixel_size_um`).
    """
    try:
        return isotropic_pixel_size_um(tuple(layer.scale), tuple(layer.units),
                                       layer_source_path(layer))
    except Exception:  # odd layers: no size, the user enters it
        logger.debug("could not read the pixel size of %s", layer, exc_info=True)
        return None


def data_coordinates(points: np.ndarray, layer: Any, index: dict[int, int]) -> np.ndarray:
    """(N, 2) plane coordinates -> (N, layer.ndim) data coordinates of ``layer``."""
    coords = np.zeros((points.shape[0], layer.ndim), dtype=np.float64)
    plane_axes = [i for i in range(layer.ndim) if i not in index]
    for axis, value in index.items():
        coords[:, axis] = value
    coords[:, plane_axes[0]] = points[:, 0]
    coords[:, plane_axes[1]] = points[:, 1]
    return coords


def _placement(layer: Any) -> dict[str, Any]:
    """Transform keywords that put a points layer exactly on ``layer``."""
    return {
        "scale": tuple(float(s) for s in layer.scale),
        "translate": tuple(float(t) for t in layer.translate),
        "rotate": np.asarray(layer.rotate),
        "shear": np.asarray(layer.shear),
        "affine": np.asarray(layer.affine.affine_matrix),
        "units": tuple(layer.units),
        "axis_labels": tuple(layer.axis_labels),
    }


def points_style(categories: list[str], rgb: tuple[float, float, float],
           result: DetectionResult) -> dict[str, Any]:
    """Per-point size, colours and features: hollow where matched, filled where not."""
    import pandas as pd

    n = len(categories)
    border = np.tile([*rgb, 1.0], (n, 1))
    face = np.zeros((n, 4))
    unmatched = np.array([c != CATEGORY_MATCHED for c in categories], dtype=bool)
    face[unmatched] = [*rgb, _FILL_ALPHA]
    features = pd.DataFrame({
        "category": pd.Series(categories, dtype=object),
        "score": np.asarray(result.scores, dtype=np.float64),
        "diameter_px": np.asarray(result.diameters_px, dtype=np.float64),
    })
    return {"size": np.asarray(result.diameters_px, dtype=np.float64), "face_color": face,
            "border_color": border, "features": features}


@dataclass
class PointsUpdate:
    """What one managed Points layer should show after a run."""

    source: Any
    name: str
    coords: np.ndarray
    style: dict[str, Any]
    metadata: dict[str, Any]


def find_points_layer(layers: Any, source_name: str, role: str) -> Any:
    from napari.layers import Points

    found = None
    for layer in layers:
        meta = (getattr(layer, "metadata", None) or {}).get(DETECTION_KEY)
        if (isinstance(layer, Points) and isinstance(meta, dict)
                and meta.get("source") == source_name and meta.get("role") == role):
            found = layer
    return found


def apply_points_update(viewer: Any, update: PointsUpdate, role: str) -> tuple[Any, bool]:
    """Update the managed layer in place, or add it; returns ``(layer, added)``."""
    layers = viewer.layers
    existing = find_points_layer(layers, update.source.name, role)
    placement = _placement(update.source)
    n = update.coords.shape[0]
    if existing is None:
        kwargs: dict[str, Any] = {
            "name": update.name, "ndim": update.source.ndim, "symbol": "disc",
            "border_width": _BORDER_WIDTH, "border_width_is_relative": True,
            "out_of_slice_display": False, "metadata": {DETECTION_KEY: update.metadata},
            **placement,
        }
        if n:
            kwargs.update(update.style)
        else:
            kwargs["features"] = update.style["features"]
        return viewer.add_points(update.coords, **kwargs), True
    for key, value in placement.items():
        if key != "units" and key != "axis_labels":
            setattr(existing, key, value)
    existing.data = update.coords
    existing.features = update.style["features"]
    if n:
        existing.size = update.style["size"]
        existing.face_color = update.style["face_color"]
        existing.border_color = update.style["border_color"]
    existing.metadata = {**dict(existing.metadata), DETECTION_KEY: update.metadata}
    return existing, False


class DetectionLayout:
    """Input and deblurred image side by side, each with its own detections on top.

    napari's grid puts ``stride`` consecutive layers into one panel, so the four layers are
    moved to the bottom of the list as ``input, input points, deblurred, deblurred points`` and
    shown with stride 2; everything else is hidden. :meth:`restore` puts the layer order,
    visibility and grid settings back.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self._saved: ViewerLayout | None = None

    @property
    def active(self) -> bool:
        """True while the side-by-side layout is shown."""
        return self._saved is not None

    def show(self, panels: list[tuple[Any, Any]]) -> None:
        """Show every ``(image, points)`` pair in a panel of its own, left to right."""
        self.restore()
        layers = self._viewer.layers
        self._saved = ViewerLayout.capture(self._viewer)
        flat = [layer for panel in panels for layer in panel]
        for target, layer in enumerate(flat):
            index = layers.index(layer)
            if index != target:
                layers.move(index, target)
        for layer in layers:
            layer.visible = any(layer == shown for shown in flat)
        for image, _ in panels:  # panel titles: which image is which
            show_panel_title(image)
        grid = grid_of(self._viewer)
        grid.stride = 2
        grid.shape = (1, len(panels))
        grid.enabled = True
        self._viewer.reset_view()

    def restore(self) -> None:
        """Back to the layout from before :meth:`show` (layers added since stay on top)."""
        if self._saved is None:
            return
        saved, self._saved = self._saved, None
        saved.restore(self._viewer)
