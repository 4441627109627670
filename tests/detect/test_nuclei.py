"""Nuclei detectors: right count and positions on synthetic blobs, dtype and unit handling."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_mpt_deblur.detect import (
    METHODS,
    DetectionConfig,
    detect_nuclei,
    match_points,
    normalize_percentile,
)

CLASSICAL = ("log", "watershed")
RADIUS = 6  # px; tests use pixel_size_um=1, diameter_um=12


def blob_image(
    rng: np.random.Generator,
    n: int,
    shape: tuple[int, int] = (128, 128),
    *,
    min_separation: float = 20.0,
    margin: int = 10,
    noise: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """uint16 camera-like image of ``n`` bright discs of varying brightness; returns centres."""
    centres: list[np.ndarray] = []
    while len(centres) < n:
        c = rng.uniform(margin, np.asarray(shape) - margin)
        if all(np.hypot(*(c - o)) >= min_separation for o in centres):
            centres.append(c)
    rows, cols = np.indices(shape)
    signal = np.zeros(shape)
    for c in centres:
        disc = (rows - c[0]) ** 2 + (cols - c[1]) ** 2 <= RADIUS**2
        signal[disc] = rng.uniform(0.6, 1.0)  # some nuclei dimmer than others
    signal = ndi.gaussian_filter(signal, 1.0)  # optics
    expected = 100 + 800 * signal
    image = rng.poisson(expected) if noise else expected
    return image.astype(np.uint16), np.asarray(centres)


@pytest.fixture
def cfg() -> DetectionConfig:
    return DetectionConfig(diameter_um=2 * RADIUS, pixel_size_um=1.0)


@pytest.mark.parametrize("method", CLASSICAL)
@pytest.mark.parametrize("n", [0, 1, 7])
def test_finds_the_synthetic_blobs(method: str, n: int, cfg: DetectionConfig) -> None:
    image, centres = blob_image(np.random.default_rng(n), n)
    result = detect_nuclei(image, cfg, method=method)
    assert result.n == n
    assert result.points.shape == (n, 2)
    match = match_points(result.points, centres.reshape(-1, 2), max_distance=2.0)
    assert match.tp == n  # every blob found within 2 px of its centre
    assert result.config.method == method


@pytest.mark.parametrize("method", CLASSICAL)
def test_touching_nuclei_are_separated(method: str, cfg: DetectionConfig) -> None:
    # Two discs whose centres are 1.6 radii apart overlap in a dumbbell: one mask component.
    image = np.zeros((64, 80), np.float32)
    rows, cols = np.indices(image.shape)
    centres = np.array([[32.0, 30.0], [32.0, 30.0 + 1.6 * RADIUS + 2]])
    for c in centres:
        image[(rows - c[0]) ** 2 + (cols - c[1]) ** 2 <= RADIUS**2] = 1.0
    assert ndi.label(image > 0)[1] == 1
    result = detect_nuclei(image, cfg, method=method)
    assert result.n == 2
    assert match_points(result.points, centres, max_distance=2.5).tp == 2


@pytest.mark.parametrize("method", CLASSICAL)
def test_labels_agree_with_points(method: str, cfg: DetectionConfig) -> None:
    image, _ = blob_image(np.random.default_rng(3), 5)
    result = detect_nuclei(image, cfg, method=method)
    labels = result.labels
    assert labels is not None and labels.dtype == np.int32 and labels.shape == image.shape
    assert sorted(np.unique(labels[labels > 0])) == list(range(1, result.n + 1))
    at_points = labels[tuple(np.round(result.points).astype(int).T)]
    np.testing.assert_array_equal(at_points, np.arange(1, result.n + 1))
    assert result.diameters_px.shape == result.scores.shape == (result.n,)
    np.testing.assert_allclose(result.diameters_px, 2 * RADIUS, rtol=0.35)


@pytest.mark.parametrize("method", CLASSICAL)
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32, np.float64])
def test_dtype_and_offset_do_not_change_detections(
    method: str, dtype: type, cfg: DetectionConfig
) -> None:
    image, _ = blob_image(np.random.default_rng(5), 6, noise=False)
    reference = detect_nuclei(image, cfg, method=method)
    span = 200 if dtype == np.uint8 else 1e4
    scaled = (image - image.min()) / np.ptp(image) * span + (10 if dtype == np.uint8 else -50)
    result = detect_nuclei(scaled.astype(dtype), cfg, method=method)
    assert result.n == reference.n
    assert match_points(result.points, reference.points, max_distance=1.0).tp == reference.n


@pytest.mark.parametrize("method", CLASSICAL)
def test_sizes_are_physical(method: str) -> None:
    """Same nuclei, same answer whether given as 12 µm at 1 µm/px or 6 µm at 0.5 µm/px."""
    image, _ = blob_image(np.random.default_rng(8), 6)
    a = detect_nuclei(image, method=method, diameter_um=12, pixel_size_um=1.0)
    b = detect_nuclei(image, method=method, diameter_um=6, pixel_size_um=0.5)
    np.testing.assert_array_equal(a.points, b.points)
    np.testing.assert_allclose(b.points_um, a.points_um / 2)


def test_log_diameter_sets_the_detected_size() -> None:
    image, _ = blob_image(np.random.default_rng(9), 4, noise=False)
    small = detect_nuclei(image, diameter_um=2 * RADIUS, pixel_size_um=1.0)
    # Expecting nuclei 3x larger than they are: the blobs are below the searched scales and
    # only the smallest scale fits, so sizes come out >= 0.9 * 36 px and far from the truth.
    large = detect_nuclei(image, diameter_um=6 * RADIUS, pixel_size_um=1.0)
    assert np.median(small.diameters_px) < 1.3 * 2 * RADIUS
    assert np.all(large.diameters_px >= 0.9 * 6 * RADIUS - 1e-9)


@pytest.mark.parametrize("method", CLASSICAL)
@pytest.mark.parametrize("threshold", ["otsu", 0.5])
def test_flat_and_noise_only_images_give_nothing(
    method: str, threshold: float | str, cfg: DetectionConfig
) -> None:
    # Percentile normalisation stretches pure noise to [0, 1]; the noise check must stop
    # it from being detected as nuclei.
    flat = np.full((48, 48), 7, np.uint16)
    noise = np.random.default_rng(0).poisson(100, (48, 48)).astype(np.uint16)
    for image in (flat, noise):
        result = detect_nuclei(image, cfg, method=method, threshold=threshold)
        assert result.n == 0 and result.points.shape == (0, 2)
        assert result.labels is not None and not result.labels.any()


@pytest.mark.parametrize("method", CLASSICAL)
def test_exclude_border(method: str, cfg: DetectionConfig) -> None:
    image = np.zeros((64, 64), np.float32)
    rows, cols = np.indices(image.shape)
    for c in [(32, 32), (32, 2)]:  # the second blob is cut by the left border
        image[(rows - c[0]) ** 2 + (cols - c[1]) ** 2 <= RADIUS**2] = 1.0
    assert detect_nuclei(image, cfg, method=method).n == 2
    inner = detect_nuclei(image, cfg, method=method, exclude_border=True)
    assert inner.n == 1
    np.testing.assert_allclose(inner.points[0], (32, 32), atol=1.0)


def test_threshold_rejects_dim_blobs(cfg: DetectionConfig) -> None:
    image = np.zeros((48, 96), np.float32)
    rows, cols = np.indices(image.shape)
    for c, value in [((24, 24), 1.0), ((24, 72), 0.3)]:
        image[(rows - c[0]) ** 2 + (cols - c[1]) ** 2 <= RADIUS**2] = value
    for method in CLASSICAL:
        assert detect_nuclei(image, cfg, method=method, threshold=0.1).n == 2
        bright_only = detect_nuclei(image, cfg, method=method, threshold=0.6)
        assert bright_only.n == 1
        np.testing.assert_allclose(bright_only.points[0], (24, 24), atol=1.0)


def test_normalize_percentile() -> None:
    image = np.arange(101, dtype=np.uint16)
    norm = normalize_percentile(image, (10, 90))
    assert norm.dtype == np.float32
    np.testing.assert_allclose(norm[[10, 50, 90]], [0.0, 0.5, 1.0], atol=1e-6)
    assert not normalize_percentile(np.full((4, 4), 3.0)).any()


# ---------------------------------------------------------------------------------------------
# config and validation


def test_config_round_trip_through_json() -> None:
    cfg = DetectionConfig(method="watershed", threshold=0.3, min_distance_um=5.0)
    again = DetectionConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(ValueError, match="unknown DetectionConfig keys"):
        DetectionConfig.from_dict({"diameter": 3})


def test_config_defaults_are_bbbc006() -> None:
    cfg = DetectionConfig()
    assert cfg.pixel_size_um == 0.645 and cfg.method == "log"
    assert cfg.diameter_px == pytest.approx(16 / 0.645)
    assert cfg.min_distance_px == pytest.approx(0.6 * cfg.diameter_px)
    assert DetectionConfig(method="watershed").min_distance_px == pytest.approx(
        0.4 * cfg.diameter_px
    )
    assert DetectionConfig(min_distance_um=6.45).min_distance_px == pytest.approx(10)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"method": "unet"}, ValueError, "method must be one of 'log', 'watershed'"),
        ({"diameter_um": -1}, ValueError, "diameter_um must be a positive"),
        ({"pixel_size_um": "0.5"}, TypeError, "pixel_size_um must be a number"),
        ({"threshold": "li"}, ValueError, "threshold must be a number in"),
        ({"threshold": 1.5}, ValueError, r"threshold must be in \[0, 1\]"),
        ({"threshold": True}, TypeError, "threshold must be a float"),
        ({"diameter_um": 1.0, "pixel_size_um": 1.0}, ValueError, "at least 3 px"),
        ({"normalize_percentiles": (50, 10)}, ValueError, "normalize_percentiles"),
        ({"log_scale_range": (0, 1)}, ValueError, "log_scale_range"),
        ({"min_size_fraction": 1.0}, ValueError, "min_size_fraction"),
    ],
)
def test_config_validation(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        DetectionConfig(**kwargs)


def test_image_validation(cfg: DetectionConfig) -> None:
    with pytest.raises(ValueError, match="2-D"):
        detect_nuclei(np.zeros((2, 32, 32)), cfg)
    with pytest.raises(TypeError, match="dtype"):
        detect_nuclei(np.zeros((32, 32), complex), cfg)
    with pytest.raises(ValueError, match="NaN"):
        detect_nuclei(np.full((32, 32), np.nan), cfg)
    with pytest.raises(TypeError, match="unknown parameter"):
        detect_nuclei(np.zeros((32, 32)), cfg, diameter=3)
    with pytest.raises(TypeError, match="config must be"):
        detect_nuclei(np.zeros((32, 32)), config="log")


def test_config_as_mapping_and_overrides() -> None:
    image, _ = blob_image(np.random.default_rng(2), 3)
    from_mapping = detect_nuclei(image, {"diameter_um": 12, "pixel_size_um": 1.0})
    overridden = detect_nuclei(image, DetectionConfig(), diameter_um=12, pixel_size_um=1.0)
    np.testing.assert_array_equal(from_mapping.points, overridden.points)
    assert overridden.config.diameter_um == 12


# ---------------------------------------------------------------------------------------------
# optional backends: lazy, local weights only


def test_methods_are_listed() -> None:
    assert METHODS == ("log", "watershed", "stardist", "cellpose")


@pytest.mark.parametrize("method", ["stardist", "cellpose"])
def test_missing_backend_names_what_to_install(method: str, monkeypatch, cfg) -> None:
    monkeypatch.setitem(sys.modules, method, None)  # import fails even if installed
    if method == "stardist":
        monkeypatch.setitem(sys.modules, "stardist.models", None)
    with pytest.raises(ImportError, match=f"pip install {method}"):
        detect_nuclei(np.zeros((32, 32)), cfg, method=method)


def _fake_cellpose(monkeypatch, model_dir, calls: list) -> None:
    class FakeCellposeModel:
        def __init__(self, gpu: bool, pretrained_model: str) -> None:
            calls.append(pretrained_model)

        def eval(self, image, diameter):
            calls.append(diameter)
            labels = np.zeros(image.shape, np.int32)
            labels[4:10, 4:10] = 5  # non-sequential label values from the backend
            labels[20:24, 10:14] = 9
            return labels, None, None

    models = types.SimpleNamespace(CellposeModel=FakeCellposeModel, MODEL_DIR=model_dir)
    package = types.ModuleType("cellpose")
    package.models = models
    monkeypatch.setitem(sys.modules, "cellpose", package)
    monkeypatch.setitem(sys.modules, "cellpose.models", models)


def test_cellpose_without_local_weights_never_downloads(monkeypatch, tmp_path, cfg) -> None:
    calls: list = []
    _fake_cellpose(monkeypatch, tmp_path, calls)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        detect_nuclei(np.zeros((32, 32)), cfg, method="cellpose")
    assert calls == []  # no model was constructed, so nothing could be fetched


def test_cellpose_labels_become_detections(monkeypatch, tmp_path, cfg) -> None:
    calls: list = []
    _fake_cellpose(monkeypatch, tmp_path, calls)
    (tmp_path / "nucleitorch_0").write_bytes(b"weights")
    result = detect_nuclei(np.zeros((32, 32)), cfg, method="cellpose")
    assert calls == [str(tmp_path / "nucleitorch_0"), cfg.diameter_px]
    assert result.n == 2
    np.testing.assert_allclose(result.points, [[6.5, 6.5], [21.5, 11.5]])
    assert sorted(np.unique(result.labels)) == [0, 1, 2]


def test_stardist_without_local_model_never_downloads(monkeypatch, tmp_path, cfg) -> None:
    constructed: list = []
    models = types.SimpleNamespace(StarDist2D=lambda *a, **k: constructed.append(k))
    package = types.ModuleType("stardist")
    package.models = models
    monkeypatch.setitem(sys.modules, "stardist", package)
    monkeypatch.setitem(sys.modules, "stardist.models", models)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="never downloads"):
        detect_nuclei(np.zeros((32, 32)), cfg, method="stardist")
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        detect_nuclei(np.zeros((32, 32)), cfg, method="stardist", model_path=str(tmp_path))
    assert constructed == []
