"""The worker generator, driven synchronously (no Qt)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_mpt_deblur._widgets._worker import (
    DeblurFailed,
    DeblurProgress,
    DeblurRequest,
    Stage,
    clear_model_cache,
    deblur_steps,
    describe_progress,
    describe_work,
    format_clock,
    plural,
    returning_errors,
    run_blocking,
)
from napari_mpt_deblur.engine.predict import deblur
from napari_mpt_deblur.models.catalog import ModelCatalog


@pytest.fixture
def catalog(tiny_checkpoint) -> ModelCatalog:
    catalog = ModelCatalog(include_bundled=False)
    catalog.add_checkpoint(tiny_checkpoint, name="tiny")
    yield catalog
    clear_model_cache()


def test_run_blocking_matches_the_engine_and_reports_progress(catalog, smooth_image):
    stack = np.stack([smooth_image, smooth_image.T])
    updates = []
    outcome = run_blocking(
        DeblurRequest(image=stack, axes="ZYX", model="tiny", device="cpu", tile=0),
        catalog=catalog, progress=updates.append,
    )
    expected = deblur(stack, catalog.load("tiny", "cpu"), axes="ZYX", device="cpu", tile=0)
    np.testing.assert_array_equal(outcome.data, expected)
    assert updates[0].stage is Stage.LOADING
    running = [(u.done, u.total) for u in updates if u.stage is Stage.RUNNING]
    assert running == [(0, 0), (1, 2), (2, 2)]  # started, then one record per plane
    assert all(u.planes == 2 for u in updates if u.stage is Stage.RUNNING)
    assert updates[-1].elapsed_s > 0
    assert outcome.report["planes"] == 2 and outcome.report["device"] == "cpu"
    assert outcome.entry["name"] == "tiny" and len(outcome.model_info["sha256"]) == 64


def test_model_is_cached_between_runs(catalog, smooth_image, monkeypatch):
    from napari_mpt_deblur.models import resolve

    reads = []
    original = resolve.load_checkpoint
    monkeypatch.setattr(resolve, "load_checkpoint",
                        lambda *a, **k: reads.append(a) or original(*a, **k))
    request = DeblurRequest(image=smooth_image, axes="YX", model="tiny", device="cpu")
    run_blocking(request, catalog=catalog)
    run_blocking(request, catalog=catalog)
    assert len(reads) == 1  # the file is read once; the second run uses the cached network


def test_cancel_stops_within_one_tile_and_returns_none(catalog, smooth_image, make_slow_model):
    model = make_slow_model(delay_s=0.0)
    cancel = threading.Event()
    original = model.forward

    def forward(x):
        if model.calls == 1:  # the user cancels while the second tile is being computed
            cancel.set()
        return original(x)

    model.forward = forward
    catalog.add_model(model, "slow")
    outcome = run_blocking(
        DeblurRequest(image=np.tile(smooth_image, (3, 3)), axes="YX", model="slow",
                      device="cpu", tile=128),
        catalog=catalog, cancel=cancel,
    )
    assert outcome is None
    assert model.calls == 2  # the tile in flight finished, no further tile was started


def _engine_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("mpt-deblur")]


def test_closing_the_generator_stops_the_engine(catalog, smooth_image, make_slow_model):
    model = make_slow_model(delay_s=0.05)
    catalog.add_model(model, "slow")
    steps = deblur_steps(DeblurRequest(image=np.tile(smooth_image, (3, 3)), axes="YX",
                                       model="slow", device="cpu", tile=128), catalog=catalog)
    for update in steps:
        if update.stage is Stage.RUNNING:
            break
    steps.close()  # what an abandoned napari worker ends up doing
    for thread in _engine_threads():
        thread.join(timeout=60)
    assert not _engine_threads()
    assert model.calls < 16  # 16 tiles in all


def test_errors_raise_synchronously_and_are_returned_to_the_gui(catalog, smooth_image,
                                                                make_slow_model):
    catalog.add_model(make_slow_model(fail=True), "broken")
    request = DeblurRequest(image=smooth_image, axes="YX", model="broken", device="cpu")
    with pytest.raises(RuntimeError, match="synthetic failure"):
        run_blocking(request, catalog=catalog)
    steps = returning_errors(deblur_steps(request, catalog=catalog, cancel=None), DeblurFailed,
                             "deblurring")
    with pytest.raises(StopIteration) as stop:
        while True:
            next(steps)
    assert isinstance(stop.value.value, DeblurFailed)
    assert "synthetic failure" in str(stop.value.value.error)
    with pytest.raises(ValueError, match="unknown model"):
        run_blocking(DeblurRequest(image=smooth_image, axes="YX", model="nope"), catalog=catalog)


def test_status_lines_count_what_is_processed_with_percent_and_eta():
    assert [plural(n, "tile") for n in (0, 1, 2)] == ["0 tiles", "1 tile", "2 tiles"]
    assert describe_work(1, 1) == "1 tile"
    assert describe_work(1, 9) == "9 tiles"
    assert describe_work(5, 5) == "5 planes"  # untiled planes are not tiles
    assert describe_work(5, 20) == "5 planes × 4 tiles"
    assert describe_work(3, 7) == "3 planes, 7 tiles in all"
    assert format_clock(7) == "0:07" and format_clock(3723) == "1:02:03"

    assert describe_progress(DeblurProgress(Stage.LOADING)) == "Loading model…"
    assert describe_progress(DeblurProgress(Stage.RUNNING, planes=1)) == "Deblurring…"
    assert describe_progress(DeblurProgress(Stage.RUNNING, planes=3)) == "Deblurring 3 planes…"
    # one plane in 9 tiles: tiles; 1 of 9 took 2 s -> 16 s to go
    assert describe_progress(DeblurProgress(Stage.RUNNING, 1, 9, planes=1, elapsed_s=2.0)) == \
        "Deblurring… 1/9 tiles · 11% · ETA 0:16"
    # a stack of untiled planes: planes
    assert describe_progress(DeblurProgress(Stage.RUNNING, 2, 4, planes=4, elapsed_s=2.0)) == \
        "Deblurring… 2/4 planes · 50% · ETA 0:02"
    # a tiled stack: the plane in progress and the tiles
    assert describe_progress(DeblurProgress(Stage.RUNNING, 5, 8, planes=2, elapsed_s=5.0)) == \
        "Deblurring… plane 2/2 · 5/8 tiles · 62% · ETA 0:03"
    # done: no ETA; a single tile is "1/1 tile", never "1 tiles"
    assert describe_progress(DeblurProgress(Stage.RUNNING, 1, 1, planes=1, elapsed_s=1.0)) == \
        "Deblurring… 1/1 tile · 100%"
