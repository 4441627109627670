"""Camera model: noise statistics, offset/gain mapping, quantisation, saturation, seeding."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mpt_deblur.simulate.camera import (
    CameraConfig,
    apply_camera,
    as_generator,
    camera_response,
    camera_to_float,
)


def test_noise_free_round_trip_is_exact_up_to_quantisation():
    cfg = CameraConfig(
        photons_per_unit=800.0,
        read_noise_e=0.0,
        offset_adu=105.0,
        gain_adu_per_e=0.5,
        shot_noise=False,
    )
    signal = np.linspace(0.0, 1.5, 400).reshape(20, 20)
    raw = apply_camera(signal, cfg, 0)
    assert raw.dtype == np.uint16
    back = camera_to_float(raw, cfg)
    assert back.dtype == np.float32
    step = 1.0 / cfg.adu_per_unit  # one ADU in signal units
    np.testing.assert_allclose(back, signal, atol=0.5 * step + 1e-6)
    # The noise-free response is the same mapping without rounding.
    np.testing.assert_allclose(
        camera_to_float(camera_response(signal, cfg), cfg), signal, atol=1e-6
    )


def test_shot_noise_is_poisson():
    cfg = CameraConfig(
        photons_per_unit=50.0, read_noise_e=0.0, offset_adu=100.0, gain_adu_per_e=1.0
    )
    raw = apply_camera(np.full((200, 200), 2.0), cfg, 1).astype(np.float64) - 100.0
    assert raw.mean() == pytest.approx(100.0, rel=0.01)
    assert raw.var() == pytest.approx(100.0, rel=0.05)  # variance = mean for Poisson
    assert np.array_equal(raw, np.round(raw))


def test_read_noise_scales_with_gain():
    cfg = CameraConfig(
        photons_per_unit=100.0, read_noise_e=4.0, offset_adu=200.0, gain_adu_per_e=2.0
    )
    raw = apply_camera(np.zeros((200, 200)), cfg, 2).astype(np.float64)
    assert raw.mean() == pytest.approx(200.0, abs=0.2)
    assert raw.std() == pytest.approx(8.0, rel=0.05)  # 4 e- * 2 ADU/e-


@pytest.mark.parametrize(("bits", "dtype"), [(8, np.uint8), (12, np.uint16), (16, np.uint16)])
def test_saturation_and_dtype(bits, dtype):
    cfg = CameraConfig(photons_per_unit=1000.0, offset_adu=10.0, gain_adu_per_e=1.0, bit_depth=bits)
    image = np.array([[0.0, 0.01], [1e3, 1e6]])
    raw = apply_camera(image, cfg, 0)
    assert raw.dtype == dtype
    assert raw.max() == 2**bits - 1 == cfg.max_adu
    assert raw[1, 1] == cfg.max_adu
    assert cfg.saturation_level == pytest.approx((2**bits - 1 - 10.0) / 1000.0)
    clean = camera_response(image, cfg)
    assert clean.max() == cfg.max_adu and clean.min() >= 0


def test_negative_signal_counts_as_dark():
    cfg = CameraConfig(read_noise_e=0.0, shot_noise=True)
    raw = apply_camera(np.full((4, 4), -0.3), cfg, 0)
    assert np.all(raw == cfg.offset_adu)


def test_same_seed_same_image_different_seed_different():
    cfg = CameraConfig(photons_per_unit=300.0, read_noise_e=3.0)
    image = np.random.default_rng(0).random((32, 32))
    a = apply_camera(image, cfg, 7)
    b = apply_camera(image, cfg, np.random.default_rng(7))
    c = apply_camera(image, cfg, 8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_as_generator():
    gen = np.random.default_rng(1)
    assert as_generator(gen) is gen
    assert as_generator(5).random() == np.random.default_rng(5).random()
    with pytest.raises(TypeError, match="rng must be"):
        as_generator(np.random.RandomState(0))
    with pytest.raises(TypeError, match="rng must be"):
        as_generator(True)


def test_config_validation_and_round_trip():
    cfg = CameraConfig(photons_per_unit=123.0, read_noise_e=1.5, offset_adu=99.0, bit_depth=12)
    assert CameraConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="bit_depth"):
        CameraConfig(bit_depth=17)
    with pytest.raises(ValueError, match="offset_adu"):
        CameraConfig(bit_depth=8, offset_adu=300.0)
    with pytest.raises(ValueError, match="read_noise_e"):
        CameraConfig(read_noise_e=-1.0)
    with pytest.raises(ValueError, match="photons_per_unit"):
        CameraConfig(photons_per_unit=0.0)
    with pytest.raises(ValueError, match="unknown CameraConfig keys"):
        CameraConfig.from_dict({"gain": 2.0})
    with pytest.raises(TypeError, match="CameraConfig"):
        apply_camera(np.zeros((2, 2)), {"bit_depth": 12})
    with pytest.raises(ValueError, match="NaN"):
        apply_camera(np.full((2, 2), np.nan), cfg)
