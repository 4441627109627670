"""The worker generator, driven synchronously (no Qt)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_mpt_deblur._widgets._worker import (
    DeblurFailed,
    DeblurRequest,
    Stage,
    clear_model_cache,
    deblur_steps,
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
    assert running == [(1, 2), (2, 2)]  # one record per plane
    assert outcome.report["planes"] == 2 and outcome.report["device"] == "cpu"
    assert outcome.entry["name"] == "tiny" and len(outcome.model_info["sha256"]) == 64


def test_model_is_cached_between_runs(catalog, smooth_image, monkeypatch):
    loads = []
    original = catalog.load
    monkeypatch.setattr(catalog, "load", lambda *a, **k: loads.append(a) or original(*a, **k))
    request = DeblurRequest(image=smooth_image, axes="YX", model="tiny", device="cpu")
    run_blocking(request, catalog=catalog)
    run_blocking(request, catalog=catalog)
    assert len(loads) == 1


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
