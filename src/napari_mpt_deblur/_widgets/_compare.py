"""Compare an input and its deblurred result: side by side, swipe, difference.

:class:`CompareView` is the logic over a viewer (no Qt widgets): it remembers the viewer's state
(grid, visibility, contrast), arranges the two layers, and puts everything back on
:meth:`CompareView.restore`. :class:`CompareWidget` is the row of buttons the Defocus Deblur
widget shows.

* **Side by side**: napari's grid with one row of two panels. The grid draws all panels with one
  camera, so zoom and pan stay in sync by construction.
* **Swipe**: input and result overlaid; the result is shown right of a movable split (a
  zero-copy view of its columns), so the same pixels are compared at the boundary.
* **Difference**: a third panel with ``result - input`` in a diverging colormap, symmetric
  around zero.

"Link contrast" gives input and result the same contrast limits and keeps them equal while the
user drags either, which is what makes brightness comparable (the engine returns the input's
units). It is not applied to the difference, whose units are signed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, Container, FloatSlider, Label, PushButton

from ._layers import is_comparison_layer, region_of_input

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

__all__ = ["CompareView", "CompareWidget", "ViewerLayout", "grid_of", "is_comparison_layer",
           "show_panel_title"]

SWIPE_SUFFIX = " [swipe]"
SWIPE_LINE_SUFFIX = " [swipe line]"
DIFFERENCE_SUFFIX = " [difference]"
PANEL_TITLE_FONT_SIZE = 8


class CompareView:
    """Arrange an input layer and its result for comparison, and undo it.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer whose layout is changed.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self._saved: ViewerLayout | None = None
        self._saved_contrast: list[tuple[Any, tuple[float, float]]] = []
        self._temporary: list[Any] = []
        self._unlink: list[Callable[[], None]] = []
        self._pair: tuple[Any, Any] | None = None
        self._swipe_layer: Any = None
        self._swipe_line: Any = None
        self.mode: str | None = None

    @property
    def active(self) -> bool:
        """True while a comparison layout is shown."""
        return self._saved is not None

    # ------------------------------------------------------------------ modes
    def side_by_side(self, input_layer: Any, result: Any, *, link_contrast: bool = True) -> None:
        """Input left, result right, one shared camera."""
        self._begin(input_layer, result, link_contrast)
        self._show_only(input_layer, result)
        self._grid(input_layer, result)
        self.mode = "side_by_side"

    def swipe(self, input_layer: Any, result: Any, position: float = 0.5, *,
              link_contrast: bool = True) -> None:
        """Overlay: input everywhere, result right of ``position`` (0 = left edge, 1 = right)."""
        self._begin(input_layer, result, link_contrast)
        grid_of(self._viewer).enabled = False
        layer = self._viewer.add_image(
            self._swipe_data(result, 0), name=result.name + SWIPE_SUFFIX,
            metadata={"comparison": "swipe"}, **_display_kwargs(result),
        )
        self._temporary.append(layer)
        self._swipe_layer = layer
        self._unlink.append(_link_contrast(result, layer))
        shown = [input_layer, layer]
        if _is_plain_2d(result):  # a divider line; in n-D it would need a slice of its own
            height, width = _height(result) * result.scale[0], _width(result) * result.scale[1]
            self._swipe_line = self._viewer.add_shapes(
                [self._divider(result, 0)], shape_type="line", edge_color="yellow",
                edge_width=max(height, width) / 400.0, opacity=0.8,
                name=result.name + SWIPE_LINE_SUFFIX, metadata={"comparison": "swipe line"},
                units=tuple(result.units),
            )
            self._temporary.append(self._swipe_line)
            shown.append(self._swipe_line)
        self._show_only(*shown)
        self._viewer.layers.selection.active = input_layer  # its contrast drives both (linked)
        self.mode = "swipe"
        self.set_swipe_position(position)

    def set_swipe_position(self, position: float) -> None:
        """Move the swipe split (fraction of the image width)."""
        if self.mode != "swipe" or self._swipe_layer is None or self._pair is None:
            return
        _, result = self._pair
        width = _width(result)
        column = round(float(np.clip(position, 0.0, 1.0)) * width)
        column = min(column, width - 1)
        layer = self._swipe_layer
        offset = _column_offset(result, column)
        layer.data = self._swipe_data(result, column)
        layer.translate = tuple(np.asarray(result.translate, dtype=float) + offset)
        if self._swipe_line is not None:
            self._swipe_line.data = [self._divider(result, column)]

    @staticmethod
    def _divider(result: Any, column: int) -> np.ndarray:
        """World coordinates of a vertical line at ``column`` over the whole image height."""
        (sy, sx), (ty, tx) = result.scale, result.translate
        x = tx + (column - 0.5) * sx
        return np.array([[ty - 0.5 * sy, x], [ty + (_height(result) - 0.5) * sy, x]])

    def difference(self, input_layer: Any, result: Any) -> Any:
        """Input, result and ``result - input`` side by side; returns the difference layer."""
        reference = region_of_input(input_layer, result).astype(np.float32)
        diff = np.asarray(result.data, dtype=np.float32) - reference
        self._begin(input_layer, result, link_contrast=True)
        finite = np.abs(diff[np.isfinite(diff)])
        bound = float(np.percentile(finite, 99.5)) if finite.size else 1.0
        bound = bound if bound > 0 else 1.0
        kwargs = _display_kwargs(result)
        kwargs.update(colormap="PiYG", contrast_limits=(-bound, bound), gamma=1.0,
                      blending="translucent", rgb=False)
        if result.rgb:
            diff = diff.mean(axis=-1)
        layer = self._viewer.add_image(
            diff, name=result.name + DIFFERENCE_SUFFIX,
            metadata={"comparison": "difference", "formula": "result - input"}, **kwargs,
        )
        self._temporary.append(layer)
        self._show_only(input_layer, result, layer)
        self._grid(input_layer, result, layer)
        self.mode = "difference"
        return layer

    def restore(self) -> None:
        """Back to the layout, visibility and contrast from before the comparison."""
        if self._saved is None:
            return
        for unlink in self._unlink:
            unlink()
        self._unlink.clear()
        layers = self._viewer.layers
        for layer in self._temporary:
            if layer in layers:
                layers.remove(layer)
        self._temporary.clear()
        self._swipe_layer = self._swipe_line = None
        saved, self._saved = self._saved, None
        saved.restore(self._viewer)
        for layer, limits in self._saved_contrast:
            if layer in layers:
                _set_limits(layer, limits)
        self._saved_contrast = []
        self._pair = None
        self.mode = None

    # ------------------------------------------------------------------ helpers
    def _begin(self, input_layer: Any, result: Any, link_contrast: bool) -> None:
        if input_layer is None or result is None:
            raise ValueError("comparing needs an input layer and its deblurred result")
        self.restore()
        self._saved = ViewerLayout.capture(self._viewer)
        self._saved_contrast = [(layer, tuple(layer.contrast_limits))
                                for layer in (input_layer, result)]
        self._pair = (input_layer, result)
        if link_contrast and not input_layer.rgb and not result.rgb:
            _set_limits(result, tuple(input_layer.contrast_limits))
            self._unlink.append(_link_contrast(input_layer, result))

    def _show_only(self, *shown: Any) -> None:
        for layer in self._viewer.layers:
            layer.visible = any(layer == s for s in shown)

    def _grid(self, *panels: Any) -> None:
        for layer in panels:
            show_panel_title(layer)
        layers = self._viewer.layers
        order = [layers.index(p) for p in panels]
        grid = grid_of(self._viewer)
        grid.stride = 1 if order == sorted(order) else -1
        if grid.stride == -1 and order != sorted(order, reverse=True):
            # neither order works: move the panels to the top, in the wanted order
            for layer in panels:
                layers.move(layers.index(layer), len(layers))
            grid.stride = 1
        grid.shape = (1, len(panels))
        grid.enabled = True
        self._viewer.reset_view()

    @staticmethod
    def _swipe_data(result: Any, column: int) -> np.ndarray:
        data = result.data
        return data[..., column:, :] if result.rgb else data[..., column:]


@dataclass(frozen=True)
class ViewerLayout:
    """The grid, layer order, visibility, selection and camera a temporary layout changes.

    Comparison and detection views rearrange the user's viewer (and reset its zoom to fit the
    grid); taking one of these first is what lets them put it back exactly, even after layers
    were removed in between: the user returns to the same layer selection and the same zoomed
    region they were looking at.
    """

    grid_enabled: bool
    grid_shape: tuple[int, ...]
    grid_stride: int
    visible: tuple[tuple[Any, bool], ...]
    order: tuple[Any, ...]
    name_shown: tuple[tuple[Any, bool], ...] = ()
    selected: tuple[Any, ...] = ()
    active: Any = None
    camera: tuple[tuple[float, ...], float] | None = None

    @classmethod
    def capture(cls, viewer: Any) -> ViewerLayout:
        grid, layers = grid_of(viewer), viewer.layers
        camera = viewer.camera
        return cls(grid_enabled=bool(grid.enabled), grid_shape=tuple(grid.shape),
                   grid_stride=int(grid.stride),
                   visible=tuple((layer, bool(layer.visible)) for layer in layers),
                   order=tuple(layers),
                   name_shown=tuple((layer, _name_shown(layer)) for layer in layers),
                   selected=tuple(layers.selection), active=layers.selection.active,
                   camera=(tuple(float(c) for c in camera.center), float(camera.zoom)))

    def restore(self, viewer: Any) -> None:
        """Put the layout back; layers removed since are skipped, layers added since stay on top."""
        grid, layers = grid_of(viewer), viewer.layers
        grid.enabled = False  # change shape and stride while the grid is off: one redraw
        grid.shape, grid.stride = self.grid_shape, self.grid_stride
        grid.enabled = self.grid_enabled
        for layer, visible in self.visible:
            if layer in layers:
                layer.visible = visible
        for layer, shown in self.name_shown:
            if layer in layers:
                show_panel_title(layer, shown)
        present = [layer for layer in self.order if layer in layers]
        for target, layer in enumerate(present):
            index = layers.index(layer)
            if index != target:
                layers.move(index, target)
        selected = [layer for layer in self.selected if layer in layers]
        if selected or self.selected:
            layers.selection.clear()
            layers.selection.update(selected)
            if self.active is not None and self.active in layers:
                layers.selection.active = self.active
        if self.camera is not None:
            center, zoom = self.camera
            viewer.camera.center = center
            viewer.camera.zoom = zoom


def _name_shown(layer: Any) -> bool:
    overlay = getattr(layer, "name_overlay", None)
    return bool(overlay.visible) if overlay is not None else False


def show_panel_title(layer: Any, shown: bool = True) -> None:
    """Show (or hide) ``layer``'s name in the corner of its grid panel (napari >= 0.6).

    Grid panels have no titles of their own; the layer name says which panel is the input and
    which the ``[deblurred]`` result or the ``[difference]``. A no-op on older napari.
    """
    overlay = getattr(layer, "name_overlay", None)
    if overlay is None:
        return
    overlay.visible = bool(shown)
    if shown and hasattr(overlay, "box"):
        overlay.box = True
    if shown and hasattr(overlay, "font_size"):
        # three panels side by side on a 1920-px screen: long result names must still fit
        overlay.font_size = min(overlay.font_size, PANEL_TITLE_FONT_SIZE)


def grid_of(viewer: Any) -> Any:
    """The viewer's grid settings: ``viewer.canvas.grid`` (napari >= 0.9) or ``viewer.grid``."""
    canvas = getattr(viewer, "canvas", None)
    grid = getattr(canvas, "grid", None)
    return grid if grid is not None else viewer.grid


def _height(layer: Any) -> int:
    shape = np.shape(layer.data)
    return int(shape[-3] if layer.rgb else shape[-2])


def _is_plain_2d(layer: Any) -> bool:
    """2-D, and placed by scale and translate only (no rotation, shear or affine)."""
    return (layer.ndim == 2 and np.allclose(layer.rotate, np.eye(2))
            and np.allclose(layer.shear, 0) and np.allclose(layer.affine.affine_matrix, np.eye(3)))


def _width(layer: Any) -> int:
    shape = np.shape(layer.data)
    return int(shape[-2] if layer.rgb else shape[-1])


def _column_offset(layer: Any, column: int) -> np.ndarray:
    """World offset (before ``affine``) of ``column`` pixels along the layer's last axis."""
    from napari.utils.transforms import CompositeAffine

    ndim = layer.ndim
    step = np.zeros(ndim)
    step[-1] = column
    transform = CompositeAffine(scale=layer.scale, translate=np.zeros(ndim),
                                rotate=layer.rotate, shear=layer.shear, ndim=ndim)
    return np.asarray(transform(step)) - np.asarray(transform(np.zeros(ndim)))


def _display_kwargs(layer: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "scale": tuple(layer.scale),
        "translate": tuple(layer.translate),
        "rotate": np.asarray(layer.rotate),
        "shear": np.asarray(layer.shear),
        "affine": np.asarray(layer.affine.affine_matrix),
        "units": tuple(layer.units),
        "axis_labels": tuple(layer.axis_labels),
        "rgb": bool(layer.rgb),
        "contrast_limits": tuple(layer.contrast_limits),
        "gamma": float(layer.gamma),
        "blending": str(layer.blending),
    }
    if not layer.rgb:
        kwargs["colormap"] = layer.colormap
    return kwargs


def _set_limits(layer: Any, limits: tuple[float, float]) -> None:
    lo, hi = (float(v) for v in limits)
    range_lo, range_hi = (float(v) for v in layer.contrast_limits_range)
    if lo < range_lo or hi > range_hi:
        layer.contrast_limits_range = (min(lo, range_lo), max(hi, range_hi))
    layer.contrast_limits = (lo, hi)


def _link_contrast(a: Any, b: Any) -> Callable[[], None]:
    """Keep ``b``'s contrast limits equal to ``a``'s and back; returns the function that unlinks."""
    busy = [False]

    def copy(source: Any, target: Any) -> Callable[[Any], None]:
        def handler(event: Any = None) -> None:
            if busy[0]:
                return
            busy[0] = True
            try:
                _set_limits(target, tuple(source.contrast_limits))
            finally:
                busy[0] = False

        return handler

    forward, backward = copy(a, b), copy(b, a)
    a.events.contrast_limits.connect(forward)
    b.events.contrast_limits.connect(backward)

    def unlink() -> None:
        a.events.contrast_limits.disconnect(forward)
        b.events.contrast_limits.disconnect(backward)

    return unlink


class CompareWidget(Container):
    """Buttons for :class:`CompareView`, acting on the pair that ``get_pair`` returns.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer.
    get_pair : callable
        Returns ``(input_layer, result_layer)``; either may be ``None`` when there is nothing to
        compare yet.
    """

    def __init__(self, viewer: napari.viewer.Viewer,
                 get_pair: Callable[[], tuple[Any, Any]]) -> None:
        super().__init__(labels=False)
        self._view = CompareView(viewer)
        self._get_pair = get_pair
        self._title = Label(value="<b>Compare</b>")
        self._side_by_side = PushButton(text="Side by side")
        self._swipe = PushButton(text="Swipe")
        self._difference = PushButton(text="Difference")
        self._normal_view = PushButton(text="Normal view")
        self._swipe_position = FloatSlider(value=0.5, min=0.0, max=1.0, step=0.01,
                                           label="Swipe split")
        self._swipe_label = Label(value="Split (input | deblurred)")
        # label above the slider, so the slider gets the dock's whole width to drag in
        self._swipe_row = Container(layout="vertical", labels=False, visible=False,
                                    widgets=[self._swipe_label, self._swipe_position])
        self._swipe_row.margins = (0, 0, 0, 0)
        self._link_contrast = CheckBox(value=True, text="Link contrast")
        self._side_by_side.tooltip = "Input and result in a grid; zoom and pan stay in sync"
        self._swipe.tooltip = "Input under the result; drag the slider to move the split"
        self._difference.tooltip = "Adds result − input (pink: darker, green: brighter)"
        self._normal_view.tooltip = "Back to the view from before the comparison"
        self._link_contrast.tooltip = "Same contrast limits on input and result"
        self._swipe_position.tooltip = self._swipe_label.tooltip = (
            "Where the split lies: the input is shown left of it, the deblurred result right")
        buttons = Container(layout="horizontal", labels=False,
                            widgets=[self._side_by_side, self._swipe, self._difference])
        buttons.margins = (0, 0, 0, 0)
        row = Container(layout="horizontal", labels=False,
                        widgets=[self._link_contrast, self._normal_view])
        row.margins = (0, 0, 0, 0)
        self.extend([self._title, buttons, self._swipe_row, row])
        self._side_by_side.changed.connect(self.show_side_by_side)
        self._swipe.changed.connect(self.show_swipe)
        self._difference.changed.connect(self.show_difference)
        self._normal_view.changed.connect(self.show_normal)
        self._swipe_position.changed.connect(self._view.set_swipe_position)
        self.update_enabled()

    @property
    def view(self) -> CompareView:
        """The comparison logic (for scripts and tests)."""
        return self._view

    def update_enabled(self) -> None:
        """Enable the buttons only when there is a pair to compare."""
        source, result = self._get_pair()
        ready = source is not None and result is not None
        for button in (self._side_by_side, self._swipe, self._difference):
            button.enabled = ready
        self._normal_view.enabled = self._view.active

    def show_side_by_side(self) -> None:
        """Grid of input and result."""
        self._run(lambda a, b: self._view.side_by_side(a, b, link_contrast=self._link))

    def show_swipe(self) -> None:
        """Swipe between input and result."""
        self._run(lambda a, b: self._view.swipe(a, b, self._swipe_position.value,
                                                link_contrast=self._link))

    def show_difference(self) -> None:
        """Input, result and their difference."""
        self._run(self._view.difference)

    def show_normal(self) -> None:
        """Undo the comparison layout."""
        self._view.restore()
        self._after()

    @property
    def _link(self) -> bool:
        return bool(self._link_contrast.value)

    def _run(self, action: Callable[[Any, Any], Any]) -> None:
        from napari.utils.notifications import show_warning

        source, result = self._get_pair()
        if source is None or result is None:
            show_warning("Deblur an image first: there is no result to compare.")
            return
        try:
            action(source, result)
        except ValueError as exc:
            self._view.restore()
            show_warning(f"Cannot compare: {exc}")
        self._after()

    def _after(self) -> None:
        self._swipe_row.visible = self._view.mode == "swipe"
        self.update_enabled()
