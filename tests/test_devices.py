"""Device choice: a missing GPU falls back to the CPU with a logged notice; bad names fail clearly.

CUDA and MPS are hidden by monkeypatching what torch reports, so these tests mean the same on a
laptop, a CI runner and a GPU workstation.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from napari_mpt_deblur import _device, deblur
from napari_mpt_deblur._device import DEVICE_CHOICES, get_device, list_devices
from napari_mpt_deblur.engine.predict import DeblurReport


@pytest.fixture
def no_gpu(monkeypatch):
    """A machine without CUDA and without MPS."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(_device, "_mps_available", lambda: False)


@pytest.fixture
def one_cuda_gpu(monkeypatch):
    """A machine that reports exactly one CUDA device (never used for computation here)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(_device, "_mps_available", lambda: False)


class Scale(torch.nn.Module):
    size_multiple = 128
    in_channels = 1

    def __init__(self) -> None:
        super().__init__()
        self.factor = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        return x * self.factor


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.name == _device.__name__]


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3", "mps", "CUDA", " cuda:1 "])
def test_missing_gpu_falls_back_to_cpu_with_a_notice(no_gpu, caplog, name):
    with caplog.at_level(logging.WARNING, logger=_device.__name__):
        device = get_device(name)
    assert device == torch.device("cpu")
    messages = _warnings(caplog)
    assert len(messages) == 1
    assert "not available" in messages[0] and "CPU instead" in messages[0]
    assert name.strip().lower() in messages[0]


def test_auto_and_cpu_pick_the_cpu_silently_without_gpu(no_gpu, caplog):
    with caplog.at_level(logging.WARNING, logger=_device.__name__):
        assert get_device("auto") == torch.device("cpu")
        assert get_device(None) == torch.device("cpu")
        assert get_device("cpu") == torch.device("cpu")
        assert get_device(torch.device("cpu")) == torch.device("cpu")
    assert _warnings(caplog) == []  # nothing was asked for that is missing
    assert list_devices() == ["cpu"]


def test_fallback_can_be_refused(no_gpu):
    for name in ("cuda", "cuda:2", "mps"):
        with pytest.raises(ValueError, match="not available here"):
            get_device(name, fallback=False)


def test_gpu_index_beyond_the_installed_ones_falls_back(one_cuda_gpu, caplog):
    assert get_device("cuda") == torch.device("cuda", 0)
    assert get_device("auto") == torch.device("cuda", 0)
    assert list_devices() == ["cuda:0", "cpu"]
    with caplog.at_level(logging.WARNING, logger=_device.__name__):
        assert get_device("cuda:1") == torch.device("cpu")
    assert "'cuda:1' is not available" in _warnings(caplog)[0]
    assert "cuda:0" in _warnings(caplog)[0]  # says what torch does see


@pytest.mark.parametrize("name", ["tpu", "gpu", "cuda:x", "cuda:", "", "metal"])
def test_unknown_device_names_list_the_choices(name):
    with pytest.raises(ValueError, match="not understood") as info:
        get_device(name)
    for choice in DEVICE_CHOICES:
        assert choice in str(info.value)


def test_deblur_on_a_missing_gpu_runs_on_the_cpu(no_gpu, caplog, rng):
    image = (rng.random((40, 50)) * 1000).astype(np.uint16)
    report = DeblurReport()
    with caplog.at_level(logging.WARNING):
        out = deblur(image, Scale(), device="cuda", report=report)
    np.testing.assert_array_equal(out, image)  # identity model: the job really ran
    assert report.device == "cpu"
    assert any("CPU instead" in m for m in _warnings(caplog))


def test_load_model_on_a_missing_gpu_lands_on_the_cpu(no_gpu, tiny_checkpoint, caplog):
    from napari_mpt_deblur import load_model

    with caplog.at_level(logging.WARNING):
        model = load_model(tiny_checkpoint, device="mps")
    assert next(model.parameters()).device == torch.device("cpu")
    assert any("'mps' is not available" in m for m in _warnings(caplog))


def test_cli_deblur_with_a_missing_gpu_still_writes_output(no_gpu, tiny_checkpoint, tmp_path,
                                                            rng, caplog):
    from napari_mpt_deblur import cli
    from napari_mpt_deblur._io import read_image, write_image

    image = (rng.random((64, 72)) * 200).astype(np.uint8)
    src = write_image(tmp_path / "in" / "x.tif", image)
    with caplog.at_level(logging.WARNING):
        code = cli.main(["deblur", str(src), "-o", str(tmp_path / "out"), "--model",
                         str(tiny_checkpoint), "--device", "cuda:0", "--no-progress"])
    assert code == 0
    out, _ = read_image(tmp_path / "out" / "x_deblurred.tif")
    assert out.shape == image.shape and out.dtype == np.uint8
    assert any("CPU instead" in m for m in _warnings(caplog))
