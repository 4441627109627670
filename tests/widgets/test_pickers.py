"""The model and device pickers shared by the deblur and fine-tune panels (no viewer needed)."""

from __future__ import annotations

import shutil
import threading

import pytest
import torch

from napari_mpt_deblur._widgets import _dialogs
from napari_mpt_deblur._widgets._pickers import (
    LOAD_CHECKPOINT,
    ModelPicker,
    describe_device,
    device_choices,
    device_picker,
)
from napari_mpt_deblur.models.catalog import ModelCatalog

pytestmark = pytest.mark.qt


@pytest.fixture
def catalog() -> ModelCatalog:
    catalog = ModelCatalog(include_bundled=False)
    catalog.add_model(torch.nn.Identity(), "first")
    catalog.add_model(torch.nn.Identity(), "second")
    return catalog


def make_picker(catalog, **kwargs):
    changes, refreshes = [], []
    picker = ModelPicker(catalog, label="Model", tooltip="What to run",
                         on_change=changes.append, on_catalog_change=lambda: refreshes.append(1),
                         **kwargs)
    return picker, changes, refreshes


def test_choices_default_and_tooltip(qapp, catalog):
    picker, changes, _ = make_picker(catalog)
    assert picker.choices() == [("first (in memory)", "first"), ("second (in memory)", "second"),
                                ("Load checkpoint…", LOAD_CHECKPOINT)]
    assert picker.value == catalog.default_name() == "first" and picker.ready
    assert picker.combo.tooltip == "Identity in memory\nWhat to run"
    assert changes == []  # the initial choice is not a change
    picker.combo.value = "second"
    assert changes == ["second"] and picker.last == "second"


def test_checkpoint_dialog_bad_cancelled_and_good(qapp, catalog, tiny_checkpoint, tmp_path,
                                                  monkeypatch):
    good = shutil.copy(tiny_checkpoint, tmp_path / "picked.safetensors")
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a checkpoint")
    titles = []
    answers = iter([str(bad), None, str(good)])
    monkeypatch.setattr(_dialogs, "ask_checkpoint_path",
                        lambda parent, title: titles.append(title) or next(answers))
    picker, changes, _ = make_picker(catalog, dialog_title="Pick one")
    picker.combo.value = "second"
    for _ in range(2):  # a broken file, then a cancelled dialog: back to the previous choice
        picker.combo.value = LOAD_CHECKPOINT
        assert picker.value == "second"
    picker.combo.value = LOAD_CHECKPOINT
    assert picker.value == "picked" and "picked" in catalog
    assert titles == ["Pick one"] * 3
    assert LOAD_CHECKPOINT not in changes  # the panel never sees the dialog item
    assert changes[-1] == "picked"


def test_catalog_changes_keep_the_choice_or_fall_back(qapp, catalog):
    picker, changes, refreshes = make_picker(catalog)
    picker.combo.value = "second"
    changes.clear()
    catalog.add_model(torch.nn.Identity(), "third")  # another entry: the choice is kept
    assert picker.value == "second" and changes == [] and refreshes == [1]
    assert "third" in [name for _, name in picker.choices()]
    catalog.add_model(torch.nn.Identity(), "fourth", select=True)  # not followed by default
    assert picker.value == "second"
    catalog.remove("second")  # the choice is gone: the catalog's default, and the panel hears
    assert picker.value == "first" and changes == ["first"]
    catalog.remove("first")
    catalog.remove("third")
    catalog.remove("fourth")  # nothing left: no choice, and never the dialog item
    assert picker.value is None and not picker.ready
    assert changes[-1] is None


def test_follow_selection_switches_to_a_selected_model(qapp, catalog):
    picker, changes, _ = make_picker(catalog, follow_selection=True)
    catalog.add_model(torch.nn.Identity(), "new", select=True)
    assert picker.value == "new" and changes == ["new"]
    catalog.add_model(torch.nn.Identity(), "quiet")
    assert picker.value == "new"


def test_catalog_events_from_another_thread_reach_the_gui_thread(qapp, qtbot, catalog):
    picker, _, refreshes = make_picker(catalog)
    thread = threading.Thread(target=lambda: catalog.add_model(torch.nn.Identity(), "bg"))
    thread.start()
    thread.join()
    qtbot.waitUntil(lambda: refreshes == [1], timeout=5000)
    assert "bg" in [name for _, name in picker.choices()] and picker.value == "first"


def test_disconnected_picker_ignores_the_catalog(qapp, catalog):
    picker, _, refreshes = make_picker(catalog)
    picker.disconnect()
    catalog.add_model(torch.nn.Identity(), "late")
    assert refreshes == [] and "late" not in picker.combo.choices


def test_device_picker(qapp, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: f"Card {index}")
    assert describe_device("cuda:1") == "cuda:1 · Card 1"
    assert describe_device("mps") == "mps · Apple GPU"
    assert describe_device("cpu") == "cpu"
    choices = device_choices()
    assert choices[0][1] == "auto" and choices[0][0].startswith("auto (")
    assert "cpu" in [value for _, value in choices]
    combo = device_picker()
    assert combo.value == "auto" and "GPU" in combo.tooltip
