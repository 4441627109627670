"""Fixtures for the napari plugin tests: the manifest registered once, tiny untrained models.

The package is not necessarily pip-installed, so napari's plugin discovery may not find the
manifest. It is registered from the source tree only when no installed copy is known, so an
installed plugin is never registered twice.

Qt tests (``@pytest.mark.qt``) need a display: CI runs them under ``xvfb-run -a``. Without one
they are skipped with that hint rather than crashing the interpreter.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

PLUGIN = "napari-mpt-deblur"
WIDGET = "Deblur"
MANIFEST = Path(__file__).resolve().parents[2] / "src" / "napari_mpt_deblur" / "napari.yaml"


def _has_display() -> bool:
    if sys.platform != "linux":
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
                or os.environ.get("QT_QPA_PLATFORM"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _has_display():
        return
    skip = pytest.mark.skip(reason="needs a display: run under `xvfb-run -a`")
    for item in items:
        if "qt" in item.keywords:
            item.add_marker(skip)


def register_plugin() -> None:
    """Make napari's plugin manager know this plugin, once (installed copy preferred)."""
    from npe2 import PluginManager, PluginManifest

    pm = PluginManager.instance()
    try:
        pm.get_manifest(PLUGIN)
        return
    except KeyError:
        pass
    pm.discover()  # an installed (or editable) copy is registered here, if there is one
    try:
        pm.get_manifest(PLUGIN)
    except KeyError:
        pm.register(PluginManifest.from_file(MANIFEST))


@pytest.fixture(autouse=True)
def _one_thread():
    """Two shared CPU cores: keep torch to one thread in tests."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def plugin_registered() -> str:
    """The plugin's name, after making sure napari can find its manifest."""
    register_plugin()
    return PLUGIN


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained ``mpt-test`` model saved as a project checkpoint (seeded: same weights)."""
    import torch

    from napari_mpt_deblur import create_model
    from napari_mpt_deblur.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = create_model("mpt-test")
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-test.safetensors", model)


@pytest.fixture
def shared_catalog(tiny_checkpoint: Path):
    """The shared catalog with the tiny checkpoint listed; restored afterwards."""
    from napari_mpt_deblur.models.catalog import get_catalog

    catalog = get_catalog()
    before = set(catalog.names())
    entry = catalog.add_checkpoint(tiny_checkpoint)
    yield catalog, entry
    for name in set(catalog.names()) - before:
        catalog.remove(name)


@pytest.fixture
def smooth_image() -> np.ndarray:
    """A small 12-bit blob image (uint16), cheap to deblur."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:128, 0:128]
    image = np.full((128, 128), 100.0)
    for cy, cx in rng.uniform(16, 112, size=(6, 2)):
        image += 2000.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 6.0**2))
    return (image + rng.normal(0, 5, image.shape)).clip(0, 4095).astype(np.uint16)


@pytest.fixture
def make_slow_model():
    """Factory for :func:`slow_model`."""
    return slow_model


def slow_model(delay_s: float = 0.15, fail: bool = False):
    """An ``mpt-test`` network whose forward is slow (or raises), counting its calls."""
    import time

    import torch

    from napari_mpt_deblur import create_model

    torch.manual_seed(0)
    model = create_model("mpt-test")
    original = model.forward
    model.calls = 0

    def forward(x):
        model.calls += 1
        if fail:
            raise RuntimeError("synthetic failure inside the network")
        time.sleep(delay_s)
        return original(x)

    model.forward = forward
    return model
