"""The napari readers: TIFF with pixel size, checkpoints into the model catalog."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("napari")

from napari_mpt_deblur._io import write_image
from napari_mpt_deblur._reader import (
    get_checkpoint_reader,
    get_tiff_reader,
    read_tiff,
    tiff_layer_data,
)


def test_tiff_reader_keeps_pixel_size_and_axes(tmp_path):
    data = np.arange(2 * 16 * 24, dtype=np.uint16).reshape(2, 16, 24)
    path = write_image(tmp_path / "cells.ome.tif", data,
                       {"axes": "ZYX", "pixel_size_um": (0.3, 0.2)})
    reader = get_tiff_reader(str(path))
    assert reader is read_tiff
    [(array, kwargs, kind)] = reader(str(path))
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
    assert get_tiff_reader(str(tmp_path / "a.png")) is None
    assert get_tiff_reader([str(tmp_path / "a.tif"), str(tmp_path / "b.tif")]) is None
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
