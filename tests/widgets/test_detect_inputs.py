"""The Detection preview's choices as plain functions: which pair, which planes (no widget)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")


def _layers(*specs):
    """A LayerList of Image layers from ``(name, visible)`` or names; deblurred results get
    their provenance the way the Deblur dock writes it."""
    from napari.components import LayerList
    from napari.layers import Image

    from napari_mpt_deblur._widgets._layers import METADATA_KEY

    layers = LayerList()
    for spec in specs:
        name, visible = (spec, True) if isinstance(spec, str) else spec
        metadata = {}
        if name.endswith(" [deblurred]"):
            metadata = {METADATA_KEY: {"input": name.removesuffix(" [deblurred]")}}
        layers.append(Image(np.zeros((16, 16), np.float32), name=name, visible=visible,
                            metadata=metadata))
    return layers


def _names(pair):
    return tuple(layer.name if layer is not None else None for layer in pair)


def test_default_pair_prefers_a_nuclear_stain_then_the_active_pair_then_the_latest():
    from napari_mpt_deblur._widgets._detect_inputs import default_pair, result_pairs

    layers = _layers("actin", "actin [deblurred]", "Hoechst", "Hoechst [deblurred]", "other")
    assert [_names(p) for p in result_pairs(layers)] == [
        ("actin", "actin [deblurred]"), ("Hoechst", "Hoechst [deblurred]")]
    assert _names(default_pair(layers, layers["actin"])) == ("Hoechst", "Hoechst [deblurred]")
    layers = _layers("actin", "actin [deblurred]", "membrane", "membrane [deblurred]")
    assert _names(default_pair(layers, layers["actin"])) == ("actin", "actin [deblurred]")
    assert _names(default_pair(layers, None)) == ("membrane", "membrane [deblurred]")


def test_without_a_pair_a_visible_nuclear_layer_is_the_input():
    from napari_mpt_deblur._widgets._detect_inputs import default_pair, nuclear_input

    layers = _layers("DAPI reference", ("DAPI hidden", False), "actin")
    assert _names(default_pair(layers, layers["actin"])) == ("DAPI reference", None)
    assert _names(default_pair(_layers("a", "b"), None)) == ("b", None)
    assert _names(default_pair(_layers(), None)) == (None, None)
    # a nuclear layer added later takes over a default pick, but not a visible nuclear input
    assert nuclear_input(layers, layers["actin"]).name == "DAPI reference"
    assert nuclear_input(layers, layers["DAPI reference"]) is None
    assert nuclear_input(_layers("actin", "tubulin"), None) is None


def test_prepare_detection_refuses_bad_pairs_and_cuts_the_shown_plane():
    from napari.layers import Image

    from napari_mpt_deblur._widgets._detect_inputs import prepare_detection
    from napari_mpt_deblur.detect import DetectionConfig

    config = DetectionConfig()
    a, b = Image(np.zeros((16, 16)), name="a"), Image(np.zeros((16, 20)), name="b")
    with pytest.raises(ValueError, match="choose an input layer"):
        prepare_detection(a, None, (0, 0), 2, config)
    with pytest.raises(ValueError, match="two different layers"):
        prepare_detection(a, a, (0, 0), 2, config)
    with pytest.raises(ValueError, match="differ in shape"):
        prepare_detection(a, b, (0, 0), 2, config)
    stack = np.arange(3 * 16 * 16, dtype=np.float32).reshape(3, 16, 16)
    source, result = Image(stack, name="s"), Image(stack + 1, name="r")
    prepared = prepare_detection(source, result, (2, 0, 0), 2, config)
    assert prepared.input_index == prepared.deblurred_index == {0: 2}
    np.testing.assert_array_equal(prepared.request.input_image, stack[2])
    assert prepared.where
