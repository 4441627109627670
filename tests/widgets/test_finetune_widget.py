"""The "Fine-tune" panel: its worker (no Qt) and the panel in a real viewer.

Models are tiny and untrained (``mpt-test``, one CPU thread): these tests check the plumbing
(worker thread, progress, stop, resume, save, catalog, preview placement), not image quality;
the engine's own tests (tests/train/test_finetune.py) check that fine-tuning lowers the loss.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("magicgui")
pytest.importorskip("qtpy")

from napari_mpt_deblur._widgets._finetune import (
    FinetuneRequest,
    FinetuneStatus,
    ResumePoint,
    checkpoint_metadata,
    eta_seconds,
    finetune_steps,
    optics_from_layer,
    run_blocking,
    save_finetuned,
)
from napari_mpt_deblur.train.updates import TrainUpdate, UpdateKind

PLUGIN = "napari-mpt-deblur"
WIDGET = "Fine-tune"
TIMEOUT_MS = 300_000


def blurry(seed: int, shape=(128, 192)) -> np.ndarray:
    """A smooth, noisy uint16 'defocused' image with some structure."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    sharp = np.zeros(shape)
    for cy, cx in rng.uniform(8, np.array(shape) - 8, size=(25, 2)):
        sharp[int(cy), int(cx)] = 4000.0
    image = 100 + gaussian_filter(sharp, 3.0) * 20 + rng.normal(0, 4, shape)
    return image.clip(0, 65535).astype(np.uint16)


def tiny_settings(**changes):
    from napari_mpt_deblur.train.finetune import FinetuneConfig

    base = dict(steps=3, batch_size=1, patch_size=32, lr=1e-3, warmup_steps=0,
                val_crop_size=128, val_every=1, preview_every=2, state_every=0, device="cpu",
                mode="reblur_only")
    base.update(changes)
    return FinetuneConfig(**base)


# ------------------------------------------------------------------------------------------
# Pure helpers
# ------------------------------------------------------------------------------------------
OME = """<?xml version="1.0" encoding="UTF-8"?>
<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">
  <Instrument ID="Instrument:0">
    <Objective ID="Objective:0" LensNA="1.4" Immersion="Oil"/>
  </Instrument>
  <Image ID="Image:0">
    <ObjectiveSettings ID="Objective:0" RefractiveIndex="1.518"/>
    <Pixels ID="Pixels:0" DimensionOrder="XYZCT" Type="uint16" SizeX="4" SizeY="4" SizeZ="1"
            SizeC="1" SizeT="1" PhysicalSizeX="0.065" PhysicalSizeY="0.065">
      <Channel ID="Channel:0:0" EmissionWavelength="0.52" EmissionWavelengthUnit="µm"/>
    </Pixels>
  </Image>
</OME>"""


def test_optics_hints_from_metadata_nested_dicts_ome_and_scale():
    hints = optics_from_layer({"NA": "0.75", "wavelength_nm": 610, "pixel_size_um": (0.2, 0.25)})
    assert hints == {"numerical_aperture": 0.75, "wavelength_nm": 610.0, "pixel_size_um": 0.25}
    # the plugin's sample data keeps its microscope under "simulation"
    sample = optics_from_layer({"simulation": {"numerical_aperture": 0.54,
                                               "immersion_index": 1.0}})
    assert sample == {"numerical_aperture": 0.54, "immersion_index": 1.0}
    ome = optics_from_layer({"ome_xml": OME})
    assert ome["numerical_aperture"] == pytest.approx(1.4)
    assert ome["immersion_index"] == pytest.approx(1.518)  # settings win over "Oil"
    assert ome["wavelength_nm"] == pytest.approx(520.0)  # µm converted
    # plain keys take precedence over OME; scale only when its unit is a length
    assert optics_from_layer({"na": 0.5, "ome_xml": OME})["numerical_aperture"] == 0.5
    assert optics_from_layer({}, scale=(1.0, 0.1), units=("micrometer", "micrometer")) == {
        "pixel_size_um": pytest.approx(0.1)}
    assert optics_from_layer({}, scale=(1.0, 65.0), units=("nm", "nm")) == {
        "pixel_size_um": pytest.approx(0.065)}
    assert optics_from_layer({}, scale=(1.0, 1.0), units=("pixel", "pixel")) == {}
    assert optics_from_layer({"na": -1, "wavelength_nm": "n/a"}) == {}


def test_eta_follows_pace_and_time_budget():
    assert eta_seconds(start_step=0, start_time=10.0, step=0, now=10.0, total=100) is None
    # 4 steps in 8 s -> 2 s per step, 96 steps left
    assert eta_seconds(start_step=0, start_time=10.0, step=4, now=18.0, total=100) == 192.0
    assert eta_seconds(start_step=0, start_time=10.0, step=4, now=18.0, total=100,
                       deadline=48.0) == 30.0
    assert eta_seconds(start_step=5, start_time=0.0, step=10, now=5.0, total=10) == 0.0


def test_plot_tick_labels_are_distinct_and_the_reference_label_clears_the_title():
    from napari_mpt_deblur._widgets._plot import format_ticks, nice_ticks, reference_label_y

    for lo, hi in ((38.005, 38.045), (37.9, 38.1), (0.0, 1.0), (20.0, 40.0), (0.98, 1.02)):
        labels = format_ticks(nice_ticks(lo, hi))
        assert len(set(labels)) == len(labels) >= 2, labels
    assert format_ticks(nice_ticks(38.005, 38.045)) == ["38.01", "38.02", "38.03", "38.04"]
    assert format_ticks([1e-3, 1e-2, 0.1, 1.0, 10.0]) == ["1e-3", "0.01", "0.1", "1", "10"]
    # a "start" line at the top of the frame is labelled under it, not into the title
    assert reference_label_y(22.0, frame_top=20.0, text_height=12.0) > 22.0
    assert reference_label_y(80.0, frame_top=20.0, text_height=12.0) < 80.0


def test_plot_axis_ranges_contain_the_data():
    from napari_mpt_deblur._widgets._plot import nice_range, nice_ticks

    lo, hi = nice_range([0.31, 0.12, 0.2])
    assert lo < 0.12 and hi > 0.31
    lo, hi = nice_range([5.0, 5.0])
    assert lo < 5.0 < hi
    lo, hi = nice_range([1e-3, 0.0, 2.0], log=True)  # 0 is ignored on a log axis
    assert 0 < lo < 1e-3 and hi > 2.0
    ticks = nice_ticks(0.0, 1.0)
    assert ticks[0] >= 0.0 and ticks[-1] <= 1.0 and 3 <= len(ticks) <= 6
    assert nice_ticks(1e-3, 10.0, log=True) == [1e-3, 1e-2, 1e-1, 1.0, 10.0]
    assert nice_range([float("nan")]) == (0.0, 1.0)


# ------------------------------------------------------------------------------------------
# The worker generator, driven synchronously
# ------------------------------------------------------------------------------------------
@pytest.fixture
def private_catalog():
    """A catalog holding one untrained in-memory ``mpt-test`` model."""
    import torch

    from napari_mpt_deblur import create_model
    from napari_mpt_deblur.models.catalog import ModelCatalog

    torch.manual_seed(0)
    model = create_model("mpt-test")
    catalog = ModelCatalog(include_bundled=False)
    catalog.add_model(model, "start")
    return catalog, model


def test_worker_starts_reports_stops_saves_and_resumes(private_catalog, tmp_path):
    import torch

    from napari_mpt_deblur.models.checkpoint import read_header
    from napari_mpt_deblur.models.resolve import load_model

    catalog, start_model = private_catalog
    before = {k: v.clone() for k, v in start_model.state_dict().items()}
    stack = np.stack([blurry(1), blurry(2)])
    request = FinetuneRequest(
        model="start", settings=tiny_settings(steps=40, preview_every=1),
        work_dir=str(tmp_path / "work"), run_name="run1",
        layers=(("cells", stack), ("more", blurry(3, (96, 160)))),
        optics_origin={"numerical_aperture": "layer metadata"},
    )
    cancel = threading.Event()
    updates = []

    def on_update(update):
        updates.append(update)
        if isinstance(update, TrainUpdate) and update.kind is UpdateKind.LOSS:
            cancel.set()  # "Stop" after the first step

    outcome = run_blocking(request, catalog=catalog, cancel=cancel, on_update=on_update)

    assert isinstance(updates[0], FinetuneStatus)
    kinds = [u.kind for u in updates if isinstance(u, TrainUpdate)]
    assert kinds[0] is UpdateKind.VALIDATION and kinds[-1] is UpdateKind.DONE
    assert [u.step for u in updates if getattr(u, "kind", None) is UpdateKind.LOSS] == [1]
    previews = [u.value for u in updates if getattr(u, "kind", None) is UpdateKind.PREVIEW]
    # previews are named after their real source and come back in the data's units
    assert previews and previews[0]["source"] in ("cells[0]", "cells[1]", "more")
    assert previews[0]["origin"][0] == "layer" and "norm_range" not in previews[0]
    assert previews[0]["input"].max() > 50  # uint16 units, not 0..1
    assert outcome.reason == "cancelled" and outcome.steps_done == 1
    assert outcome.data.names == ["cells[0]", "cells[1]", "more"]
    assert outcome.resumable and outcome.checkpoint.is_file()
    # the catalog's model was copied, never trained in place
    for key, value in start_model.state_dict().items():
        assert torch.equal(value, before[key]), key

    path = save_finetuned(outcome, tmp_path / "saved" / "mine", name="my-ft")
    assert path.name == "mine.safetensors"
    header = read_header(path)
    assert header["name"] == "my-ft"
    ft = header["finetune"]
    assert ft["images"] == ["cells[0]", "cells[1]", "more"]
    assert ft["data"]["layers"][0] == {"name": "cells", "shape": [2, 128, 192],
                                       "dtype": "uint16", "planes": 2}
    assert ft["settings"]["steps"] == 40 and ft["stopped"] == "cancelled"
    assert ft["optics_hints"]["numerical_aperture"]["origin"] == "layer metadata"
    assert ft["validation_crop"]["image"] in ft["images"]
    loaded = load_model(path, device="cpu")
    x = torch.rand(1, 1, 128, 128)
    with torch.no_grad():
        np.testing.assert_allclose(loaded(x).numpy(), outcome.model.eval()(x).numpy(),
                                   atol=1e-5)

    # Resume: one more step from the saved state, with the same data
    resumed_request = FinetuneRequest(
        model="start", settings=outcome.settings.replace(steps=2),
        work_dir=request.work_dir, run_name="run1",
        resume=ResumePoint(outcome.model, outcome.data, outcome.model_entry),
    )
    more = []
    resumed = run_blocking(resumed_request, catalog=catalog, on_update=more.append)
    assert [u.step for u in more if getattr(u, "kind", None) is UpdateKind.LOSS] == [2]
    assert resumed.reason == "completed" and resumed.steps_done == 2


def test_worker_rejects_missing_data_and_mismatched_pairs(private_catalog, tmp_path):
    catalog, _ = private_catalog
    common = dict(model="start", settings=tiny_settings(), work_dir=str(tmp_path),
                  run_name="r")
    with pytest.raises(ValueError, match="no blurry images"):
        run_blocking(FinetuneRequest(**common), catalog=catalog)
    bad_pair = (("p", blurry(1), blurry(2, (64, 64))),)
    with pytest.raises(ValueError, match="same shape"):
        run_blocking(FinetuneRequest(**common, layers=(("a", blurry(1)),),
                                     paired_layers=bad_pair), catalog=catalog)
    steps = finetune_steps(FinetuneRequest(**common, folders=(str(tmp_path / "none"),)),
                           catalog=catalog)
    assert isinstance(next(steps), FinetuneStatus)
    with pytest.raises(FileNotFoundError):
        next(steps)


def test_checkpoint_metadata_names_pairs_and_modes(private_catalog, tmp_path):
    """The header describes paired data too, without needing the engine's working file."""
    from napari_mpt_deblur._widgets._finetune import FinetuneData, FinetuneOutcome

    _, model = private_catalog
    data = FinetuneData([blurry(1)], ["a"], [("layer", "a", 0)], [(blurry(1), blurry(2))],
                        ["b|s"], {"layers": [{"name": "a"}]})
    outcome = FinetuneOutcome(
        reason="completed", steps_done=3, best={"step": 2, "reblur_psnr": 30.0},
        baseline={"step": 0, "reblur_psnr": 29.0}, model=model, checkpoint=None,
        state_path=None, settings=tiny_settings(mode="full"), data=data,
        model_entry={"name": "start", "kind": "memory"},
    )
    meta = checkpoint_metadata(outcome, name="x")
    assert meta["finetune"]["paired"] == ["b|s"]
    assert meta["finetune"]["settings"]["mode"] == "full"
    assert meta["finetune"]["best"]["reblur_psnr"] == 30.0
    assert "1 unlabeled planes and 1 pairs" in meta["description"]
    assert not outcome.resumable


# ------------------------------------------------------------------------------------------
# The panel in a real viewer, opened through the plugin manifest
# ------------------------------------------------------------------------------------------
def open_panel(viewer, name=WIDGET):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def configure(widget, entry_name, **fields):
    widget._model.value = entry_name
    widget._device.value = "cpu"
    widget._batch_size.value = 1
    widget._patch_size.value = 32
    widget._lr.value = 1e-3
    widget._time_budget.value = 0.0
    widget._val_every.value = 1
    widget._preview_every.value = 2
    for name, value in fields.items():
        getattr(widget, f"_{name}").value = value


@pytest.mark.qt
def test_panel_end_to_end_preview_save_and_deblur_list(
    make_napari_viewer, qtbot, plugin_registered, shared_catalog, tmp_path
):
    from napari_mpt_deblur.models.checkpoint import read_header
    from napari_mpt_deblur.models.resolve import load_model

    catalog, entry = shared_catalog
    viewer = make_napari_viewer()
    meta = {"numerical_aperture": 1.2, "refractive_index": 1.515, "wavelength_nm": 520.0}
    viewer.add_image(blurry(5, (128, 256)), name="cells", scale=(0.1, 0.1),
                     translate=(5.0, 7.0), units=("µm", "µm"), metadata=meta)
    deblur_widget = open_panel(viewer, "Deblur")
    widget = open_panel(viewer)

    # the layer is chosen and the optics hints come from its metadata and scale
    assert [layer.name for layer in widget._images.value] == ["cells"]
    assert widget._pixel_size.value == pytest.approx(0.1)
    assert widget._na.value == pytest.approx(1.2)
    assert widget._index.value == pytest.approx(1.515)
    assert widget._wavelength.value == pytest.approx(520.0)
    assert not widget._save.enabled and not widget._resume.enabled

    # preview a drawn rectangle (rows 20-84, columns 40-140 of the image, in world units)
    shapes = viewer.add_shapes([np.array([[7.0, 11.0], [13.4, 21.0]])],
                               shape_type="rectangle", name="roi")
    configure(widget, entry.name, steps=3, mode="full", preview_region=shapes)
    widget._name.value = "cells-ft"
    seen = []
    widget._progress.changed.connect(seen.append)

    widget._start.native.click()
    assert widget.running and widget._start.text == "Stop"
    assert not widget._model.enabled
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)

    outcome = widget.last_outcome
    assert outcome is not None, widget._status.value
    assert outcome.reason == "completed" and outcome.steps_done == 3
    assert outcome.settings.numerical_aperture == pytest.approx(1.2)
    assert widget._status.value.startswith("Done after 3 steps")
    assert seen[-1] == 3 and widget._progress.max == 3
    assert widget._loss_plot.series("loss").xs == [1.0, 2.0, 3.0]
    assert widget._val_plot.series("simulated PSNR").xs == [0.0, 1.0, 2.0, 3.0]
    assert len(widget._val_plot.series("re-blur PSNR (diagnostic)").ys) == 4
    assert widget._val_plot.title == "Selection score: simulated PSNR at your optics"
    assert outcome.verdict and outcome.verdict in widget._status.value
    assert len(widget._val_plot.series("sharpness").ys) == 4
    widget._loss_plot.grab()  # paints without error
    widget._val_plot.grab()

    preview = viewer.layers["cells [fine-tune preview]"]
    assert preview.data.shape == (64, 100)
    np.testing.assert_allclose(preview.translate, (5.0 + 20 * 0.1, 7.0 + 40 * 0.1))
    np.testing.assert_allclose(preview.scale, (0.1, 0.1))
    assert [str(unit) for unit in preview.units] == [str(unit) for unit in
                                                     viewer.layers["cells"].units]
    assert preview.metadata["napari_mpt_deblur_finetune"]["step"] == 2
    assert "the the" not in widget._status.value
    assert "cells [fine-tune preview]" not in [layer.name for _, layer in
                                               widget._image_choices()]

    # the fine-tuned model is listed at once, in memory
    assert catalog.get("cells-ft").kind == "memory"
    assert "cells-ft" in deblur_widget._model.choices
    assert widget._save.enabled and widget._start.text == "Start"

    # a file the panel did not write is replaced only after confirmation
    saved = tmp_path / "cells-ft.safetensors"
    saved.write_bytes(b"someone else's file")
    asked = []
    widget._confirm_overwrite = lambda path: asked.append(path) or False
    widget._output.value = tmp_path / "cells-ft"  # the suffix is added
    widget._save.native.click()
    assert asked == [saved] and saved.read_bytes() == b"someone else's file"
    assert widget._status.value.startswith("Not saved")
    widget._confirm_overwrite = lambda path: asked.append(path) or True
    widget._save.native.click()
    header = read_header(saved)
    assert header["name"] == "cells-ft"
    assert header["finetune"]["images"] == ["cells"]
    assert header["finetune"]["optics_hints"]["numerical_aperture"] == {
        "value": 1.2, "origin": "layer metadata"}
    assert header["finetune"]["settings"]["steps"] == 3
    load_model(saved, device="cpu")
    # the memory entry became the file, and the Deblur widget switched to it
    assert catalog.get("cells-ft").kind == "checkpoint"
    qtbot.waitUntil(lambda: deblur_widget._model.value == "cells-ft", timeout=5000)
    assert widget._status.value.startswith("Saved cells-ft.safetensors")
    # saving again to the file it wrote needs no confirmation
    n_asked = len(asked)
    assert widget.save() == saved and len(asked) == n_asked


@pytest.mark.qt
def test_panel_stop_keeps_best_then_resume_continues(
    make_napari_viewer, qtbot, plugin_registered, shared_catalog
):
    catalog, entry = shared_catalog
    viewer = make_napari_viewer()
    viewer.add_image(blurry(6, (128, 256)), name="mine")
    widget = open_panel(viewer)
    configure(widget, entry.name, steps=40, mode="reblur_only", preview_every=0)
    assert widget._name.value == f"{entry.name}-ft"

    widget._start.native.click()
    qtbot.waitUntil(lambda: len(widget._loss_plot.series("loss").xs) >= 1, timeout=TIMEOUT_MS)
    widget._start.native.click()  # Stop
    assert widget._start.text == "Stopping…" and not widget._start.enabled
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)

    first = widget.last_outcome
    assert first.reason == "cancelled" and 1 <= first.steps_done < 40
    assert first.best["step"] <= first.steps_done
    assert widget._status.value.startswith("Stopped after")
    assert widget._resume.enabled
    name = f"{entry.name}-ft"
    assert catalog.get(name).model is first.model  # best weights listed
    assert not [layer for layer in viewer.layers if "preview" in layer.name]  # previews off

    # Resume with one more step: it continues where the run stopped
    widget._steps.value = first.steps_done + 1
    widget._resume.native.click()
    assert widget.running
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    second = widget.last_outcome
    assert second is not first and second.reason == "completed"
    assert second.steps_done == first.steps_done + 1
    xs = widget._loss_plot.series("loss").xs
    assert xs[-1] == first.steps_done + 1 and xs == sorted(xs)  # one curve, continued
    assert catalog.get(name).model is second.model  # the listing follows the resumed run
    assert sum(e.kind == "memory" for e in catalog.entries()) == 1


@pytest.mark.qt
def test_panel_defaults_follow_the_preset_the_benchmark_chose(make_napari_viewer,
                                                              plugin_registered):
    from napari_mpt_deblur.train.finetune import get_finetune_preset

    widget = open_panel(make_napari_viewer())
    for name in ("cpu-laptop", "gpu"):
        widget._preset.value = name
        preset = get_finetune_preset(name)
        assert widget._mode.value == preset.mode
        assert widget._trainable.value == preset.trainable
        assert widget._lr.value == pytest.approx(preset.lr)
    widget._preset.value = "cpu-laptop"
    widget._trainable.value = "norms"
    widget._max_defocus.value = 3.0
    settings = widget.settings()
    assert settings.mode == "replay" and settings.trainable == "norms"
    assert settings.max_defocus_um == 3.0


@pytest.mark.qt
def test_panel_offers_adapting_the_optics_only_for_a_conditioned_model(make_napari_viewer,
                                                                      plugin_registered):
    """The bundled default reads the optics, so its FiLM alone may adapt; a blind start model
    (htcsf) has no such layers, and a choice it lacks falls back to the last third."""
    from napari_mpt_deblur.models.catalog import get_catalog

    catalog = get_catalog()
    assert catalog.optics("mpt-tiny").conditioned and not catalog.optics("htcsf").conditioned
    widget = open_panel(make_napari_viewer())
    widget._model.value = "mpt-tiny"
    assert "optics" in widget._trainable.choices
    widget._trainable.value = "optics"
    assert widget.settings().trainable == "optics"

    widget._model.value = "htcsf"
    assert "optics" not in widget._trainable.choices
    assert widget._trainable.value == "late" and widget.settings().trainable == "late"


@pytest.mark.qt
def test_panel_refuses_impossible_settings(make_napari_viewer, plugin_registered,
                                           shared_catalog, monkeypatch):
    from napari.utils import notifications

    warnings = []
    monkeypatch.setattr(notifications, "show_warning", warnings.append)
    _, entry = shared_catalog
    viewer = make_napari_viewer()
    widget = open_panel(viewer)
    widget._model.value = entry.name
    assert not widget._start.enabled  # no data yet
    viewer.add_image(blurry(7), name="img")
    widget._images.value = [viewer.layers["img"]]
    assert widget._start.enabled
    widget._na.value = 1.3  # oil NA without an immersion index
    widget.start()
    assert not widget.running
    assert warnings and "Immersion index" in warnings[-1]
    widget._index.value = 1.515
    widget._paired_blurred.value = viewer.layers["img"]
    widget.start()
    assert not widget.running and "both" in warnings[-1]


@pytest.mark.qt
def test_panel_start_checkpoint_dialog_bad_cancelled_and_good(
    make_napari_viewer, plugin_registered, shared_catalog, tiny_checkpoint, tmp_path, monkeypatch
):
    import shutil

    from napari_mpt_deblur._widgets import _dialogs
    from napari_mpt_deblur._widgets._finetune import LOAD_CHECKPOINT

    catalog, _ = shared_catalog
    good = shutil.copy(tiny_checkpoint, tmp_path / "start-here.safetensors")
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a checkpoint")
    viewer = make_napari_viewer()
    widget = open_panel(viewer)
    answers = iter([str(bad), None, str(good)])
    # the dialog module is patched, not the Container (see test_deblur_widget)
    monkeypatch.setattr(_dialogs, "ask_checkpoint_path", lambda parent, title: next(answers))
    for _ in range(2):  # a broken file, then a cancelled dialog: back to the default model
        widget._model.value = LOAD_CHECKPOINT
        assert widget._model.value == catalog.default_name()
    widget._model.value = LOAD_CHECKPOINT
    assert widget._model.value == "start-here"


@pytest.mark.qt
def test_panel_reports_a_failing_run_and_recovers(make_napari_viewer, qtbot, plugin_registered,
                                                  make_slow_model, monkeypatch):
    from napari.utils.notifications import notification_manager

    from napari_mpt_deblur.models.catalog import get_catalog

    monkeypatch.setattr(notification_manager, "catch_error", True)
    catalog = get_catalog()
    name = catalog.add_model(make_slow_model(fail=True), "broken-ft-test").name
    try:
        viewer = make_napari_viewer()
        viewer.add_image(blurry(8), name="img")
        widget = open_panel(viewer)
        configure(widget, name, steps=2)
        before = len(notification_manager.records)
        widget._start.native.click()
        qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
        messages = [str(n.message) for n in notification_manager.records[before:]]
        assert any("synthetic failure" in m for m in messages)
        assert widget._status.value.startswith("Failed")
        assert widget.last_outcome is None and not widget._save.enabled
        assert widget._start.text == "Start" and widget._start.enabled
    finally:
        catalog.remove(name)


@pytest.mark.qt
def test_panel_prefers_the_users_data_over_deblurred_results(make_napari_viewer,
                                                             plugin_registered):
    from napari_mpt_deblur._widgets._layers import METADATA_KEY

    viewer = make_napari_viewer()
    viewer.add_image(blurry(1), name="cells")
    viewer.add_image(blurry(2), name="cells [deblurred]",
                     metadata={METADATA_KEY: {"input": "cells", "key": "k"}})
    # the result is the newest and the active layer; the panel still picks the input
    assert viewer.layers.selection.active.name == "cells [deblurred]"
    widget = open_panel(viewer)
    assert [layer.name for layer in widget._images.value] == ["cells"]


@pytest.mark.qt
@pytest.mark.slow
def test_panel_exports_the_saved_checkpoint_for_bioimageio(
    make_napari_viewer, qtbot, plugin_registered, shared_catalog, tmp_path, monkeypatch
):
    pytest.importorskip("bioimageio.spec")
    from napari_mpt_deblur import load_model
    from napari_mpt_deblur._widgets import _dialogs, _finetune_job
    from napari_mpt_deblur.bioimageio import is_bioimageio_package

    _, entry = shared_catalog
    viewer = make_napari_viewer()
    viewer.add_image(blurry(7, (128, 192)), name="cells")
    widget = open_panel(viewer)
    configure(widget, entry.name, steps=2, mode="reblur_only", preview_every=0)
    widget._start.native.click()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    assert widget.last_outcome is not None, widget._status.value
    assert not widget._export.enabled  # nothing saved yet: nothing to export

    saved = widget.save(tmp_path / "cells-ft.safetensors")
    assert saved is not None and widget._export.enabled

    # a name typed without ".zip" must not silently replace the ".zip" file of that name
    (tmp_path / "taken.zip").write_bytes(b"keep me")
    monkeypatch.setattr(_dialogs, "ask_save_path",
                        lambda parent, title, filter, suggestion=None: str(tmp_path / "taken"))
    widget._export.native.click()
    assert not widget.exporting and (tmp_path / "taken.zip").read_bytes() == b"keep me"
    assert widget._status.value.startswith("Not exported")

    target = tmp_path / "export" / "cells-ft.zip"
    asked = []

    def ask(parent, title, filter, suggestion=None):
        asked.append((filter, suggestion))
        return str(target)

    monkeypatch.setattr(_dialogs, "ask_save_path", ask)
    widget._export.native.click()
    assert widget.exporting and not widget._export.enabled
    assert widget._status.value.startswith("Exporting cells-ft.safetensors")
    qtbot.waitUntil(lambda: not widget.exporting, timeout=TIMEOUT_MS)
    assert "*.zip" in asked[0][0] and asked[0][1].endswith("cells-ft.zip")
    assert widget._status.value.startswith("Exported cells-ft.zip"), widget._status.value
    assert target.is_file() and is_bioimageio_package(target)
    assert not list(target.parent.glob(".*partial*"))  # written atomically, nothing left over
    load_model(target, device="cpu")
    assert widget._export.enabled

    # a failing export is reported, and the panel can export again
    def broken(checkpoint, output):
        raise OSError("disk full")
        yield  # pragma: no cover - a generator

    monkeypatch.setattr(_finetune_job, "export_steps", broken)
    widget._export.native.click()
    qtbot.waitUntil(lambda: not widget.exporting, timeout=TIMEOUT_MS)
    assert widget._status.value == "Export failed: disk full"
    assert widget._export.enabled and target.is_file()

    # without bioimageio.spec the button says why and stays off, even after a save
    monkeypatch.setattr(_finetune_job, "bioimageio_unavailable",
                        lambda: "Exporting needs the bioimageio.spec package")
    other = open_panel(make_napari_viewer())
    other._last = widget.last_outcome
    assert other.save(tmp_path / "other.safetensors") is not None
    assert not other._export.enabled
    assert "bioimageio.spec" in other._export.tooltip


@pytest.mark.qt
def test_dropped_tiff_prefills_the_pixel_size(make_napari_viewer, plugin_registered, tmp_path):
    """napari's built-in reader opens TIFFs at scale 1: the pixel size comes from the file."""
    import tifffile

    from napari_mpt_deblur._io import layer_pixel_size_um

    imagej = tmp_path / "imagej.tif"
    tifffile.imwrite(imagej, blurry(8), imagej=True, resolution=(1 / 0.108, 1 / 0.108),
                     metadata={"unit": "um"})
    ome = tmp_path / "ome.ome.tif"
    tifffile.imwrite(ome, blurry(9), ome=True,
                     metadata={"axes": "YX", "PhysicalSizeX": 0.26, "PhysicalSizeY": 0.26})
    dpi = tmp_path / "document.tif"  # 72 dpi: an image editor's default, not a microscope
    tifffile.imwrite(dpi, blurry(10), resolution=(72, 72), resolutionunit="INCH")

    assert layer_pixel_size_um((1.0, 1.0), ("pixel", "pixel"), imagej) == pytest.approx(
        (0.108, 0.108))
    assert layer_pixel_size_um((1.0, 1.0), ("pixel", "pixel"), dpi) is None
    # the layer's own scale wins; a scale in unknown units is not overridden by the file
    assert layer_pixel_size_um((0.5, 0.5), ("µm", "µm"), imagej) == (0.5, 0.5)
    assert layer_pixel_size_um((2.0, 2.0), ("pixel", "pixel"), imagej) is None

    viewer = make_napari_viewer()
    [layer] = viewer.open(imagej)
    assert tuple(layer.scale) == (1.0, 1.0) and layer.source.path  # napari's reader
    widget = open_panel(viewer)
    assert widget._pixel_size.value == pytest.approx(0.108)
    detect = open_panel(viewer, "Detection preview")
    assert detect._pixel_size.value == pytest.approx(0.108) and not detect._pixel_size.enabled

    second = make_napari_viewer()
    [layer] = second.open(ome)
    assert tuple(layer.scale) == (1.0, 1.0)
    assert open_panel(second)._pixel_size.value == pytest.approx(0.26)
    third = make_napari_viewer()
    third.open(dpi)
    assert open_panel(third)._pixel_size.value == 0.0  # "from model": nothing trustworthy
