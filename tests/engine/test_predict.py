"""Inference engine: shapes, dtypes, layouts, tiling, progress, cancel, bad input."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
import torch

from napari_mpt_deblur import Cancelled, create_model, deblur
from napari_mpt_deblur.engine import predict
from napari_mpt_deblur.engine.predict import DeblurReport


class Scale(torch.nn.Module):
    """A stand-in 'model' with the engine's contract: multiplies by a constant."""

    size_multiple = 128
    in_channels = 1

    def __init__(self, factor: float = 1.0) -> None:
        super().__init__()
        self.factor = torch.nn.Parameter(torch.tensor(float(factor)))
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return x * self.factor


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.uint16, np.int16, np.float16, np.float32, np.float64]
)
def test_same_shape_and_dtype_for_every_dtype(tiny_model, rng, dtype):
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "ui" else None
    high = min(info.max, 4000) if info else 1.0
    image = (rng.random((70, 133)) * high).astype(dtype)
    out = deblur(image, tiny_model, device="cpu")
    assert out.shape == image.shape and out.dtype == image.dtype
    assert np.isfinite(out.astype(np.float64)).all()


def test_identity_model_returns_the_input(rng):
    image = (rng.random((150, 260)) * 3000 + 100).astype(np.uint16)
    out = deblur(image, Scale(1.0), device="cpu")
    np.testing.assert_array_equal(out, image)


@pytest.mark.parametrize(
    ("shape", "axes", "planes"),
    [
        ((3, 64, 80), "ZYX", 3),
        ((2, 3, 64, 80), "TZYX", 6),
        ((64, 80, 3), "YXC", 3),
        ((2, 64, 80), "CYX", 2),
        ((64, 2, 80), "YCX", 2),
    ],
)
def test_stacks_and_channels_are_processed_plane_by_plane(rng, shape, axes, planes):
    model = Scale(1.0)
    image = rng.random(shape).astype(np.float32)
    out = deblur(image, model, axes=axes, device="cpu")
    assert out.shape == image.shape
    assert len(model.calls) == planes
    np.testing.assert_allclose(out, image, atol=1e-5)


def test_planes_are_not_mixed_up(rng):
    class AddPlaneMean(Scale):
        def forward(self, x):  # output depends on the plane only
            return x + x.mean()

    image = np.stack([np.full((40, 40), v, np.float32) for v in (1.0, 5.0, 9.0)])
    image += rng.random(image.shape).astype(np.float32)
    out = deblur(image, AddPlaneMean(), axes="ZYX", device="cpu")
    means = out.reshape(3, -1).mean(1)
    assert np.all(np.diff(means) > 3)


def test_multichannel_model_gets_channels_together(rng):
    model = create_model("mpt-test", in_channels=3, out_channels=3).eval()
    image = rng.random((3, 64, 64)).astype(np.float32)
    assert deblur(image, model, device="cpu").shape == (3, 64, 64)  # CYX inferred
    assert deblur(image.transpose(1, 2, 0), model, axes="YXC", device="cpu").shape == (64, 64, 3)
    with pytest.raises(ValueError, match="expects 3 channels"):
        deblur(rng.random((2, 64, 64)).astype(np.float32), model, axes="CYX", device="cpu")
    with pytest.raises(ValueError, match="no channel axis"):
        deblur(rng.random((64, 64)).astype(np.float32), model, device="cpu")


def test_tiles_cover_everything_and_blend_to_identity(rng):
    model = Scale(1.0)
    image = rng.random((300, 420)).astype(np.float32)
    report = DeblurReport()
    out = deblur(image, model, tile=128, overlap=32, device="cpu", report=report)
    np.testing.assert_allclose(out, image, atol=1e-5)
    assert report.n_tiles == len(model.calls) > 4
    assert all(c[-2:] == (128, 128) for c in model.calls)


def test_no_seams_at_tile_borders_on_a_smooth_image(tiny_model):
    yy, xx = np.mgrid[0:384, 0:512].astype(np.float32)
    smooth = 0.3 + 0.5 * np.exp(-((yy - 190) ** 2 + (xx - 250) ** 2) / (2 * 140.0**2))
    whole = deblur(smooth, tiny_model, tile=0, device="cpu")
    tiled = deblur(smooth, tiny_model, tile=128, device="cpu")

    # A step shows up as a spike in the second difference; compare its worst value with the
    # whole-image result's own worst value (interior only, away from padding effects).
    def worst_curvature(img):
        inner = img[16:-16, 16:-16]
        return max(np.abs(np.diff(inner, 2, axis=0)).max(), np.abs(np.diff(inner, 2, axis=1)).max())

    assert worst_curvature(tiled) <= 3 * worst_curvature(whole) + 1e-3
    assert np.abs(tiled - whole).mean() < 0.05 * np.abs(whole).mean()


def test_progress_is_monotonic_and_complete(tiny_model, rng):
    calls = []
    deblur(
        rng.random((2, 200, 200)).astype(np.float32),
        tiny_model,
        axes="ZYX",
        tile=128,
        device="cpu",
        progress=lambda done, total: calls.append((done, total)),
    )
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == calls[-1][1] == len(calls)


@pytest.mark.parametrize("kind", ["event", "callable"])
def test_cancel_stops_between_tiles_without_output(rng, kind):
    model = Scale(1.0)
    event = threading.Event()
    cancel = event if kind == "event" else event.is_set

    def progress(done, total):
        if done == 2:
            event.set()

    with pytest.raises(Cancelled, match="cancelled"):
        deblur(
            rng.random((400, 400)).astype(np.float32),
            model,
            tile=128,
            device="cpu",
            progress=progress,
            cancel=cancel,
        )
    assert len(model.calls) == 2


def test_out_of_memory_falls_back_to_smaller_tiles(rng, caplog):
    class Picky(Scale):
        def forward(self, x):
            if x.shape[-1] > 128:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")
            return super().forward(x)

    report = DeblurReport()
    image = rng.random((256, 512)).astype(np.float32)
    with caplog.at_level(logging.WARNING):
        out = deblur(image, Picky(), tile=512, device="cpu", report=report)
    np.testing.assert_allclose(out, image, atol=1e-5)
    assert report.retries and report.tile == 128
    assert "out of memory" in caplog.text


def test_clipping_is_reported_not_silent(rng, caplog):
    image = (rng.random((64, 64)) * 200 + 20).astype(np.uint8)
    report = DeblurReport()
    with caplog.at_level(logging.WARNING):
        out = deblur(image, Scale(4.0), device="cpu", report=report)
    assert out.dtype == np.uint8 and out.max() == 255
    assert report.clipped_high > 0 and "clipped" in caplog.text


@pytest.mark.parametrize(
    ("image", "error", "match"),
    [
        (np.full((32, 32), np.nan, np.float32), ValueError, "NaN"),
        (np.array([[1.0, np.inf]] * 16, np.float32), ValueError, "infinite"),
        (np.zeros((32, 32), np.complex64), TypeError, "complex"),
        (np.zeros((32, 32), bool), TypeError, "bool"),
        (np.zeros((0, 32), np.float32), ValueError, "empty"),
        (np.zeros((1, 1), np.float32), ValueError, "at least"),
        (np.zeros(32, np.float32), ValueError, "at least 2 dimensions"),
        (np.zeros((64, 64, 3), np.uint8), ValueError, "looks like RGB"),
    ],
)
def test_bad_input_gets_a_clear_error(tiny_model, image, error, match):
    with pytest.raises(error, match=match):
        deblur(image, tiny_model, device="cpu")


@pytest.mark.parametrize(
    ("axes", "match"),
    [("YXZ", "3 letters"), ("YY", "repeats"), ("ZX", "both 'Y' and 'X'"), ("AB", "unknown")],
)
def test_wrong_axes_are_rejected(tiny_model, axes, match):
    image = np.zeros((16, 16), np.float32)
    with pytest.raises(ValueError, match=match):
        deblur(image, tiny_model, axes=axes, device="cpu")


def test_unknown_device_is_rejected(tiny_model):
    with pytest.raises(ValueError, match="choose one of"):
        deblur(np.zeros((16, 16), np.float32), tiny_model, device="tpu")


def test_estimate_tile_respects_memory(tiny_model, monkeypatch):
    monkeypatch.setattr(predict, "_available_bytes", lambda device: 10**12)
    assert predict.estimate_tile(tiny_model, 1024, 1024, torch.device("cpu")) is None
    monkeypatch.setattr(predict, "_available_bytes", lambda device: 64 * 1024**2)
    side = predict.estimate_tile(tiny_model, 8192, 8192, torch.device("cpu"))
    assert side is not None and side % 128 == 0 and 128 <= side < 8192


@pytest.mark.parametrize(
    ("text", "expected"),
    [("8G", 8 * 2**30), ("8 GB", 8 * 2**30), ("512MiB", 512 * 2**20), ("1.5k", 1536),
     ("4096", 4096), (2_000_000, 2_000_000), (None, None)],
)
def test_memory_sizes_are_read_in_binary_units(text, expected):
    assert predict.parse_memory(text) == expected


@pytest.mark.parametrize("bad", ["", "lots", "8X", "-1G", "0", 0, -5])
def test_bad_memory_sizes_are_refused_with_the_accepted_forms(bad):
    with pytest.raises(ValueError, match="memory limit"):
        predict.parse_memory(bad)


def test_max_memory_picks_tiles_that_fit_with_the_plane_buffers(tiny_model, monkeypatch):
    monkeypatch.setattr(predict, "_available_bytes", lambda device: 10**12)
    cpu = torch.device("cpu")
    per_pixel = tiny_model.inference_bytes_per_pixel
    buffers = predict._plane_buffer_bytes(2048, 2048, 1)
    # Room for the buffers and a 512² working set: the tile is at most 512 and at least 384.
    side = predict.estimate_tile(tiny_model, 2048, 2048, cpu, buffers + 512 * 512 * per_pixel)
    assert side is not None and 384 <= side <= 512 and side % 128 == 0
    with pytest.raises(MemoryError, match=r"too small .* buffers alone"):
        predict.estimate_tile(tiny_model, 2048, 2048, cpu, buffers)


def test_max_memory_tiles_the_job_and_the_result_matches(tiny_model, rng, monkeypatch):
    monkeypatch.setattr(predict, "_available_bytes", lambda device: 10**12)
    image = (rng.random((384, 384)) * 4000).astype(np.uint16)
    whole, tiled = predict.DeblurReport(), predict.DeblurReport()
    direct = deblur(image, tiny_model, device="cpu", report=whole)
    per_pixel = tiny_model.inference_bytes_per_pixel
    budget = predict._plane_buffer_bytes(384, 384, 1) + 256 * 256 * per_pixel
    limited = deblur(image, tiny_model, device="cpu", max_memory=budget, report=tiled)
    assert whole.n_tiles == 1 and tiled.n_tiles > 1 and tiled.tile <= 256
    err = np.abs(limited.astype(float) - direct.astype(float)).mean()
    assert err < 0.1 * np.abs(direct.astype(float) - image.astype(float)).mean() + 1.0


class Skewed(Scale):
    """Orientation-dependent 'model': adds a ramp along X (a network's directional bias)."""

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        ramp = torch.linspace(0.0, 1.0, x.shape[-1], dtype=x.dtype)
        return x * self.factor + ramp


@pytest.mark.parametrize("views", [2, 4, 8])
def test_ensemble_averages_views_turned_back_into_place(rng, views):
    image = rng.random((100, 300)).astype(np.float32)
    model = Scale(1.0)
    out = deblur(image, model, device="cpu", ensemble=views)
    # an equivariant model gives the same image from every view, in the right place
    np.testing.assert_allclose(out, image, atol=1e-5)
    assert len(model.calls) == views
    assert {shape[-2:] for shape in model.calls} == (
        {(128, 384)} if views < 8 else {(128, 384), (384, 128)}
    )


def test_ensemble_cancels_orientation_dependent_errors(rng):
    image = rng.random((128, 256)).astype(np.float32)
    plain = deblur(image, Skewed(), device="cpu", intensity_range=(0.0, 1.0))
    mirrored = deblur(image, Skewed(), device="cpu", intensity_range=(0.0, 1.0), ensemble=2)
    # the ramp and its mirror image average to a constant 0.5
    np.testing.assert_allclose(plain - image, np.linspace(0, 1, 256)[None].repeat(128, 0),
                               atol=1e-5)  # fmt: skip
    np.testing.assert_allclose(mirrored - image, 0.5, atol=1e-5)


def test_ensemble_is_reported_and_tiles_still_blend_seamlessly(tiny_model, rng):
    image = rng.random((300, 300)).astype(np.float32)
    report = DeblurReport()
    whole = deblur(image, tiny_model, device="cpu", tile=0, ensemble=4)
    tiled = deblur(image, tiny_model, device="cpu", tile=128, ensemble=4, report=report)
    assert report.ensemble == 4 and report.n_tiles > 1
    assert report.to_dict()["ensemble"] == 4
    assert np.isfinite(tiled).all() and tiled.shape == whole.shape
    assert not np.allclose(whole, deblur(image, tiny_model, device="cpu", tile=0))


def test_ensemble_cancel_stops_between_views(rng):
    model = Scale(1.0)

    def cancel():
        return len(model.calls) >= 3

    with pytest.raises(Cancelled):
        deblur(rng.random((64, 64)).astype(np.float32), model, device="cpu", ensemble=8,
               cancel=cancel)  # fmt: skip
    assert len(model.calls) == 3


@pytest.mark.parametrize("bad", [0, 3, 16, 2.0, "8", True, None])
def test_bad_ensemble_sizes_are_refused_before_any_work(rng, bad):
    model = Scale(1.0)
    with pytest.raises(ValueError, match="ensemble must be one of 1, 2, 4, 8"):
        deblur(rng.random((64, 64)).astype(np.float32), model, device="cpu", ensemble=bad)
    assert model.calls == []


# ------------------------------------------------------------------ reduced precision on the CPU


def test_cpu_bf16_autocast_follows_the_hardware(monkeypatch):
    from napari_mpt_deblur import _device

    cpu = torch.device("cpu")
    monkeypatch.setattr(_device, "cpu_has_native_bf16", lambda: True)
    assert predict._amp_dtype(cpu, "auto") is torch.bfloat16
    assert predict._amp_dtype(cpu, "bf16") is torch.bfloat16
    assert predict._amp_dtype(cpu, False) is None
    assert predict._amp_dtype(cpu, "fp16") is None  # CPU fp16 autocast is not offered
    monkeypatch.setattr(_device, "cpu_has_native_bf16", lambda: False)  # emulated: slower
    assert predict._amp_dtype(cpu, "auto") is None
    assert predict._amp_dtype(cpu, "bf16") is None


def test_cpu_bf16_result_matches_float32_quality_on_the_bundled_sample(monkeypatch):
    """The faster path must keep the float32 quality: PSNR against the in-focus reference
    within 0.05 dB. Forced on with a patched probe, so the bf16 kernels run (emulated where
    the CPU lacks them) whatever machine runs the test."""
    from napari_mpt_deblur import _device
    from napari_mpt_deblur._sample_data import load_sample
    from napari_mpt_deblur.metrics import psnr

    sample = load_sample()
    blurred, sharp = sample.blurred[:256, :256], sample.sharp[:256, :256]
    full = deblur(blurred, "mpt-tiny", axes="YX", device="cpu", amp=False)
    monkeypatch.setattr(_device, "cpu_has_native_bf16", lambda: True)
    report = DeblurReport()
    half = deblur(blurred, "mpt-tiny", axes="YX", device="cpu", amp="auto", report=report)
    assert report.precision == "bfloat16 autocast"
    assert half.dtype == full.dtype and half.shape == full.shape
    assert not np.array_equal(half, full)  # the bf16 path really ran
    sharp = sharp.astype(np.float64)
    assert abs(psnr(half.astype(np.float64), sharp) - psnr(full.astype(np.float64), sharp)) < 0.05
