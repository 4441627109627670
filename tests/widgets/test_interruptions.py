"""Interrupting running jobs in a real viewer: remove their input layer, or close the viewer.

Each widget is opened through the plugin manifest and started on a job slowed down enough to be
caught in the middle. Whatever happens next must raise nothing (pytest-qt's exception capture),
add no layer built from partial data, leave no worker or engine thread running, and leave the
widget ready for the next job. The behaviour chosen for each case is described in
docs/reliability.md, section 5.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

PLUGIN = "napari-mpt-deblur"
pytestmark = pytest.mark.qt

TIMEOUT_MS = 120_000
STOP_MS = 10_000  # "promptly": the step or tile in progress, then the threads are gone


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------
def open_widget(viewer, name):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def engine_threads() -> set[threading.Thread]:
    """The helper threads in which the Deblur worker runs the engine."""
    return {t for t in threading.enumerate() if t.name.startswith("mpt-deblur") and t.is_alive()}


class ThreadCheck:
    """What runs in the background before a job, to check that nothing is left after it."""

    def __init__(self) -> None:
        from qtpy.QtCore import QThreadPool

        self.pool = QThreadPool.globalInstance()
        self.active = self.pool.activeThreadCount()
        self.engines = engine_threads()

    def leftovers(self, worker) -> list[str]:
        left = []
        if worker.is_running:
            left.append("worker still running")
        if self.pool.activeThreadCount() > self.active:
            left.append(f"{self.pool.activeThreadCount() - self.active} pool thread(s) busy")
        left += [t.name for t in engine_threads() - self.engines]
        return left

    def wait_clean(self, qtbot, worker, timeout_ms: int = STOP_MS) -> None:
        qtbot.waitUntil(lambda: not self.leftovers(worker), timeout=timeout_ms)


def settle(qtbot, ms: int = 300) -> None:
    """Let queued signals (a late progress or result) arrive, if any were still on the way."""
    qtbot.wait(ms)


@pytest.fixture
def slow_entry(make_slow_model):
    """An in-memory ``mpt-test`` model taking 0.2 s per tile, listed in the shared catalog."""
    from napari_mpt_deblur.models.catalog import get_catalog

    catalog = get_catalog()
    model = make_slow_model(delay_s=0.2)
    name = catalog.add_model(model, "slow-interrupt-test").name
    yield name, model
    if name in catalog:
        catalog.remove(name)


# ------------------------------------------------------------------------------------------
# Defocus Deblur
# ------------------------------------------------------------------------------------------
def start_deblur(viewer, qtbot, model_name, image):
    viewer.add_image(image, name="big")
    widget = open_widget(viewer, "Deblur")
    widget._model.value = model_name
    widget._device.value = "cpu"
    widget._tile.value = "128"  # at least 0.2 s for each of several tiles
    threads = ThreadCheck()
    widget._run.native.click()
    qtbot.waitUntil(lambda: widget._progress.value >= 1, timeout=TIMEOUT_MS)
    return widget, widget._job, threads


def test_deblur_removing_the_input_cancels_and_adds_nothing(
    make_napari_viewer, qtbot, plugin_registered, smooth_image, slow_entry
):
    name, model = slow_entry
    image = np.tile(smooth_image, (3, 3))
    original = image.copy()
    viewer = make_napari_viewer()
    widget, job, threads = start_deblur(viewer, qtbot, name, image)
    calls = model.calls

    with qtbot.captureExceptions() as exceptions:
        viewer.layers.remove("big")
        assert job.cancel.is_set()  # at once, not when the run ends
        qtbot.waitUntil(lambda: not widget.running, timeout=STOP_MS)
        threads.wait_clean(qtbot, job.worker)
        settle(qtbot)

    assert not exceptions, exceptions
    assert model.calls <= calls + 1 < widget._progress.max  # stopped within one tile
    assert len(viewer.layers) == 0  # no result of a layer that is gone
    assert widget._status.value.startswith("Cancelled") and "'big' was removed" in \
        widget._status.value
    np.testing.assert_array_equal(image, original)
    # ready for the next job
    assert widget._run.text == "Deblur" and widget._layer.value is None
    viewer.add_image(smooth_image, name="next")
    assert widget._layer.value is not None and widget._run.enabled


def test_deblur_removing_another_layer_lets_the_run_finish(
    make_napari_viewer, qtbot, plugin_registered, smooth_image, slow_entry
):
    from napari_mpt_deblur import deblur

    name, model = slow_entry
    viewer = make_napari_viewer()
    viewer.add_image(smooth_image, name="bystander")
    image = np.tile(smooth_image, (2, 2))
    widget, job, threads = start_deblur(viewer, qtbot, name, image)

    with qtbot.captureExceptions() as exceptions:
        viewer.layers.remove("bystander")
        qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
        threads.wait_clean(qtbot, job.worker)

    assert not exceptions, exceptions
    assert not job.cancel.is_set()
    assert [layer.name for layer in viewer.layers] == ["big", "big [deblurred]"]
    del model.forward  # the reference result at full speed
    expected = deblur(image, model, axes="YX", device="cpu", tile=128)
    np.testing.assert_array_equal(viewer.layers["big [deblurred]"].data, expected)
    assert widget._status.value.startswith("Done")


def test_deblur_closing_the_viewer_stops_the_run(
    make_napari_viewer, qtbot, plugin_registered, smooth_image, slow_entry
):
    name, model = slow_entry
    viewer = make_napari_viewer()
    widget, job, threads = start_deblur(viewer, qtbot, name, np.tile(smooth_image, (3, 3)))
    calls = model.calls
    added = []
    viewer.layers.events.inserted.connect(lambda event: added.append(event.value.name))

    with qtbot.captureExceptions() as exceptions:
        viewer.close()
        assert job.cancel.is_set()
        started = time.monotonic()
        threads.wait_clean(qtbot, job.worker)
        stopped_after = time.monotonic() - started
        qtbot.waitUntil(lambda: not widget.running, timeout=STOP_MS)
        settle(qtbot)

    assert not exceptions, exceptions
    assert stopped_after < 5.0
    assert model.calls <= calls + 1
    assert added == [] and len(viewer.layers) == 0  # nothing added to the closed viewer


def test_deblur_close_window_stops_the_run_before_anything_else_happens(
    make_napari_viewer, qtbot, plugin_registered, smooth_image, slow_entry
):
    """File › Close Window closes only napari's Qt window: the layers stay and Qt deletes the
    window later, after queued worker signals. The close event itself must stop the job."""
    name, model = slow_entry
    viewer = make_napari_viewer()
    widget, job, threads = start_deblur(viewer, qtbot, name, np.tile(smooth_image, (3, 3)))
    calls = model.calls

    with qtbot.captureExceptions() as exceptions:
        viewer.window._qt_window.close()  # what the menu item does, without its dialog
        assert job.cancel.is_set()  # before Qt had a chance to deliver anything else
        assert [layer.name for layer in viewer.layers] == ["big"]
        viewer.close()  # napari's own cleanup, while its Qt objects still exist
        threads.wait_clean(qtbot, job.worker)
        qtbot.waitUntil(lambda: not widget.running, timeout=STOP_MS)
        settle(qtbot)

    assert not exceptions, exceptions
    assert model.calls <= calls + 1
    assert job.reason == "the viewer was closed"


def test_quitting_a_worker_stops_the_engine_without_its_cancel_event(
    qtbot, smooth_image, make_slow_model
):
    """napari quits the workers registered with a window that closes, without knowing about
    the job's cancel event; the engine's helper thread must stop all the same."""
    from napari_mpt_deblur._widgets._worker import DeblurRequest, start_worker
    from napari_mpt_deblur.models.catalog import ModelCatalog

    model = make_slow_model(delay_s=0.2)
    catalog = ModelCatalog(include_bundled=False)
    catalog.add_model(model, "slow")
    request = DeblurRequest(image=np.tile(smooth_image, (3, 3)), axes="YX", model="slow",
                            device="cpu", tile=128, label="quit-test")
    threads = ThreadCheck()
    progress, returned = [], []
    worker = start_worker(request, catalog=catalog, on_progress=progress.append,
                          on_returned=returned.append)
    qtbot.waitUntil(lambda: any(p.done >= 1 for p in progress), timeout=TIMEOUT_MS)

    worker.quit()
    calls = model.calls
    threads.wait_clean(qtbot, worker)

    assert model.calls <= calls + 1  # not the remaining tiles of the image
    assert returned == []  # a quit worker returns nothing


# ------------------------------------------------------------------------------------------
# Fine-tune
# ------------------------------------------------------------------------------------------
def blurry(seed: int, shape=(128, 192)) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    sharp = np.zeros(shape)
    for cy, cx in rng.uniform(8, np.array(shape) - 8, size=(25, 2)):
        sharp[int(cy), int(cx)] = 4000.0
    image = 100 + gaussian_filter(sharp, 3.0) * 20 + rng.normal(0, 4, shape)
    return image.clip(0, 65535).astype(np.uint16)


def start_finetune(viewer, qtbot, entry_name, *, steps, preview_every=0):
    widget = open_widget(viewer, "Fine-tune")
    widget._model.value = entry_name
    for field, value in dict(device="cpu", batch_size=1, patch_size=32, lr=1e-3,
                             time_budget=0.0, val_every=1, preview_every=preview_every,
                             steps=steps, mode="reblur_only").items():
        getattr(widget, f"_{field}").value = value
    threads = ThreadCheck()
    widget._start.native.click()
    assert widget.running
    qtbot.waitUntil(lambda: len(widget._loss_plot.series("loss").xs) >= 1, timeout=TIMEOUT_MS)
    return widget, widget._job, threads


def test_finetune_closing_the_viewer_stops_the_run(
    make_napari_viewer, qtbot, plugin_registered, shared_catalog
):
    from napari_mpt_deblur.models.resolve import load_model
    from napari_mpt_deblur.train._common import load_state_file

    catalog, entry = shared_catalog
    viewer = make_napari_viewer()
    viewer.add_image(blurry(6, (128, 256)), name="mine")
    names_before = set(catalog.names())
    widget, job, threads = start_finetune(viewer, qtbot, entry.name, steps=500,
                                          preview_every=1)
    added = []
    viewer.layers.events.inserted.connect(lambda event: added.append(event.value.name))

    with qtbot.captureExceptions() as exceptions:
        viewer.close()
        assert job.cancel.is_set()
        threads.wait_clean(qtbot, job.worker)
        qtbot.waitUntil(lambda: not widget.running, timeout=STOP_MS)
        settle(qtbot)

    assert not exceptions, exceptions
    assert job.last_step < 500
    assert added == [] and len(viewer.layers) == 0  # no preview added to the closed viewer
    assert set(catalog.names()) == names_before  # nothing listed by a closed panel
    # whatever the run wrote is complete: a loadable checkpoint and state, or nothing
    work = job.request.checkpoint_path.parent
    assert not [p.name for p in work.iterdir() if p.name.startswith(".")]  # no temp files
    if job.request.checkpoint_path.exists():
        load_model(job.request.checkpoint_path, device="cpu")
    if job.request.state_path.exists():
        assert load_state_file(job.request.state_path, "finetune")["step"] <= 500


def test_finetune_removing_the_training_layer_keeps_training_on_its_copy(
    make_napari_viewer, qtbot, plugin_registered, shared_catalog
):
    catalog, entry = shared_catalog
    viewer = make_napari_viewer()
    viewer.add_image(blurry(6, (128, 256)), name="mine")
    widget, job, threads = start_finetune(viewer, qtbot, entry.name, steps=4, preview_every=1)
    qtbot.waitUntil(lambda: "mine [fine-tune preview]" in viewer.layers, timeout=TIMEOUT_MS)

    with qtbot.captureExceptions() as exceptions:
        viewer.layers.remove("mine")
        viewer.layers.remove("mine [fine-tune preview]")
        assert widget.running and not job.cancel.is_set()
        qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
        threads.wait_clean(qtbot, job.worker)

    assert not exceptions, exceptions
    outcome = widget.last_outcome
    assert outcome is not None, widget._status.value
    assert outcome.reason == "completed" and outcome.steps_done == 4
    assert outcome.data.names == ["mine"]  # the planes read when the run started
    assert len(viewer.layers) == 0  # no preview of the removed layer came back
    assert catalog.get(f"{entry.name}-ft").model is outcome.model
    assert widget._status.value.startswith("Done after 4 steps")
    assert widget._start.text == "Start" and widget._save.enabled and widget._resume.enabled


# ------------------------------------------------------------------------------------------
# Detection preview
# ------------------------------------------------------------------------------------------
@pytest.fixture
def slow_detector(monkeypatch):
    """Make each detector pass take 0.5 s, so that a run can be interrupted."""
    from napari_mpt_deblur._widgets import _detect_job

    original = _detect_job.detect_nuclei
    calls = []

    def slow(image, config):
        calls.append(time.monotonic())
        time.sleep(0.5)
        return original(image, config)

    monkeypatch.setattr(_detect_job, "detect_nuclei", slow)
    return calls


def start_detection(viewer, qtbot):
    from napari_mpt_deblur._widgets._layers import METADATA_KEY

    rng = np.random.default_rng(0)
    image = rng.normal(100, 10, (96, 96)).astype(np.float32)
    image[40:52, 40:52] += 1000
    viewer.add_image(image, name="blobs")
    viewer.add_image(image * 1.1, name="blobs [deblurred]",
                     metadata={METADATA_KEY: {"input": "blobs", "key": "k"}})
    widget = open_widget(viewer, "Detection preview")
    threads = ThreadCheck()
    widget._run.native.click()
    assert widget.running
    return widget, widget._job, threads


@pytest.mark.parametrize("removed", ["blobs", "blobs [deblurred]"])
def test_detection_removing_a_layer_stops_the_run_quietly(
    make_napari_viewer, qtbot, plugin_registered, slow_detector, removed
):
    from napari.utils.notifications import notification_manager

    viewer = make_napari_viewer()
    widget, job, threads = start_detection(viewer, qtbot)
    qtbot.waitUntil(lambda: len(slow_detector) >= 1, timeout=TIMEOUT_MS)
    before = len(notification_manager.records)

    with qtbot.captureExceptions() as exceptions:
        viewer.layers.remove(removed)
        assert job.abandoned
        qtbot.waitUntil(lambda: not widget.running, timeout=STOP_MS)
        threads.wait_clean(qtbot, job.worker)
        settle(qtbot)

    assert not exceptions, exceptions
    assert len(slow_detector) == 1  # abandoned before the second pass
    assert [layer.name for layer in viewer.layers] == [
        name for name in ("blobs", "blobs [deblurred]") if name != removed]
    assert widget.last_outcome is None and widget.runs_completed == 0
    assert f"'{removed}' was removed" in widget._status.value
    assert len(notification_manager.records) == before  # a user action, not an error
    assert widget._run.text == "Detect"


def test_detection_closing_the_viewer_stops_the_run(
    make_napari_viewer, qtbot, plugin_registered, slow_detector
):
    viewer = make_napari_viewer()
    widget, job, threads = start_detection(viewer, qtbot)
    widget._live.value = True  # a pending live re-run must not start on the closed viewer
    qtbot.waitUntil(lambda: len(slow_detector) >= 1, timeout=TIMEOUT_MS)
    added = []
    viewer.layers.events.inserted.connect(lambda event: added.append(event.value.name))

    with qtbot.captureExceptions() as exceptions:
        viewer.close()
        assert job.abandoned
        threads.wait_clean(qtbot, job.worker)
        qtbot.waitUntil(lambda: not widget.running, timeout=STOP_MS)
        settle(qtbot, 600)  # longer than the live re-run delay

    assert not exceptions, exceptions
    assert len(slow_detector) == 1
    assert added == [] and len(viewer.layers) == 0
    assert widget.runs_completed == 0
