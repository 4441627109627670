"""The napari reader (checkpoints into the model catalog), TIFF layer data with pixel size, and
what a dropped TIFF does in a real viewer (opened by napari, no reader question)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("napari")

from napari_mpt_deblur._io import write_image
from napari_mpt_deblur._reader import get_checkpoint_reader, read_tiff, tiff_layer_data


def test_tiff_reader_keeps_pixel_size_and_axes(tmp_path):
    data = np.arange(2 * 16 * 24, dtype=np.uint16).reshape(2, 16, 24)
    path = write_image(tmp_path / "cells.ome.tif", data,
                       {"axes": "ZYX", "pixel_size_um": (0.3, 0.2)})
    [(array, kwargs, kind)] = read_tiff(str(path))
    assert kind == "image"
    np.testing.assert_array_equal(array, data)
    assert kwargs["name"] == "cells"
    assert kwargs["scale"] == pytest.approx((1.0, 0.3, 0.2))
    assert kwargs["units"] == ("pixel", "µm", "µm")
    assert kwargs["axis_labels"] == ("z", "y", "x")
    assert kwargs["metadata"]["pixel_size_um"] == pytest.approx((0.3, 0.2))


def test_z_spacing_comes_from_ome_xml():
    ome = ('<OME><Image><Pixels PhysicalSizeX="0.1" PhysicalSizeY="0.1" PhysicalSizeZ="500" '
           'PhysicalSizeZUnit="nm"/></Image></OME>')
    [(_, kwargs, _)] = tiff_layer_data(np.zeros((3, 8, 8), np.uint8),
                                       {"axes": "ZYX", "pixel_size_um": (0.1, 0.1),
                                        "ome_xml": ome})
    assert kwargs["scale"] == pytest.approx((0.5, 0.1, 0.1))
    assert kwargs["units"] == ("µm", "µm", "µm")


def test_channels_become_layers_and_rgb_stays_rgb():
    layers = tiff_layer_data(np.zeros((2, 8, 8), np.uint16), {"axes": "CYX"}, name="two")
    assert [kw["name"] for _, kw, _ in layers] == ["two [ch0]", "two [ch1]"]
    assert all(d.shape == (8, 8) and kw["axis_labels"] == ("y", "x") for d, kw, _ in layers)
    [(rgb, kwargs, _)] = tiff_layer_data(np.zeros((8, 8, 3), np.uint8), {"axes": "YXS"})
    assert kwargs["rgb"] and rgb.shape == (8, 8, 3)
    assert kwargs["scale"] == (1.0, 1.0) and kwargs["axis_labels"] == ("y", "x")


def test_readers_decline_other_files(tmp_path):
    with pytest.raises(ValueError, match="one file at a time"):
        read_tiff([str(tmp_path / "a.tif"), str(tmp_path / "b.tif")])
    assert get_checkpoint_reader(str(tmp_path / "a.tif")) is None
    assert get_checkpoint_reader([str(tmp_path / "a.pth"), str(tmp_path / "b.tif")]) is None


def test_checkpoint_reader_lists_the_model_and_adds_no_layer(shared_catalog, tiny_checkpoint,
                                                             tmp_path):
    catalog, _ = shared_catalog
    events = []
    catalog.connect(events.append)
    copy = shutil.copy(tiny_checkpoint, tmp_path / "dropped.safetensors")
    reader = get_checkpoint_reader(str(copy))
    assert reader is not None
    assert reader(str(copy)) == [(None,)]  # npe2's "handled, no layers" value
    assert "dropped" in catalog
    assert events[-1].kind == "added" and events[-1].select
    catalog.disconnect(events.append)

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"broken\.safetensors"):
        get_checkpoint_reader(str(broken))(str(broken))


@pytest.mark.qt
def test_opening_a_tiff_asks_no_question_and_gives_one_image_layer(make_napari_viewer,
                                                                    plugin_registered, tmp_path):
    """napari's built-in reader is the only one that claims TIFFs: no MultipleReaderError."""
    from napari.plugins._npe2 import get_readers

    data = np.arange(20 * 30, dtype=np.uint16).reshape(20, 30)
    meta = {"axes": "YX", "pixel_size_um": (0.3, 0.2)}
    path = write_image(tmp_path / "cells.ome.tif", data, meta)
    assert plugin_registered in get_readers(str(tmp_path / "m.safetensors"))  # we are loaded
    assert plugin_registered not in get_readers(str(path))
    viewer = make_napari_viewer()
    layers = viewer.open(str(path))  # raised MultipleReaderError while both readers claimed TIFFs
    assert len(layers) == 1 and list(viewer.layers) == layers
    [layer] = layers
    assert layer._type_string == "image"
    np.testing.assert_array_equal(np.asarray(layer.data), data)
    assert layer.source.reader_plugin == "napari"
    # napari's reader does not keep the pixel size; the user guide's read_tiff recipe does
    from napari.layers import Layer

    for layer_data, kwargs, kind in read_tiff(str(path)):
        viewer.add_layer(Layer.create(layer_data, kwargs, kind))
    scaled = viewer.layers["cells"]
    np.testing.assert_array_equal(np.asarray(scaled.data), data)
    assert tuple(scaled.scale) == pytest.approx((0.3, 0.2))
    assert tuple(str(u) for u in scaled.units) == ("micrometer", "micrometer")
