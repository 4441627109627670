"""Shared fixtures for the training tests: a tiny stand-in network and tiny image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _train_helpers import TinyNet, cells  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    # The machine is shared: keep each test on one core.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def tiny_net():
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory) -> Path:
    """``train/``, ``val/`` and ``unlabeled/`` folders of small synthetic uint16 TIFFs."""
    import tifffile

    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(123)
    for sub, count in (("train", 3), ("val", 1), ("unlabeled", 2)):
        (root / sub).mkdir()
        for i in range(count):
            tifffile.imwrite(root / sub / f"img{i}.tif", cells(rng))
    return root
