"""bioimage.io export and import (napari_mpt_deblur.bioimageio, `mpt-deblur export-bioimageio`).

The packages are checked with bioimageio.core's own model test, offline: the bioimageio cache is
a temporary folder and every socket connection fails, so nothing can be downloaded.
"""

from __future__ import annotations

import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from napari_mpt_deblur import create_model, deblur, load_model
from napari_mpt_deblur.bioimageio import DeblurNetwork, is_bioimageio_package, load_bioimageio
from napari_mpt_deblur.engine.normalize import IntensityNormalization, percentile_range
from napari_mpt_deblur.models.checkpoint import CheckpointError, save_checkpoint


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No network and a fresh bioimageio cache: the model test must need neither."""
    cache = tmp_path / "bioimageio-cache"
    monkeypatch.setenv("BIOIMAGEIO_CACHE_PATH", str(cache))

    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    spec = pytest.importorskip("bioimageio.spec")
    monkeypatch.setattr(spec.settings, "cache_path", cache)
    return cache


def _rdf(package: Path) -> dict:
    with zipfile.ZipFile(package) as zf:
        return yaml.safe_load(zf.read("rdf.yaml"))


def _package_array(package: Path, name: str) -> np.ndarray:
    with zipfile.ZipFile(package) as zf, zf.open(name) as fh:
        return np.load(fh)


def _run_bioimageio_test(package: Path) -> None:
    core = pytest.importorskip("bioimageio.core")
    summary = core.test_description(package)
    failed = [
        f"{d.name}: {[e.msg[:400] for e in d.errors]}" for d in summary.details
        if d.status == "failed"
    ]
    assert summary.status == "passed", failed
    names = [d.name for d in summary.details]
    assert any("Reproduce test outputs" in n for n in names)  # the model was actually run


def _package_prediction(package: Path, image: np.ndarray) -> np.ndarray:
    """The package's output computed by bioimageio.core (its pipeline, pre/postprocessing)."""
    core = pytest.importorskip("bioimageio.core")
    from bioimageio.spec.model.v0_5 import TensorId

    tensor = core.Tensor.from_numpy(image, dims=("batch", "channel", "y", "x"))
    sample = core.predict(model=str(package), inputs={TensorId("raw"): tensor})
    return sample.members[TensorId("deblurred")].data.to_numpy()


def _assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    scale = float(np.abs(expected).max())
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * scale)


# --------------------------------------------------------------------------------------------
# The wrapper's normalisation is the engine's
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("image", "norm"),
    [
        (np.random.default_rng(0).gamma(2.0, 300.0, (2, 40, 56)), IntensityNormalization()),
        (np.random.default_rng(1).normal(0, 1e-3, (1, 32, 32)), IntensityNormalization()),
        (np.full((1, 16, 16), 7.0), IntensityNormalization()),  # flat: fallback range
        (np.full((1, 16, 16), -3e9), IntensityNormalization()),  # flat, far from zero
        (np.random.default_rng(2).random((1, 24, 24)) * 50, IntensityNormalization("minmax")),
        (np.random.default_rng(3).integers(0, 4096, (1, 1500, 1400)), IntensityNormalization()),
    ],
    ids=["gamma", "tiny-range", "flat", "flat-far", "minmax", "subsampled-2M+"],
)
def test_wrapper_intensity_range_matches_engine(image: np.ndarray, norm) -> None:
    wrapper = DeblurNetwork("htcsf", create_model("htcsf-test").config.to_dict(), norm.to_dict())
    x = torch.from_numpy(image.astype(np.float32))[None]
    lo, hi = wrapper.intensity_range(x)
    for c, channel in enumerate(image.astype(np.float32)):
        want = percentile_range(channel, norm)
        got = (float(lo[0, c]), float(hi[0, c]))
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)


def test_traced_wrapper_normalises_any_size_like_the_eager_one() -> None:
    """The percentile code is shape-free under tracing (the trace is reused at other sizes)."""
    torch.manual_seed(0)
    wrapper = DeblurNetwork("htcsf", create_model("htcsf-test").config.to_dict()).eval()
    small = torch.rand(1, 1, 16, 16) * 1000
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, small, check_trace=False)
        other = torch.rand(2, 1, 48, 32) * 50 + 10
        torch.testing.assert_close(traced(other), wrapper(other), rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------------------------------------
# Export, bioimageio.core's model test, equality with deblur, import
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_untrained_checkpoint_exports_passes_bioimageio_test_and_round_trips(
    tmp_path: Path, offline: Path
) -> None:
    from napari_mpt_deblur.bioimageio import export_bioimageio

    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "tiny.safetensors", create_model("mpt-test"))
    report = export_bioimageio(checkpoint, tmp_path / "tiny")
    package = report.path
    assert package == tmp_path / "tiny.zip" and package.is_file()
    assert is_bioimageio_package(package)

    rdf = _rdf(package)
    assert rdf["format_version"].startswith("0.5.") and rdf["type"] == "model"
    arch = rdf["weights"]["pytorch_state_dict"]["architecture"]
    assert (arch["import_from"], arch["callable"]) == ("napari_mpt_deblur.bioimageio",
                                                        "DeblurNetwork")
    assert arch["kwargs"]["config"]["dim"] == 8
    assert [a["type"] for a in rdf["inputs"][0]["axes"]] == ["batch", "channel", "space",
                                                             "space"]
    assert len(rdf["cite"]) == 2 and rdf["license"] == "Apache-2.0"
    assert rdf["inputs"][0]["axes"][0].get("size") == report.batch_size

    _run_bioimageio_test(package)

    # The test output is our engine's, and bioimageio.core's prediction reproduces it.
    image = _package_array(package, "test_input.npy")
    engine = deblur(image[0], load_model(checkpoint, device="cpu"), axes="CYX", device="cpu",
                    amp=False)
    _assert_close(_package_array(package, "test_output.npy"), engine[None])
    _assert_close(_package_prediction(package, image), engine[None])

    # Import gives the same network back.
    loaded = load_bioimageio(package, device="cpu")
    original = load_model(checkpoint, device="cpu")
    assert loaded.config == original.config
    for (k, a), (k2, b) in zip(loaded.state_dict().items(), original.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert loaded.info["normalization"] == original.info["normalization"]
    np.testing.assert_array_equal(
        deblur(image[0], loaded, axes="CYX", device="cpu", amp=False), engine
    )
    # load_model (and so the CLI, the widgets' "Load checkpoint…") takes the package too.
    via_load_model = load_model(package, device="cpu")
    assert via_load_model.config == original.config
    assert all(torch.equal(a, b) for a, b in zip(via_load_model.state_dict().values(),
                                                 original.state_dict().values()))


@pytest.fixture(scope="module")
def htcsf_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("bioimageio.spec")
    from napari_mpt_deblur.bioimageio import export_bioimageio

    folder = tmp_path_factory.mktemp("htcsf-package")
    return export_bioimageio("htcsf", folder / "htcsf.zip").path


@pytest.mark.slow
def test_bundled_htcsf_export_passes_bioimageio_test(
    htcsf_package: Path, offline: Path
) -> None:
    rdf = _rdf(htcsf_package)
    assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript"}
    space = rdf["inputs"][0]["axes"][2]
    assert space["size"] == {"min": 16, "step": 16}
    assert (space["unit"], space["scale"]) == ("micrometer", 0.645)
    assert rdf["inputs"][0]["axes"][0].get("size") is None  # HTCSF traces for any batch
    with zipfile.ZipFile(htcsf_package) as zf:
        card = zf.read("README.md").decode()
    assert "Head-to-Tail Cross-Scale Fusion" in card and "Multi-Pyramid Transformer" in card
    assert "Model card: `htcsf`" in card  # the bundled model card is included

    _run_bioimageio_test(htcsf_package)

    image = _package_array(htcsf_package, "test_input.npy")
    engine = deblur(image[0], "htcsf", axes="CYX", device="cpu", amp=False)
    _assert_close(_package_prediction(htcsf_package, image), engine[None])
    # A second image, not the one stored in the package.
    other = np.random.default_rng(5).gamma(2.0, 200.0, (1, 1, 64, 80)).astype(np.float32)
    _assert_close(
        _package_prediction(htcsf_package, other),
        deblur(other[0], "htcsf", axes="CYX", device="cpu", amp=False)[None],
    )


@pytest.mark.slow
def test_htcsf_package_loads_back_as_the_bundled_model(htcsf_package: Path) -> None:
    loaded = load_bioimageio(htcsf_package, device="cpu")
    bundled = load_model("htcsf", device="cpu")
    assert type(loaded) is type(bundled) and loaded.config == bundled.config
    for a, b in zip(loaded.state_dict().values(), bundled.state_dict().values()):
        assert torch.equal(a, b)
    assert loaded.info["name"] == "htcsf"
    assert loaded.info["metrics"] == bundled.info["metrics"]


@pytest.mark.slow
def test_load_bioimageio_refuses_tampered_or_foreign_packages(
    htcsf_package: Path, tmp_path: Path
) -> None:
    with zipfile.ZipFile(htcsf_package) as zf:
        zf.extractall(tmp_path / "pkg")
    folder = tmp_path / "pkg"
    assert is_bioimageio_package(folder) and is_bioimageio_package(folder / "rdf.yaml")
    assert load_bioimageio(folder / "rdf.yaml", device="cpu").info["name"] == "htcsf"

    weights = folder / "weights.pt"
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_bioimageio(folder, device="cpu")
    weights.write_bytes(original)

    rdf_path = folder / "rdf.yaml"
    rdf = yaml.safe_load(rdf_path.read_text())
    rdf["weights"]["pytorch_state_dict"]["architecture"]["import_from"] = "other.package"
    rdf_path.write_text(yaml.safe_dump(rdf))
    with pytest.raises(CheckpointError, match="not hold a napari-mpt-deblur network"):
        load_bioimageio(folder, device="cpu")
    assert not is_bioimageio_package(tmp_path / "missing.zip")


@pytest.mark.slow
def test_cli_export_writes_a_package_without_torchscript_on_request(
    tmp_path: Path, offline: Path
) -> None:
    from napari_mpt_deblur.cli import main

    out = tmp_path / "cli.zip"
    code = main(["export-bioimageio", "htcsf", "-o", str(out), "--no-torchscript",
                 "--author", "A. Person", "--pixel-size", "0.3"])
    assert code == 0 and out.is_file()
    rdf = _rdf(out)
    assert set(rdf["weights"]) == {"pytorch_state_dict"}
    assert rdf["authors"] == [{"name": "A. Person"}]
    assert rdf["inputs"][0]["axes"][3]["scale"] == 0.3
