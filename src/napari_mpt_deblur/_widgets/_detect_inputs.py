"""What the Detection preview detects on, as plain functions: the pair, detector and planes.

The dock (:mod:`._detect`) only asks these and shows the answers: which (input, deblurred)
pair of layers to pre-select (:func:`default_pair`, :func:`nuclear_input`: a nuclear stain
first, since the detector looks for nuclei), which detectors this installation offers
(:func:`method_choices`), and the planes to compare cut out of both layers with the request for
the worker (:func:`prepare_detection`). Everything here works on napari's layer list and
layers and builds no widget, so tests call it with a bare ``napari.components.LayerList``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..detect import DetectionConfig
from ._detect_job import DetectionRequest, stain_hint
from ._detect_layers import describe_plane, plane_index, plane_of
from ._layers import OUTPUT_SUFFIX, PREVIEW_SUFFIX, image_choices, input_of_result, same_layer

__all__ = ["METHOD_LABELS", "PreparedDetection", "default_pair", "is_nuclear", "method_choices",
           "nuclear_input", "prepare_detection", "result_pairs", "source_of"]

#: The detectors' names in the Method picker.
METHOD_LABELS = {
    "log": "blob LoG",
    "watershed": "threshold + watershed",
    "stardist": "StarDist (local weights)",
    "cellpose": "Cellpose (local weights)",
}


def method_choices() -> list[tuple[str, str]]:
    """The classical detectors, plus StarDist/Cellpose when their packages are installed."""
    choices = [(METHOD_LABELS["log"], "log"), (METHOD_LABELS["watershed"], "watershed")]
    for method in ("stardist", "cellpose"):
        if importlib.util.find_spec(method) is not None:
            choices.append((METHOD_LABELS[method], method))
    return choices


def is_nuclear(layer: Any) -> bool:
    """The layer's name or metadata names a nuclear stain."""
    return stain_hint(layer.name, getattr(layer, "metadata", None)) is True


def source_of(layers: Any, layer: Any) -> Any:
    """The input a deblurred image came from: provenance first, then the name."""
    source = input_of_result(layers, layer)
    if source is not None:
        return source
    for suffix in (OUTPUT_SUFFIX, PREVIEW_SUFFIX):
        if layer.name.endswith(suffix):
            name = layer.name[: -len(suffix)]
            if name in layers:
                return layers[name]
    return None


def result_pairs(layers: Any) -> list[tuple[Any, Any]]:
    """Every (input, deblurred) pair of image layers, in layer order of the deblurred one."""
    images = [layer for _, layer in image_choices(layers)]
    pairs = []
    for layer in images:
        source = source_of(layers, layer)
        if source is not None and any(source == image for image in images):
            pairs.append((source, layer))
    return pairs


def default_pair(layers: Any, active: Any) -> tuple[Any, Any]:
    """The (input, deblurred) pair to pre-select (either may be ``None``).

    Preference: a pair whose input is named or described as a nuclear stain (Hoechst,
    DAPI...: see :func:`~._detect_job.stain_hint`), then the ``active`` layer's pair, then the
    latest full run; without any pair, a nuclear-stain layer (a visible one first: hidden ones
    are usually in-focus references), else the active or last image, with no deblurred layer.
    """
    pairs = result_pairs(layers)
    nuclear = [p for p in pairs if is_nuclear(p[0])]
    chosen = nuclear[-1] if nuclear else None
    if chosen is None and active is not None:
        with_active = [p for p in pairs if same_layer(p[0], active) or same_layer(p[1], active)]
        chosen = with_active[-1] if with_active else None
    if chosen is None:
        full = [p for p in pairs if p[1].name.endswith(OUTPUT_SUFFIX)]
        chosen = (full or pairs or [None])[-1]
    if chosen is not None:
        return chosen
    images = [layer for _, layer in image_choices(layers)]
    nuclear_images = [image for image in images if is_nuclear(image)]
    if nuclear_images:  # a visible one first: a hidden one is usually a reference
        visible = [image for image in nuclear_images if image.visible]
        return (visible or nuclear_images)[-1], None
    if images:
        return (active if any(same_layer(active, image) for image in images)
                else images[-1]), None
    return None, None


def nuclear_input(layers: Any, current: Any) -> Any:
    """A nuclear-stain layer to take over ``current`` as the input, else ``None``.

    Layers added after the panel opened (e.g. a multi-channel sample or file, one layer at a
    time) may bring a nuclear stain that is a better input than the earlier default pick,
    which was simply the only image at the time. Visible layers first, since a hidden one is
    usually a reference; a visible nuclear ``current`` (or a hidden one when all are hidden)
    stays.
    """
    nuclear = [layer for _, layer in image_choices(layers) if is_nuclear(layer)]
    if not nuclear:
        return None
    visible = [layer for layer in nuclear if layer.visible]
    if current is None or not (is_nuclear(current) and (current.visible or not visible)):
        return (visible or nuclear)[-1]
    return None


@dataclass
class PreparedDetection:
    """A run's request with where its planes came from (to place the points back)."""

    request: DetectionRequest
    input_index: dict[int, int]
    deblurred_index: dict[int, int]
    where: str


def prepare_detection(source: Any, result: Any, world_point: Sequence[float], ndisplay: int,
                      config: DetectionConfig) -> PreparedDetection:
    """Cut the planes the viewer shows out of both layers and build the worker's request;
    raises ``ValueError`` for a missing or identical pair and for planes of other shapes."""
    if source is None or result is None:
        raise ValueError("choose an input layer and a deblurred layer")
    if same_layer(source, result):
        raise ValueError("input and deblurred must be two different layers")
    point = tuple(world_point)
    source_index = plane_index(source, point, ndisplay)
    result_index = plane_index(result, point, ndisplay)
    source_plane, result_plane = plane_of(source, source_index), plane_of(result, result_index)
    if np.shape(source_plane) != np.shape(result_plane):
        raise ValueError(
            f"the planes of {source.name!r} {np.shape(source_plane)} and {result.name!r} "
            f"{np.shape(result_plane)} differ in shape; detections can only be compared "
            "on the same pixel grid"
        )
    return PreparedDetection(DetectionRequest(source_plane, result_plane, config),
                             source_index, result_index, describe_plane(source, source_index))
