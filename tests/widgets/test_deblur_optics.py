"""The Deblur dock's Optics group, in a real viewer through the manifest: prefilled from the
layer, used by an optics-conditioned model, disabled for a blind one; the sampling notice."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

PLUGIN = "napari-mpt-deblur"
WIDGET = "Deblur"
pytestmark = pytest.mark.qt

TIMEOUT_MS = 120_000
OIL = {"pixel_size_um": 0.1, "numerical_aperture": 1.4, "wavelength_nm": 600.0,
       "immersion_index": 1.515}


@pytest.fixture
def conditioned_entry():
    """A conditioned, untrained-but-not-zero mpt-test in the shared catalog (removed after)."""
    import torch

    from napari_mpt_deblur import create_model
    from napari_mpt_deblur.models.catalog import get_catalog

    torch.manual_seed(0)
    net = create_model("mpt-test", routing="aligned", optics_conditioning=True).eval()
    with torch.no_grad():
        net.optics_film.mlp[-1].weight.normal_(std=0.1)
    catalog = get_catalog()
    entry = catalog.add_model(net, "optics-test")
    yield entry
    if entry.name in catalog:
        catalog.remove(entry.name)


def _run(qtbot, widget):
    widget._run.native.click()
    assert widget.running
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)


def test_optics_are_prefilled_and_given_to_a_conditioned_model_only(
    make_napari_viewer, qtbot, plugin_registered, shared_catalog, conditioned_entry,
    smooth_image
):
    _, blind_entry = shared_catalog
    viewer = make_napari_viewer()
    layer = viewer.add_image(smooth_image, name="oil", metadata=dict(OIL))
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    widget._device.value = "cpu"
    assert widget._layer.value == layer
    fields = widget._optics
    assert fields.values() == OIL  # read from the layer's metadata

    widget._model.value = conditioned_entry.name
    assert all(w.enabled for w in fields.widgets.values())
    assert "optics-conditioned" in fields.na.tooltip
    _run(qtbot, widget)
    meta = viewer.layers["oil [deblurred]"].metadata["napari_mpt_deblur"]
    assert meta["optics_used"] is True and meta["optics"] == OIL

    widget._model.value = blind_entry.name
    assert not any(w.enabled for w in fields.widgets.values())
    assert "blind to optics" in fields.na.tooltip
    assert widget.optics() is None
    _run(qtbot, widget)
    meta = widget._last_result.metadata["napari_mpt_deblur"]  # a second result layer
    assert meta["model"] == blind_entry.name
    assert meta["optics_used"] is False and meta["optics"] is None

    widget._model.value = conditioned_entry.name  # impossible optics: refused before a run
    fields.index.value = 1.0
    widget.start()
    assert not widget.running
    with pytest.raises(ValueError, match="immersion_index"):
        widget.optics()


def test_a_new_layer_refills_the_fields_and_unknown_ones_stay_unknown(
    make_napari_viewer, plugin_registered, smooth_image
):
    viewer = make_napari_viewer()
    viewer.add_image(smooth_image, name="oil", metadata=dict(OIL))
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    assert widget._optics.values()["numerical_aperture"] == 1.4
    plain = viewer.add_image(smooth_image, name="plain")  # selected: the picker follows
    assert widget._layer.value == plain
    assert widget._optics.values() == dict.fromkeys(OIL)  # nothing known, nothing kept


def test_sampling_notice_when_the_pixels_are_far_from_the_training_sampling(
    make_napari_viewer, plugin_registered, smooth_image
):
    viewer = make_napari_viewer()
    viewer.add_image(smooth_image, name="40x", metadata={"pixel_size_um": 0.3})
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    widget._model.value = "mpt-tiny"  # trained at 0.645 µm/px and, 25 %, 0.1 µm/px
    assert widget._optics.pixel_size.enabled  # the default is optics-conditioned
    widget._model.value = "mpt-tiny-wide"
    assert not widget._optics.pixel_size.enabled  # a blind model: the fields are off
    widget._model.value = "mpt-tiny"
    note = widget._optics_note
    assert not note.native.isHidden() and "0.3 µm" in note.value and "Fine-tune" in note.value
    widget._optics.pixel_size.value = 0.7  # within 1.5x of 0.645: nothing to say
    assert note.native.isHidden()
    widget._optics.pixel_size.value = 0.12  # within 1.5x of the high-NA share's 0.1
    assert note.native.isHidden()
    widget._optics.pixel_size.value = 0.0  # unknown: nothing to say either
    assert note.native.isHidden()
    np.testing.assert_allclose(widget._optics.values()["pixel_size_um"] or 0.0, 0.0)
