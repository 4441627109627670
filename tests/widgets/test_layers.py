"""Layer bookkeeping for the widget and the filter command (napari layers, no Qt)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")

from napari.layers import Image

from napari_mpt_deblur._widgets._layers import (
    METADATA_KEY,
    find_result_layer,
    layer_axes,
    make_provenance,
    output_name,
    region_of_input,
    result_contrast_limits,
    result_layer_kwargs,
    select_plane,
)


@pytest.mark.parametrize(
    ("shape", "kwargs", "expected"),
    [
        ((32, 32), {}, "YX"),
        ((4, 32, 32), {}, "ZYX"),
        ((2, 4, 32, 32), {}, "TZYX"),
        ((32, 32, 3), {"rgb": True}, "YXC"),
        ((3, 4, 32, 32), {"axis_labels": ("t", "z", "y", "x")}, "TZYX"),
        ((5, 32, 32), {"axis_labels": ("t", "y", "x")}, "TYX"),
        ((2, 32, 32), {"axis_labels": ("c", "y", "x")}, "CYX"),
        ((5, 32, 32), {"axis_labels": ("time", "row", "col")}, "ZYX"),  # unknown labels
    ],
)
def test_layer_axes(shape, kwargs, expected):
    data = np.zeros(shape, np.uint8)
    assert layer_axes(Image(data, **kwargs)) == expected


def test_layer_axes_needs_labels_beyond_5d():
    with pytest.raises(ValueError, match="label its axes"):
        layer_axes(Image(np.zeros((2, 2, 2, 2, 8, 8), np.uint8)))


def test_select_plane_maps_world_position_to_data_index():
    layer = Image(np.zeros((5, 16, 16), np.uint16), scale=(2.0, 0.5, 0.5),
                  translate=(10.0, 0, 0))
    plane = select_plane(layer, (10.0 + 2.0 * 3, 1.0, 1.0))
    assert plane.index == {0: 3}
    assert plane.describe() == {"Z": 3}
    assert select_plane(layer, (1000.0, 0, 0)).index == {0: 4}  # clipped to the stack
    assert select_plane(layer, (-50.0, 0, 0)).index == {0: 0}
    # an extra leading viewer dimension (another layer with time) is ignored
    assert select_plane(layer, (7.0, 10.0 + 2.0, 0, 0)).index == {0: 1}


def test_result_contrast_limits_keep_input_unless_result_saturates():
    rng = np.random.default_rng(0)
    similar = rng.uniform(100, 900, 10_000)
    assert result_contrast_limits((100, 1000), similar) == (100.0, 1000.0)
    brighter = np.concatenate([similar, np.full(500, 3000.0)])  # ~5 % above the input's max
    lo, hi = result_contrast_limits((100, 1000), brighter)
    assert lo == 100.0 and hi == pytest.approx(3000.0)
    lo, _ = result_contrast_limits((100, 1000), np.concatenate([similar, np.full(500, -50.0)]))
    assert lo == pytest.approx(-50.0)


def _provenance(input_name="blobs", plane=None, sha="abc"):
    return make_provenance(
        input_name=input_name, axes="ZYX", entry={"name": "m", "kind": "checkpoint",
                                                  "source": "/m.safetensors"},
        model_info={"name": "m", "sha256": sha},
        report={"device": "cpu", "tile": 256, "overlap": 64, "n_tiles": 4, "planes": 3,
                "seconds": 1.23456, "clipped_low": 2, "clipped_high": 0},
        plane=plane,
    )


def test_result_layer_kwargs_put_the_result_on_its_input():
    source = Image(np.arange(3 * 8 * 8, dtype=np.uint16).reshape(3, 8, 8), name="blobs",
                   scale=(2.0, 0.5, 0.25), translate=(1.0, 2.0, 3.0),
                   units=("µm", "µm", "µm"), axis_labels=("z", "y", "x"),
                   contrast_limits=(0, 150), metadata={"source": "a.tif"})
    provenance = _provenance()
    kwargs = result_layer_kwargs(source, source.data, provenance=provenance)
    result = Image(source.data, **kwargs)
    assert result.name == "blobs [deblurred]"
    np.testing.assert_allclose(result.scale, source.scale)
    np.testing.assert_allclose(result.translate, source.translate)
    assert tuple(result.units) == tuple(source.units)
    assert tuple(result.axis_labels) == ("z", "y", "x")
    assert result.metadata["source"] == "a.tif"
    meta = result.metadata[METADATA_KEY]
    assert meta["seconds"] == pytest.approx(1.235)
    assert meta["checkpoint_sha256"] == "abc" and meta["scope"] == "stack"
    assert meta["key"] == "blobs|abc|stack"


def test_preview_lands_on_its_plane_and_region_matches():
    source = Image(np.random.default_rng(1).random((4, 8, 8)).astype(np.float32),
                   name="blobs", scale=(3.0, 1.0, 1.0), translate=(5.0, 0, 0))
    plane = select_plane(source, (5.0 + 3.0 * 2, 0, 0))
    part = source.data[plane.slices(3)]
    assert part.shape == (1, 8, 8)
    kwargs = result_layer_kwargs(source, part, provenance=_provenance(plane=plane), plane=plane)
    assert kwargs["name"] == output_name("blobs", preview=True) == "blobs [deblurred preview]"
    assert kwargs["translate"][0] == pytest.approx(5.0 + 3.0 * 2)
    preview = Image(part, **kwargs)
    assert preview.metadata[METADATA_KEY]["slice"] == {"Z": 2}
    np.testing.assert_array_equal(region_of_input(source, preview), source.data[2:3])


def test_find_result_layer_by_key():
    layers = [Image(np.zeros((4, 4)), name=n, metadata=m) for n, m in [
        ("a", {}), ("b", {METADATA_KEY: {"key": "k1"}}), ("c", {METADATA_KEY: {"key": "k2"}}),
    ]]
    assert find_result_layer(layers, "k2").name == "c"
    assert find_result_layer(layers, "nope") is None
