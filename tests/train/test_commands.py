"""End-to-end tests of ``mpt-deblur train`` and ``mpt-deblur finetune`` on tiny data."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
import tifffile
import torch
import yaml

from napari_mpt_deblur.cli import main


@pytest.fixture
def smoke_config(tiny_data_root, tmp_path):
    cfg = {
        "model": "mpt-test", "data_root": str(tiny_data_root), "train_dirs": ["train"],
        "val_dirs": ["val"], "patch_size": 128, "batch_size": 1, "steps": 1,
        "val_every": 1, "ckpt_every": 1, "num_val_patches": 1, "warmup_steps": 0,
        "device": "cpu", "out_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_train_then_resume_then_finetune(smoke_config, tmp_path, tiny_data_root, caplog,
                                         monkeypatch):
    run = tmp_path / "run"
    assert main(["train", "--config", str(smoke_config), "--no-progress"]) == 0
    assert torch.load(run / "state.pt", weights_only=True)["step"] == 1
    # A second plain start refuses to clobber the run; --resume extends it.
    assert main(["train", "--config", str(smoke_config), "--no-progress"]) == 1
    assert main(["train", "--config", str(smoke_config), "--resume", "--steps", "2",
                 "--no-progress"]) == 0
    assert torch.load(run / "state.pt", weights_only=True)["step"] == 2
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["event"] == "train"] == [1, 2]

    # A new stage starts from another run's state, its weights exactly as they were saved.
    import napari_mpt_deblur.train.loop as loop

    real_fit, seen = loop.fit, {}

    def spy_fit(cfg, model=None, **kwargs):
        seen.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real_fit(cfg, model=model, **kwargs)

    monkeypatch.setattr(loop, "fit", spy_fit)
    assert main(["train", "--config", str(smoke_config), "--init", str(run / "state.pt"),
                 "--out", str(tmp_path / "stage2"), "--no-progress"]) == 0
    start = torch.load(run / "state.pt", weights_only=True)["model"]
    assert seen.keys() == start.keys()
    assert all(torch.equal(seen[k], start[k]) for k in start)
    # ... but not into a config whose routing contradicts the state's.
    compat = tmp_path / "compat.yaml"
    compat.write_text(yaml.safe_dump({**yaml.safe_load(smoke_config.read_text()),
                                      "routing": "compat"}))
    assert main(["train", "--config", str(compat), "--init", str(run / "state.pt"),
                 "--out", str(tmp_path / "stage3"), "--no-progress"]) == 1
    assert "trained with routing 'aligned'" in caplog.text

    images = tmp_path / "mine"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        tifffile.imwrite(images / f"b{i}.tif", rng.integers(100, 400, (130, 140), np.uint16))
    out = tmp_path / "ft.safetensors"
    args = ["finetune", str(images), "--model", str(run / "best.safetensors"), "-o", str(out),
            "--steps", "1", "--batch-size", "1", "--patch-size", "128", "--device", "cpu",
            "--pixel-size-um", "0.5", "--na", "0.8", "--max-defocus-um", "6",
            "--no-progress"]
    with caplog.at_level(logging.INFO):
        assert main(args) == 0
    from napari_mpt_deblur.models.checkpoint import read_header

    header = read_header(out)
    assert header["finetune"]["settings"]["pixel_size_um"] == 0.5
    assert header["finetune"]["settings"]["max_defocus_um"] == 6.0
    # replay and the selection score were simulated at the optics given
    assert header["finetune"]["replay_simulation"]["numerical_aperture_range"] == [0.8, 0.8]
    assert header["finetune"]["score"]["name"] == "simulated PSNR at your optics"
    # the log says which weights the checkpoint holds, and why
    assert re.search(r"(kept the starting model|fine-tuned weights of step 1)", caplog.text)
    assert header["finetune"]["images"] == ["b0.tif", "b1.tif"]
    assert main(args) == 1  # refuses to overwrite without --overwrite
