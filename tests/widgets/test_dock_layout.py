"""All three docks open at once must fit a 1920×1080 window, with readable, aligned forms.

Measured with napari 0.9.2 / PyQt5 under Xvfb (issue #29): before the docks scrolled, the
fine-tune dock alone grew the window to 1091 px (1373 px with "Advanced settings" open) and all
three docks to about 1900 px.
"""

from __future__ import annotations

import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

PLUGIN = "napari-mpt-deblur"
DOCKS = ("Deblur", "Fine-tune", "Detection preview")
pytestmark = pytest.mark.qt

SCREEN_HEIGHT = 1080


def settle(qtbot):
    from qtpy.QtWidgets import QApplication

    for _ in range(5):
        QApplication.processEvents()
    qtbot.wait(50)


def open_all(viewer, qtbot):
    window = viewer.window._qt_window
    window.resize(1920, SCREEN_HEIGHT)
    settle(qtbot)
    docks = {}
    for name in DOCKS:
        docks[name] = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        settle(qtbot)
    return window, docks


def field_lefts(widget):
    """Window x of every visible field (the widget right of each row's label)."""
    window = widget.native.window()
    lefts = {}
    for label in _labels(widget._form):
        row = label.native.parentWidget()
        field = row.layout().itemAt(1).widget()
        if row.isVisibleTo(widget.native) and field.isVisibleTo(widget.native):
            lefts[label.value or "<no label>"] = field.mapTo(window, field.rect().topLeft()).x()
    return lefts


def _labels(container):
    from magicgui.widgets import Container

    for child in container:
        ref = getattr(child, "_labeled_widget", None)
        labeled = ref() if callable(ref) else None
        if labeled is not None:
            yield labeled._label_widget
        if isinstance(child, Container) and child.layout == "vertical":
            yield from _labels(child)


def test_three_docks_fit_a_1080_pixel_window(make_napari_viewer, qtbot, plugin_registered):
    viewer = make_napari_viewer(show=True)
    window, docks = open_all(viewer, qtbot)
    heights = {name: dock.minimumSizeHint().height() for name, (dock, _) in docks.items()}
    assert window.height() <= SCREEN_HEIGHT, heights
    # each dock can shrink to a few rows (it scrolls), so all three fit in one column
    assert all(height <= 200 for height in heights.values()), heights
    assert sum(heights.values()) <= SCREEN_HEIGHT - 200, heights

    finetune = docks["Fine-tune"][1]
    # expert settings are collapsed: opening them scrolls, it does not grow the window
    for expert in (finetune._lr, finetune._efcr_weight, finetune._replay):
        assert not expert.native.isVisible()
    finetune._advanced.value = True
    settle(qtbot)
    assert finetune._lr.native.isVisibleTo(finetune.native)
    assert window.height() <= SCREEN_HEIGHT
    assert docks["Fine-tune"][0].minimumSizeHint().height() <= 200


def test_forms_align_and_dock_titles_are_not_cut(make_napari_viewer, qtbot, plugin_registered):
    viewer = make_napari_viewer(show=True)
    _, docks = open_all(viewer, qtbot)
    for name, (dock, widget) in docks.items():
        lefts = field_lefts(widget)
        assert len(set(lefts.values())) == 1, (name, lefts)  # one label column
        title = dock.titleBarWidget()
        assert dock.width() >= title.layout().sizeHint().width(), name
        assert title.title.width() >= title.title.sizeHint().width(), name  # not cut

    finetune = docks["Fine-tune"][1]
    finetune._advanced.value = True  # the expert section's rows join the same column
    settle(qtbot)
    lefts = field_lefts(finetune)
    assert "Learning rate" in lefts and len(set(lefts.values())) == 1, lefts

    detect = docks["Detection preview"][1]
    lefts = field_lefts(detect)
    assert {"Status", "Result", "Input", "<no label>"} <= set(lefts)  # buttons, check boxes too
