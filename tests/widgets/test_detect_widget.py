"""End-to-end tests of the Detection preview widget through the plugin manifest, in a real viewer.

No model is involved: the "deblurred" layer is a Gaussian-blurred copy of a synthetic blob image
in which one nucleus was removed and another added, so the expected agreement is known exactly:
every nucleus but two is matched, one is only in the input and one only in the other image.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

PLUGIN = "napari-mpt-deblur"
WIDGET = "Detection preview"
pytestmark = pytest.mark.qt

TIMEOUT_MS = 60_000
PIXEL_UM = 0.5
DIAMETER_UM = 6.0  # 12 px nuclei
GRID = [(24 + 37 * i, 24 + 37 * j) for i in range(4) for j in range(4)]
MISSING = GRID[5]  # nucleus removed from the "deblurred" image
EXTRA = (42, 42)  # nucleus only in the "deblurred" image


def blob_image(centres, seed, shape=(160, 160), radius=6.0) -> np.ndarray:
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.full(shape, 100.0)
    for cy, cx in centres:
        image += 1000.0 * (((yy - cy) ** 2 + (xx - cx) ** 2) <= radius**2)
    image = ndi.gaussian_filter(image, 1.0) + rng.normal(0, 10, shape)
    return image.astype(np.float32)


@pytest.fixture(scope="module")
def blob_pair() -> tuple[np.ndarray, np.ndarray]:
    from scipy import ndimage as ndi

    sharp = blob_image(GRID, seed=0)
    changed = [c for c in GRID if c != MISSING] + [EXTRA]
    blurred = ndi.gaussian_filter(blob_image(changed, seed=1), 1.5)
    return sharp, blurred


def open_widget(viewer):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    return widget


def add_pair(viewer, sharp, blurred, **kwargs):
    from napari_mpt_deblur._widgets._layers import METADATA_KEY

    source = viewer.add_image(sharp, name="blobs", **kwargs)
    result = viewer.add_image(blurred, name="blobs [deblurred]",
                              metadata={METADATA_KEY: {"input": "blobs", "key": "k"}}, **kwargs)
    return source, result


def run_and_wait(qtbot, widget, runs_before=None):
    runs = widget.runs_completed if runs_before is None else runs_before
    widget._run.native.click()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    return widget.runs_completed > runs


def notifications_since(before):
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records[before:]]


def test_detect_pair_categories_counts_and_side_by_side(make_napari_viewer, qtbot,
                                                        plugin_registered, blob_pair):
    from napari.layers import Points

    from napari_mpt_deblur._widgets._compare import grid_of

    sharp, blurred = blob_pair
    viewer = make_napari_viewer()
    decoy = viewer.add_image(np.zeros((8, 8), np.float32), name="decoy")
    source, result = add_pair(viewer, sharp, blurred, scale=(PIXEL_UM, PIXEL_UM),
                              units=("µm", "µm"))
    viewer.layers.selection.active = decoy
    widget = open_widget(viewer)
    assert widget._input.value == source  # the "<x> [deblurred]" pair is pre-selected
    assert widget._deblurred.value == result
    assert widget._pixel_size.value == pytest.approx(PIXEL_UM)  # from the layer's µm scale
    assert not widget._pixel_size.enabled
    assert not widget._side_by_side.enabled  # nothing detected yet
    widget._diameter.value = DIAMETER_UM

    assert run_and_wait(qtbot, widget)

    points_in = viewer.layers["blobs [nuclei]"]
    points_out = viewer.layers["blobs [deblurred] [nuclei]"]
    assert isinstance(points_in, Points) and isinstance(points_out, Points)
    assert len(points_in.data) == len(GRID) and len(points_out.data) == len(GRID)
    np.testing.assert_allclose(points_in.scale, source.scale)  # drawn on their images
    np.testing.assert_allclose(points_out.scale, result.scale)
    cat_in = list(points_in.features["category"])
    cat_out = list(points_out.features["category"])
    assert cat_in.count("only in input") == 1 and cat_in.count("matched") == len(GRID) - 1
    assert cat_out.count("only in deblurred") == 1 and cat_out.count("matched") == len(GRID) - 1
    lonely_in = points_in.data[cat_in.index("only in input")]
    lonely_out = points_out.data[cat_out.index("only in deblurred")]
    assert np.hypot(*(lonely_in - MISSING)) < 2  # the removed nucleus
    assert np.hypot(*(lonely_out - EXTRA)) < 2  # the added one
    matched_in = np.array([c == "matched" for c in cat_in])
    # hollow where matched, filled where only one image has the nucleus
    assert np.all(points_in.face_color[matched_in, 3] == 0)
    assert np.all(points_in.face_color[~matched_in, 3] > 0)
    assert not np.allclose(points_in.border_color[0], points_out.border_color[0])
    # sizes follow the detector's scale band around the expected 12 px
    assert np.all((points_in.size >= 0.9 * 12 - 1e-6) & (points_in.size <= 1.6 * 12 + 1e-6))
    outcome = widget.last_outcome
    assert (outcome.n_matched, outcome.n_only_input, outcome.n_only_deblurred) == (15, 1, 1)
    expected_f1 = 2 * 15 / (2 * 15 + 1 + 1)
    assert outcome.f1 == pytest.approx(expected_f1)
    text = widget._summary.value
    assert "matched 15" in text and "only in input 1" in text and "only in deblurred 1" in text
    assert f"{expected_f1:.3f}" in text
    meta = points_in.metadata["napari_mpt_deblur_detection"]
    assert meta["config"]["diameter_um"] == DIAMETER_UM
    assert meta["config"]["pixel_size_um"] == pytest.approx(PIXEL_UM)
    assert "napari_mpt_deblur" not in points_in.metadata  # not mistaken for a deblurred image

    widget._side_by_side.native.click()
    grid = grid_of(viewer)
    assert grid.enabled and tuple(grid.shape) == (1, 2) and grid.stride == 2
    assert [layer.name for layer in viewer.layers][:4] == [
        "blobs", "blobs [nuclei]", "blobs [deblurred]", "blobs [deblurred] [nuclei]"]
    assert not decoy.visible and points_in.visible and points_out.visible
    widget._normal_view.native.click()
    assert not grid.enabled
    assert [layer.name for layer in viewer.layers] == [
        "decoy", "blobs", "blobs [deblurred]", "blobs [nuclei]", "blobs [deblurred] [nuclei]"]
    assert decoy.visible


def test_live_rerun_updates_layers_in_place(make_napari_viewer, qtbot, plugin_registered,
                                            blob_pair):
    sharp, blurred = blob_pair
    viewer = make_napari_viewer()
    widget = open_widget(viewer)  # opened first: the pickers follow the layers added later
    assert widget._input.value is None and not widget._run.enabled
    source, result = add_pair(viewer, sharp, blurred)  # no units: the pixel size is typed in
    assert widget._input.value == source and widget._deblurred.value == result
    assert widget._pixel_size.enabled
    widget._pixel_size.value = PIXEL_UM
    widget._diameter.value = DIAMETER_UM
    widget._live.value = True  # ticking "live" runs once after the pause
    qtbot.waitUntil(lambda: widget.runs_completed == 1 and not widget.running,
                    timeout=TIMEOUT_MS)
    points_in = viewer.layers["blobs [nuclei]"]
    n_layers = len(viewer.layers)
    assert points_in.metadata["napari_mpt_deblur_detection"]["config"]["diameter_um"] == 6.0

    widget._diameter.value = 7.5  # two quick changes: one debounced re-run
    widget._diameter.value = 9.0
    qtbot.waitUntil(lambda: widget.runs_completed == 2 and not widget.running,
                    timeout=TIMEOUT_MS)
    qtbot.wait(2 * 300 + 200)
    assert widget.runs_completed == 2

    assert len(viewer.layers) == n_layers
    assert viewer.layers["blobs [nuclei]"] is points_in  # updated in place
    meta = points_in.metadata["napari_mpt_deblur_detection"]
    assert meta["config"]["diameter_um"] == 9.0
    expected_px = 9.0 / PIXEL_UM
    assert np.all(points_in.size >= 0.9 * expected_px - 1e-6)  # the new scale band
    n_in = len(points_in.data)
    assert meta["n_input"] == n_in == widget.last_outcome.input.n
    assert f"input {n_in} ·" in widget._summary.value

    widget._live.value = False
    widget._diameter.value = 6.0
    qtbot.wait(300 + 200)
    assert widget.runs_completed == 2 and not widget.running  # live off: no re-run


def test_stack_uses_current_slice_and_errors_leave_no_layers(
    make_napari_viewer, qtbot, plugin_registered, blob_pair
):
    from napari.layers import Points

    from napari_mpt_deblur._widgets._layers import METADATA_KEY

    sharp, blurred = blob_pair
    viewer = make_napari_viewer()
    stack = np.stack([np.zeros_like(sharp), sharp[::-1], sharp])
    viewer.add_image(stack, name="stack", axis_labels=("z", "y", "x"))
    preview = viewer.add_image(
        blurred[None], name="stack [deblurred preview]", axis_labels=("z", "y", "x"),
        translate=(2.0, 0.0, 0.0),
        metadata={METADATA_KEY: {"input": "stack", "key": "p", "slice": {"Z": 2}}})
    widget = open_widget(viewer)
    assert widget._deblurred.value == preview
    widget._pixel_size.value = PIXEL_UM
    widget._diameter.value = DIAMETER_UM

    viewer.dims.set_point(0, 0.0)  # the single-plane preview has no plane here
    before = len(viewer.layers), len(notifications_since(0))
    assert not run_and_wait(qtbot, widget)
    assert any("no plane at the current Z" in m for m in notifications_since(before[1]))
    assert widget._status.value.startswith("Failed")
    assert len(viewer.layers) == before[0]
    assert not any(isinstance(layer, Points) for layer in viewer.layers)

    viewer.dims.set_point(0, 2.0)
    assert run_and_wait(qtbot, widget)
    points_in = viewer.layers["stack [nuclei]"]
    points_out = viewer.layers["stack [deblurred preview] [nuclei]"]
    assert points_in.ndim == 3 and points_out.ndim == 3
    np.testing.assert_array_equal(points_in.data[:, 0], 2)  # plane 2 of the stack
    np.testing.assert_array_equal(points_out.data[:, 0], 0)  # plane 0 of the preview...
    assert points_out.translate[0] == pytest.approx(2.0)  # ...which sits at z = 2
    assert widget.last_outcome.n_matched == len(GRID) - 1
    assert widget._summary.value.startswith("Z=2")
    saved = points_in.data.copy()

    n_layers, n_notes = len(viewer.layers), len(notifications_since(0))
    viewer.dims.ndisplay = 3
    assert not run_and_wait(qtbot, widget)
    assert any("switch the viewer to 2-D" in m for m in notifications_since(n_notes))
    viewer.dims.ndisplay = 2

    # an error inside the worker (NaN pixels) is reported the same way
    bad = stack.copy()
    bad[2, 10, 10] = np.nan
    viewer.layers["stack"].data = bad
    n_notes = len(notifications_since(0))
    assert not run_and_wait(qtbot, widget)
    assert any("NaN" in m for m in notifications_since(n_notes))
    assert len(viewer.layers) == n_layers  # nothing added or removed, old detections kept
    np.testing.assert_array_equal(points_in.data, saved)
    assert not widget.running and widget._run.enabled


def test_stain_hints_and_blob_contrast_tell_nuclei_from_texture(blob_pair):
    from napari_mpt_deblur._sample_data import load_sample
    from napari_mpt_deblur._widgets._detect import blob_contrast, stain_hint
    from napari_mpt_deblur.detect import DetectionConfig, detect_nuclei

    assert stain_hint("Hoechst 33342") is True and stain_hint("C1-DAPI") is True
    assert stain_hint("cells", {"source": "BBBC006 w2 actin"}) is False
    assert stain_hint("nuclei", {"source": "actin"}) is True  # the name wins
    assert stain_hint("image") is None
    assert stain_hint("image", {"ome_xml": "<OME> DAPI " + "x" * 300}) is None  # long: skipped

    sharp, blurred = blob_pair
    config = DetectionConfig(diameter_um=DIAMETER_UM, pixel_size_um=PIXEL_UM)
    for image in (sharp, blurred):
        assert blob_contrast(image, detect_nuclei(image, config)) > 0.8
    sample = load_sample()  # actin: detections sit on filaments and cytoplasm
    config = DetectionConfig(diameter_um=16.0, pixel_size_um=sample.pixel_size_um)
    for image in (sample.blurred, sample.sharp):
        assert blob_contrast(image, detect_nuclei(image, config)) < 0.4


def test_actin_sample_is_flagged_and_nuclear_layers_preselected(make_napari_viewer, qtbot,
                                                               plugin_registered, blob_pair):
    from napari_mpt_deblur._sample_data import make_sample_data

    viewer = make_napari_viewer()
    for data, kwargs, _ in make_sample_data():
        viewer.add_image(data, **kwargs)
    widget = open_widget(viewer)
    widget._input.value = viewer.layers["defocused sample"]
    widget._deblurred.value = viewer.layers["in focus (reference)"]
    assert run_and_wait(qtbot, widget)
    assert "does not look like a nuclear stain" in widget._summary.value
    assert widget.last_outcome.input.n > 0  # counts are still shown, with the warning

    # changing a picker clears the previous pair's result at once
    widget._deblurred.value = viewer.layers["defocused sample"]
    assert widget._summary.value == "" and widget.last_outcome is None

    # a layer named after a nuclear stain is preselected in a new panel, over the active one
    second = make_napari_viewer()
    second.add_image(blob_pair[0], name="Hoechst")
    for data, kwargs, _ in make_sample_data():
        second.add_image(data, **kwargs)
    second.layers.selection.active = second.layers["defocused sample"]
    assert open_widget(second)._input.value == second.layers["Hoechst"]


def test_nucleus_like_blobs_are_not_flagged(make_napari_viewer, qtbot, plugin_registered,
                                            blob_pair):
    viewer = make_napari_viewer()
    add_pair(viewer, *blob_pair)
    widget = open_widget(viewer)
    widget._pixel_size.value, widget._diameter.value = PIXEL_UM, DIAMETER_UM
    assert run_and_wait(qtbot, widget)
    assert widget._summary.value.startswith("input ") and "⚠" not in widget._summary.value
    assert widget.last_outcome.blob_contrast > 0.8


def test_two_channel_sample_preselects_nuclei_and_flags_actin(make_napari_viewer, qtbot,
                                                             plugin_registered):
    from napari_mpt_deblur.detect import DetectionConfig, detect_nuclei

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "defocused_nuclei_actin")
    nuclei = viewer.layers["nuclei (Hoechst) (defocused)"]
    actin = viewer.layers["actin (phalloidin) (defocused)"]
    nuclei_ref = viewer.layers["nuclei (Hoechst) in focus (reference)"]
    actin_ref = viewer.layers["actin (phalloidin) in focus (reference)"]
    for layer in (nuclei, actin, nuclei_ref, actin_ref):
        assert tuple(layer.scale) == pytest.approx((0.645, 0.645))
        assert [str(u) for u in layer.units] == ["micrometer", "micrometer"]
        assert layer.blending == "additive" and layer.data.shape == (512, 512)
        assert "ExampleHuman" in layer.metadata["source"]
    assert nuclei.colormap.name == "cyan" and actin.colormap.name == "magenta"
    assert nuclei.visible and actin.visible and not nuclei_ref.visible
    assert nuclei.metadata["simulation"]["wavelength_nm"] == 460.0
    assert actin.metadata["simulation"]["wavelength_nm"] == 620.0

    widget = open_widget(viewer)
    assert widget._input.value == nuclei
    assert widget._pixel_size.value == pytest.approx(0.645)
    widget._deblurred.value = nuclei_ref  # the reference stands in for a deblurred image
    assert run_and_wait(qtbot, widget)
    assert "does not look like a nuclear stain" not in widget._summary.value
    assert widget.last_outcome.input.n > 50
    assert widget.last_outcome.blob_contrast > 0.45  # blobs, also by the image itself

    widget._input.value, widget._deblurred.value = actin, actin_ref
    assert run_and_wait(qtbot, widget)
    assert "does not look like a nuclear stain" in widget._summary.value

    # a panel opened before the sample still ends on the nuclei, not the first layer added
    second = make_napari_viewer()
    early = open_widget(second)
    second.open_sample(PLUGIN, "defocused_nuclei_actin")
    assert early._input.value == second.layers["nuclei (Hoechst) (defocused)"]
    # ... but never overrides the user's own choice
    early._input.value = second.layers["actin (phalloidin) (defocused)"]
    second.add_image(nuclei.data, name="DAPI")
    assert early._input.value == second.layers["actin (phalloidin) (defocused)"]

    # the nuclei channel really has nuclei where the actin channel has texture
    config = DetectionConfig(diameter_um=16.0, pixel_size_um=0.645)
    assert detect_nuclei(nuclei.data, config).n > detect_nuclei(actin.data, config).n
