"""End-to-end tests of the Defocus Deblur widget through the plugin manifest, in a real viewer.

Models are tiny and untrained (``mpt-test``): these tests check the plumbing (threads, progress,
cancel, errors, layers, metadata), not image quality.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

PLUGIN = "napari-mpt-deblur"
WIDGET = "Deblur"
pytestmark = pytest.mark.qt

TIMEOUT_MS = 120_000


def open_widget(viewer):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    return widget


def run_and_wait(qtbot, widget):
    widget._run.native.click()
    assert widget.running
    assert widget._run.text == "Cancel"
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)


@pytest.fixture
def memory_model():
    """Add in-memory models to the shared catalog; remove them afterwards."""
    from napari_mpt_deblur.models.catalog import get_catalog

    catalog = get_catalog()
    added = []

    def add(model, name):
        added.append(catalog.add_model(model, name).name)
        return added[-1]

    yield add
    for name in added:
        if name in catalog:
            catalog.remove(name)


def test_sample_data_deblur_end_to_end(make_napari_viewer, qtbot, plugin_registered,
                                       shared_catalog, tiny_checkpoint):
    from napari_mpt_deblur import __version__
    from napari_mpt_deblur.models.checkpoint import file_sha256

    _, entry = shared_catalog
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "defocused_actin")
    source = viewer.layers["defocused sample"]
    assert source.scale[-1] == pytest.approx(0.645)
    widget = open_widget(viewer)
    assert widget._layer.value == source  # the picker follows the (last added) selection
    widget._model.value = entry.name
    widget._device.value = "cpu"
    widget._tile.value = "0"
    seen = []
    widget._progress.changed.connect(seen.append)
    n_layers = len(viewer.layers)

    run_and_wait(qtbot, widget)

    assert len(viewer.layers) == n_layers + 1
    result = viewer.layers["defocused sample [deblurred]"]
    assert result.data.shape == source.data.shape
    assert result.data.dtype == source.data.dtype
    np.testing.assert_allclose(result.scale, source.scale)
    np.testing.assert_allclose(result.translate, source.translate)
    assert tuple(result.units) == tuple(source.units)
    assert tuple(result.axis_labels) == tuple(source.axis_labels)
    assert not np.array_equal(result.data, source.data)
    meta = result.metadata["napari_mpt_deblur"]
    assert meta["model"] == entry.name
    assert meta["checkpoint_sha256"] == file_sha256(tiny_checkpoint)
    assert meta["device"] == "cpu"
    assert meta["plugin_version"] == __version__
    assert meta["n_tiles"] == 1 and meta["tile"] is None
    assert meta["seconds"] > 0
    assert {"clipped_low", "clipped_high", "created", "input"} <= set(meta)
    assert meta["input"] == "defocused sample"
    assert 1 in seen  # per-tile progress reached the widget's bar
    assert widget._status.value.startswith("Done")
    assert widget._run.text == "Deblur" and widget._run.enabled


def test_stack_preview_then_whole_stack(make_napari_viewer, qtbot, plugin_registered,
                                        shared_catalog, smooth_image, tmp_path):
    from napari_mpt_deblur._io import write_image

    _, entry = shared_catalog
    stack = np.stack([smooth_image, smooth_image[::-1], smooth_image[:, ::-1]])
    path = write_image(tmp_path / "stack.ome.tif", stack,
                       {"axes": "ZYX", "pixel_size_um": (0.5, 0.25)})
    viewer = make_napari_viewer()
    from napari.layers import Layer

    from napari_mpt_deblur._reader import read_tiff

    # the plugin's TIFF reader, as docs/user_guide.md shows (napari's own reader has no scale)
    [source] = [viewer.add_layer(Layer.create(*layer)) for layer in read_tiff(str(path))]
    np.testing.assert_allclose(source.scale, (1.0, 0.5, 0.25))
    assert tuple(source.axis_labels) == ("z", "y", "x")
    widget = open_widget(viewer)
    widget._model.value = entry.name
    widget._device.value = "cpu"
    assert not widget._scope.native.isHidden()  # stack choices are shown for stacks
    viewer.dims.set_point(0, 2.0)

    widget._scope.value = "slice"
    run_and_wait(qtbot, widget)
    preview = viewer.layers["stack [deblurred preview]"]
    assert preview.data.shape == (1, 128, 128)
    assert preview.translate[0] == pytest.approx(2.0)
    assert preview.metadata["napari_mpt_deblur"]["slice"] == {"Z": 2}

    widget._scope.value = "stack"
    run_and_wait(qtbot, widget)
    full = viewer.layers["stack [deblurred]"]
    assert full.data.shape == stack.shape
    # planes are deblurred independently: the preview is exactly that plane of the full run
    np.testing.assert_array_equal(full.data[2], preview.data[0])

    full.data = np.zeros_like(full.data)
    n_layers = len(viewer.layers)
    run_and_wait(qtbot, widget)  # same settings again: the same layer is updated
    assert len(viewer.layers) == n_layers
    assert viewer.layers["stack [deblurred]"] is full
    np.testing.assert_array_equal(full.data[2], preview.data[0])


def test_cancel_mid_run_adds_nothing(make_napari_viewer, qtbot, plugin_registered,
                                     smooth_image, memory_model, make_slow_model):
    model = make_slow_model(delay_s=0.2)
    name = memory_model(model, "slow-test")
    viewer = make_napari_viewer()
    viewer.add_image(np.tile(smooth_image, (3, 3)), name="big")
    widget = open_widget(viewer)
    widget._model.value = name
    widget._device.value = "cpu"
    widget._tile.value = "128"

    widget._run.native.click()
    qtbot.waitUntil(lambda: widget._progress.value >= 1, timeout=TIMEOUT_MS)
    calls_at_cancel = model.calls
    widget._run.native.click()  # the button reads "Cancel" now
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)

    total = widget._progress.max
    assert total >= 9  # 384 px in 128 px tiles
    assert model.calls <= calls_at_cancel + 1 < total  # stopped within one tile
    assert [layer.name for layer in viewer.layers] == ["big"]
    assert widget._status.value.startswith("Cancelled")
    assert widget._run.text == "Deblur" and widget._run.enabled


def test_status_shows_units_percent_and_eta(make_napari_viewer, qtbot, plugin_registered,
                                           smooth_image, memory_model, make_slow_model):
    name = memory_model(make_slow_model(delay_s=0.05), "slow-status")
    viewer = make_napari_viewer()
    viewer.add_image(np.tile(smooth_image, (3, 3)), name="big")  # one plane, 9 tiles of 128
    widget = open_widget(viewer)
    widget._model.value = name
    widget._device.value = "cpu"
    widget._tile.value = "128"
    statuses = []  # the status line at every progress step
    widget._progress.changed.connect(lambda *_: statuses.append(widget._status.value))
    run_and_wait(qtbot, widget)

    assert any(text.startswith("Deblurring…") and "ETA" in text for text in statuses), statuses
    tiles = widget._progress.max  # overlapping 128 px tiles of the 384 px plane
    assert tiles >= 9
    assert f"Deblurring… 1/{tiles} tiles · {100 / tiles:.0f}% · ETA" in " ".join(statuses)
    assert widget._status.value.startswith("Done") and f" {tiles} tiles" in widget._status.value
    assert not any("planes" in text or "1 tiles" in text for text in statuses)

    statuses.clear()  # a stack whose planes are not tiled: planes, not tiles
    viewer.add_image(np.stack([smooth_image] * 3), name="stack")
    widget._layer.value = viewer.layers["stack"]
    widget._tile.value = "0"
    run_and_wait(qtbot, widget)
    assert "Deblurring… 1/3 planes · 33%" in " ".join(statuses)
    assert "3 planes" in widget._status.value and "tile" not in widget._status.value


def test_error_becomes_notification_and_widget_recovers(
    make_napari_viewer, qtbot, plugin_registered, smooth_image, memory_model, make_slow_model,
    monkeypatch,
):
    from napari.utils.notifications import notification_manager

    monkeypatch.setattr(notification_manager, "catch_error", True)
    name = memory_model(make_slow_model(fail=True), "broken-test")
    viewer = make_napari_viewer()
    viewer.add_image(smooth_image, name="blobs")
    widget = open_widget(viewer)
    widget._model.value = name
    widget._device.value = "cpu"
    before = len(notification_manager.records)

    run_and_wait(qtbot, widget)

    messages = [str(n.message) for n in notification_manager.records[before:]]
    assert any("synthetic failure" in m for m in messages)
    assert [layer.name for layer in viewer.layers] == ["blobs"]
    assert widget._status.value.startswith("Failed")
    assert widget._run.text == "Deblur" and widget._run.enabled


def test_load_checkpoint_dialog_and_bad_file(make_napari_viewer, plugin_registered,
                                             shared_catalog, tiny_checkpoint, tmp_path,
                                             monkeypatch):
    from napari.utils.notifications import notification_manager

    from napari_mpt_deblur._widgets import _dialogs
    from napari_mpt_deblur._widgets._deblur import LOAD_CHECKPOINT

    _, entry = shared_catalog
    good = shutil.copy(tiny_checkpoint, tmp_path / "my-model.safetensors")
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"this is not a safetensors file at all")
    viewer = make_napari_viewer()
    widget = open_widget(viewer)
    widget._model.value = entry.name
    before = len(notification_manager.records)

    # Patch the dialog module, never an attribute of the magicgui Container: its __delattr__
    # removes a child widget, so monkeypatch's undo would fail at teardown.
    asked = []

    def answer(path):
        return lambda parent, title: asked.append(title) or path

    monkeypatch.setattr(_dialogs, "ask_checkpoint_path", answer(str(bad)))
    widget._model.value = LOAD_CHECKPOINT
    assert widget._model.value == entry.name  # back to the previous choice
    assert any("broken.safetensors" in str(n.message)
               for n in notification_manager.records[before:])

    monkeypatch.setattr(_dialogs, "ask_checkpoint_path", answer(None))  # dialog cancelled
    widget._model.value = LOAD_CHECKPOINT
    assert widget._model.value == entry.name

    monkeypatch.setattr(_dialogs, "ask_checkpoint_path", answer(str(good)))
    widget._model.value = LOAD_CHECKPOINT
    assert widget._model.value == "my-model"
    assert len(asked) == 3 and all("checkpoint" in title for title in asked)
    assert "my-model" in [value for _, value in widget._model_choices()]


def test_dropping_a_checkpoint_offers_it_as_model(make_napari_viewer, plugin_registered,
                                                  shared_catalog, tiny_checkpoint, tmp_path):
    from qtpy.QtCore import QMimeData, QPointF, Qt, QUrl
    from qtpy.QtGui import QDropEvent

    dropped = shutil.copy(tiny_checkpoint, tmp_path / "dropped-model.safetensors")
    viewer = make_napari_viewer()
    widget = open_widget(viewer)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(dropped))])
    event = QDropEvent(QPointF(5, 5), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)

    viewer.window._qt_viewer.dropEvent(event)

    assert len(viewer.layers) == 0  # a model, not an image
    assert widget._model.value == "dropped-model"  # listed and selected in the open widget


def test_picker_follows_selection_and_results_map_to_inputs(
    make_napari_viewer, plugin_registered, shared_catalog, smooth_image
):
    from napari_mpt_deblur._widgets._layers import METADATA_KEY

    viewer = make_napari_viewer()
    first = viewer.add_image(smooth_image, name="first")
    second = viewer.add_image(smooth_image, name="second")
    widget = open_widget(viewer)
    assert widget._layer.value == second
    viewer.layers.selection.active = first
    assert widget._layer.value == first
    result = viewer.add_image(smooth_image, name="first [deblurred]",
                              metadata={METADATA_KEY: {"input": "first", "key": "k"}})
    viewer.layers.selection.active = result
    assert widget._layer.value == first  # the picker shows what the result came from
    assert widget.comparison_pair() == (first, result)
    viewer.layers.remove(first)
    assert first not in [value for _, value in widget._layer_choices()]


def test_compare_views_and_back(make_napari_viewer, plugin_registered, shared_catalog,
                                smooth_image):
    from napari_mpt_deblur._widgets._compare import grid_of
    from napari_mpt_deblur._widgets._layers import METADATA_KEY

    viewer = make_napari_viewer()
    other = viewer.add_image(smooth_image, name="other")
    source = viewer.add_image(smooth_image, name="blobs", scale=(0.5, 0.5),
                              contrast_limits=(100, 1500))
    sharper = (smooth_image.astype(np.int32) * 2 - 100).clip(0, 4095).astype(np.uint16)
    result = viewer.add_image(sharper, name="blobs [deblurred]", scale=(0.5, 0.5),
                              contrast_limits=(0, 4000),
                              metadata={METADATA_KEY: {"input": "blobs", "key": "k"}})
    widget = open_widget(viewer)
    compare = widget._compare
    grid = grid_of(viewer)
    assert compare._side_by_side.enabled
    # the user looks at a zoomed-in region with one layer selected
    viewer.layers.selection.active = result  # (selecting a result keeps its input picked)
    viewer.camera.zoom, viewer.camera.center = 7.5, (10.0, 20.0)

    compare._side_by_side.native.click()
    assert grid.enabled and tuple(grid.shape) == (1, 2)
    # every panel says which image it shows: its layer name, "... [deblurred]" for the result
    assert source.name_overlay.visible and result.name_overlay.visible
    from napari_mpt_deblur._widgets._compare import PANEL_TITLE_FONT_SIZE

    assert result.name_overlay.font_size <= PANEL_TITLE_FONT_SIZE  # fits three panels
    assert not other.name_overlay.visible
    assert not other.visible and source.visible and result.visible
    assert tuple(result.contrast_limits) == (100, 1500)  # linked to the input
    source.contrast_limits = (200, 1000)
    assert tuple(result.contrast_limits) == (200, 1000)
    assert compare._normal_view.enabled

    compare._swipe.native.click()
    assert not grid.enabled
    assert not compare._swipe_row.native.isHidden()  # the slider comes with its label
    assert "input" in compare._swipe_label.value and "deblurred" in compare._swipe_label.value
    swipe = viewer.layers["blobs [deblurred] [swipe]"]
    compare._swipe_position.value = 0.25
    assert swipe.data.shape == (128, 96)
    assert swipe.translate[-1] == pytest.approx(32 * 0.5)
    np.testing.assert_array_equal(swipe.data, result.data[:, 32:])
    line = viewer.layers["blobs [deblurred] [swipe line]"]
    np.testing.assert_allclose(line.data[0][:, 1], (32 - 0.5) * 0.5)  # at the split

    compare._difference.native.click()
    assert "blobs [deblurred] [swipe]" not in viewer.layers
    diff = viewer.layers["blobs [deblurred] [difference]"]
    np.testing.assert_allclose(diff.data, sharper.astype(np.float32) - smooth_image)
    lo, hi = diff.contrast_limits
    assert lo == pytest.approx(-hi)
    assert tuple(grid.shape) == (1, 3)

    compare._normal_view.native.click()
    assert not grid.enabled
    assert compare._swipe_row.native.isHidden()
    assert [layer.name for layer in viewer.layers] == ["other", "blobs", "blobs [deblurred]"]
    assert other.visible and source.visible and result.visible
    assert not source.name_overlay.visible and not result.name_overlay.visible
    # the selection and the zoomed region from before the comparison are back
    assert viewer.layers.selection.active == result
    assert list(viewer.layers.selection) == [result]
    assert viewer.camera.zoom == pytest.approx(7.5)
    assert tuple(viewer.camera.center)[-2:] == pytest.approx((10.0, 20.0))
    assert tuple(result.contrast_limits) == (0, 4000)
    source.contrast_limits = (300, 900)
    assert tuple(result.contrast_limits) == (0, 4000)  # unlinked again


def test_layers_filter_menu_command(make_napari_viewer, plugin_registered, shared_catalog,
                                    smooth_image):
    from napari._app_model import get_app_model

    command = "napari-mpt-deblur.deblur_image"
    viewer = make_napari_viewer()
    layer = viewer.add_image(smooth_image, name="blobs", scale=(0.5, 0.5))
    viewer.layers.selection.active = layer
    app = get_app_model()
    filter_menu = app.menus.get_menu("napari/layers/filter")
    assert any(getattr(item, "command", None) and item.command.id == command
               for item in filter_menu)

    app.commands.execute_command(command).result()

    result = viewer.layers["blobs [deblurred]"]
    assert result.data.shape == layer.data.shape
    np.testing.assert_allclose(result.scale, (0.5, 0.5))
    assert result.metadata["napari_mpt_deblur"]["input"] == "blobs"


def _bundled() -> list[str]:
    from napari_mpt_deblur.models.pretrained import bundled_models

    return sorted(bundled_models())


@pytest.mark.parametrize("name", _bundled())
def test_every_bundled_model_is_listed_and_sharpens_the_sample(make_napari_viewer, qtbot,
                                                               plugin_registered, name):
    """The shipped weights (MPT default and HTCSF) are choices in the widget and really deblur:
    PSNR against the sample's in-focus reference goes up."""
    from pathlib import Path

    import tifffile

    import napari_mpt_deblur
    from napari_mpt_deblur.metrics import psnr

    data = Path(napari_mpt_deblur.__file__).parent / "data"
    reference = tifffile.imread(data / "sample_infocus.tif")
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "defocused_actin")
    source = viewer.layers["defocused sample"]
    widget = open_widget(viewer)
    assert name in widget._model.choices
    widget._model.value = name
    from napari_mpt_deblur.models.checkpoint import read_header
    from napari_mpt_deblur.models.pretrained import bundled_models

    purpose = read_header(bundled_models()[name]).get("description")
    assert purpose and purpose in widget._model.tooltip  # the picker says what it is for
    widget._device.value = "cpu"
    run_and_wait(qtbot, widget)
    result = viewer.layers["defocused sample [deblurred]"]
    assert result.metadata["napari_mpt_deblur"]["model"] == name
    before, after = psnr(source.data, reference), psnr(result.data, reference)
    assert after > before + 1.0, (name, before, after)


def test_high_quality_averages_views_and_records_it(make_napari_viewer, qtbot, plugin_registered,
                                                    shared_catalog):
    _, entry = shared_catalog
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "defocused_actin")
    widget = open_widget(viewer)
    widget._model.value = entry.name
    widget._device.value = "cpu"
    assert widget._quality.value == 1  # standard unless asked
    run_and_wait(qtbot, widget)
    result = viewer.layers["defocused sample [deblurred]"]
    standard = result.data.copy()
    assert result.metadata["napari_mpt_deblur"]["ensemble"] == 1

    widget._quality.value = 8
    widget._run.native.click()
    assert not widget._quality.enabled  # settings are locked while the run is in flight
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    assert widget._quality.enabled
    assert viewer.layers["defocused sample [deblurred]"] is result  # same settings layer reused
    assert result.metadata["napari_mpt_deblur"]["ensemble"] == 8
    assert result.data.shape == standard.shape and not np.array_equal(result.data, standard)
