"""Resource faults: a missing GPU falls back to the CPU with a logged notice (library) or stops
the command line with one clear error (CLI), bad device names fail clearly, and running out of
memory falls back to smaller tiles (or fails clearly).

CUDA and MPS are hidden by monkeypatching what torch reports, and out-of-memory errors are
raised by stand-in models, so these tests mean the same on a laptop, a CI runner and a GPU
workstation.
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


def _cli_args(command: str, tmp_path, checkpoint) -> list[str]:
    """A complete, otherwise valid command line for each subcommand that takes --device."""
    image = tmp_path / "in" / "x.tif"
    return {
        "deblur": ["deblur", str(image), "-o", str(tmp_path / "out"), "--model", str(checkpoint)],
        "demo": ["demo", "-o", str(tmp_path / "out"), "--model", str(checkpoint)],
        "evaluate": ["evaluate", "-o", str(tmp_path / "out"), "--data", str(tmp_path)],
        "finetune": ["finetune", str(image), "-o", str(tmp_path / "out" / "ft.safetensors")],
        "train": ["train", "--config", str(tmp_path / "cfg.yaml")],
    }[command]


def test_every_device_option_is_covered_by_the_cli_tests():
    """New subcommands with --device must be added to the parametrisation below."""
    from napari_mpt_deblur import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    with_device = {name for name, p in sub.choices.items()
                   if any("--device" in a.option_strings for a in p._actions)}
    assert with_device == {"deblur", "demo", "evaluate", "finetune", "train"}


@pytest.mark.parametrize("command", ["deblur", "demo", "evaluate", "finetune", "train"])
@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps"])
def test_cli_with_a_missing_gpu_fails_once_and_lists_the_devices(
    no_gpu, tiny_checkpoint, tmp_path, caplog, capsys, command, device
):
    from napari_mpt_deblur import cli

    with caplog.at_level(logging.WARNING):
        code = cli.main([*_cli_args(command, tmp_path, tiny_checkpoint), "--device", device])
    assert code == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1  # said once, as an error, not as a fallback warning
    assert f"'{device}' is not available" in errors[0]
    assert "available: cpu" in errors[0] and "--device auto" in errors[0]
    assert not any("CPU instead" in m for m in _warnings(caplog))
    assert all(r.exc_info is None for r in caplog.records)  # no traceback
    assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # stopped before any work


def test_cli_device_auto_runs_on_the_cpu_without_warnings(no_gpu, tiny_checkpoint, tmp_path,
                                                         rng, caplog):
    from napari_mpt_deblur import cli
    from napari_mpt_deblur._io import read_image, write_image

    image = (rng.random((64, 72)) * 200).astype(np.uint8)
    src = write_image(tmp_path / "in" / "x.tif", image)
    with caplog.at_level(logging.WARNING):
        code = cli.main(["deblur", str(src), "-o", str(tmp_path / "out"), "--model",
                         str(tiny_checkpoint), "--device", "auto", "--no-progress"])
    assert code == 0
    out, _ = read_image(tmp_path / "out" / "x_deblurred.tif")
    assert out.shape == image.shape and out.dtype == np.uint8
    assert _warnings(caplog) == []


def test_cli_accepts_a_present_gpu_by_any_spelling(one_cuda_gpu):
    from napari_mpt_deblur._device import require_device

    assert require_device(" CUDA:0 ") == "cuda:0"
    assert require_device("cuda") == "cuda"
    assert require_device(None) == "auto"
    with pytest.raises(ValueError, match=r"'cuda:1' is not available.*cuda:0, cpu"):
        require_device("cuda:1")


def test_train_checks_the_device_named_in_its_config(no_gpu, tmp_path, caplog):
    from napari_mpt_deblur import cli

    config = tmp_path / "cfg.yaml"
    config.write_text("model: mpt-test\ndevice: cuda\n", encoding="utf-8")
    assert cli.main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 1
    assert "'cuda' is not available" in caplog.text
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------- out of memory
class OutOfMemoryAbove(Scale):
    """Identity model that runs out of memory on inputs wider than ``limit`` pixels."""

    def __init__(self, limit: int, error: type[BaseException] = torch.cuda.OutOfMemoryError):
        super().__init__()
        self.limit, self.error, self.widths = limit, error, []

    def forward(self, x):
        self.widths.append(int(x.shape[-1]))
        if x.shape[-1] > self.limit:
            raise self.error("CUDA out of memory. Tried to allocate 12.00 GiB")
        return super().forward(x)


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError, MemoryError])
def test_out_of_memory_halves_the_tile_until_it_fits(rng, caplog, error):
    image = (rng.random((300, 520)) * 4000).astype(np.uint16)
    model = OutOfMemoryAbove(limit=256, error=error)
    report = DeblurReport()
    with caplog.at_level(logging.WARNING):
        out = deblur(image, model, device="cpu", tile=0, report=report)  # whole plane first
    np.testing.assert_array_equal(out, image)  # the smaller tiles still give the full result
    assert model.widths[0] == 640 and report.tile == 256 and len(report.retries) == 1
    assert "out of memory" in caplog.text and "256 px tiles" in caplog.text


def test_out_of_memory_even_with_the_smallest_tile_is_a_clear_memory_error(rng):
    model = OutOfMemoryAbove(limit=64)  # below the model multiple: nothing can fit
    report = DeblurReport()
    with pytest.raises(MemoryError, match=r"even with the smallest tile \(128 px\)"):
        deblur(rng.random((300, 300)).astype(np.float32), model, device="cpu", report=report)
    assert report.retries  # it tried smaller tiles first


def test_other_runtime_errors_are_not_mistaken_for_out_of_memory(rng):
    class Broken(Scale):
        def forward(self, x):
            raise RuntimeError("Expected all tensors to be on the same device")

    with pytest.raises(RuntimeError, match="same device"):
        deblur(rng.random((64, 64)).astype(np.float32), Broken(), device="cpu")


def test_cli_finishes_a_batch_after_out_of_memory(tmp_path, rng, monkeypatch, caplog):
    from napari_mpt_deblur import cli
    from napari_mpt_deblur._io import read_image, write_image
    from napari_mpt_deblur.models import resolve

    model = OutOfMemoryAbove(limit=128)
    model.info = {"name": "oom-prone"}
    monkeypatch.setattr(resolve, "resolve_model", lambda *a, **k: model)
    images = {"small": (rng.random((60, 70)) * 255).astype(np.uint8),
              "large": (rng.random((300, 280)) * 255).astype(np.uint8)}
    for name, image in images.items():
        write_image(tmp_path / "in" / f"{name}.tif", image)
    with caplog.at_level(logging.WARNING):
        code = cli.main(["deblur", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                         "--model", "whatever", "--device", "cpu", "--no-progress"])
    assert code == 0
    for name, image in images.items():
        np.testing.assert_array_equal(read_image(tmp_path / "out" / f"{name}_deblurred.tif")[0],
                                      image)
    assert "out of memory" in caplog.text


def test_cli_reports_an_image_that_never_fits_and_goes_on(tmp_path, rng, monkeypatch, caplog):
    from napari_mpt_deblur import cli
    from napari_mpt_deblur._io import read_image, write_image
    from napari_mpt_deblur.models import resolve

    class OutOfMemoryOnFlatImages(Scale):  # stands in for "this one image is too big"
        def forward(self, x):
            if float(x.std()) == 0.0:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            return super().forward(x)

    model = OutOfMemoryOnFlatImages()
    model.info = {"name": "oom-on-one-image"}
    monkeypatch.setattr(resolve, "resolve_model", lambda *a, **k: model)
    images = {"a": (rng.random((60, 70)) * 255).astype(np.uint8),
              "b": np.full((60, 70), 7, np.uint8),
              "c": (rng.random((50, 40)) * 255).astype(np.uint8)}
    for name, image in images.items():
        write_image(tmp_path / "in" / f"{name}.tif", image)
    with caplog.at_level(logging.WARNING):
        code = cli.main(["deblur", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                         "--model", "whatever", "--device", "cpu", "--no-progress"])
    assert code == 1  # the batch reports the failure ...
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_deblurred.tif",
                                                                   "c_deblurred.tif"]
    np.testing.assert_array_equal(read_image(tmp_path / "out" / "c_deblurred.tif")[0],
                                  images["c"])  # ... and still did the rest
    assert "smallest tile" in caplog.text and "1 of 3 files failed" in caplog.text
