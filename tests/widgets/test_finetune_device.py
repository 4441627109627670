"""The Fine-tune panel resolves the user's device choice once per run.

Like the Deblur panel (``tests/models/test_info.py``): the start model, the engine's run and
every crop preview take the ``torch.device`` that :func:`finetune_steps` resolved, instead of
resolving ``settings.device`` again (which could pick another device between two calls, e.g.
"auto" while a GPU is being taken, and costs a CUDA query each time).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("magicgui")


@pytest.fixture
def counted_get_device(monkeypatch):
    """Every ``get_device`` of the package, wherever a module bound it, counted."""
    from napari_mpt_deblur import _device
    from napari_mpt_deblur._widgets import _finetune_job  # noqa: F401 - load the job's modules
    from napari_mpt_deblur.engine import predict  # noqa: F401
    from napari_mpt_deblur.train import _finetune_run  # noqa: F401

    original = _device.get_device
    calls: list[tuple] = []

    def counting(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    for name, module in list(sys.modules.items()):
        if name.startswith("napari_mpt_deblur") and getattr(module, "get_device", None) is (
                original):
            monkeypatch.setattr(module, "get_device", counting)
    return calls


def test_a_fine_tune_run_with_crop_previews_resolves_the_device_once(counted_get_device,
                                                                     tmp_path, rng):
    import torch

    from napari_mpt_deblur import create_model
    from napari_mpt_deblur._widgets._finetune_job import (
        FinetuneRequest,
        PreviewCrop,
        run_blocking,
    )
    from napari_mpt_deblur.models.catalog import ModelCatalog
    from napari_mpt_deblur.train.finetune import FinetuneConfig
    from napari_mpt_deblur.train.updates import TrainUpdate, UpdateKind

    torch.manual_seed(0)
    catalog = ModelCatalog(include_bundled=False)
    catalog.add_model(create_model("mpt-test"), "start")
    image = (rng.random((128, 160)) * 1000).astype(np.uint16)
    settings = FinetuneConfig(steps=2, batch_size=1, patch_size=32, lr=1e-3, warmup_steps=0,
                              val_crop_size=128, val_every=1, preview_every=1, state_every=0,
                              device="auto", mode="reblur_only")
    crop = PreviewCrop(data=image[:64, :64].astype(np.float32), box=(0, 0, 64, 64),
                       source="cells")
    request = FinetuneRequest(model="start", settings=settings, work_dir=str(tmp_path),
                              run_name="run", layers=(("cells", image),), preview_crop=crop)
    updates = []
    outcome = run_blocking(request, catalog=catalog, on_update=updates.append)

    previews = [u for u in updates
                if isinstance(u, TrainUpdate) and u.kind is UpdateKind.PREVIEW]
    assert outcome is not None and outcome.steps_done == 2
    assert len(previews) >= 2 and previews[0].value["source"] == "cells"  # the crop's previews
    assert counted_get_device == [("auto",)]
