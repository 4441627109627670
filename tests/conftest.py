"""Shared fixtures: tiny models, the ../shared folder, deterministic torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


def pytest_configure(config: pytest.Config) -> None:
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is not present next to the checkout")
    return SHARED


@pytest.fixture(scope="session")
def tiny_model():
    """An untrained 'mpt-test' MPT (aligned routing), seeded, in eval mode."""
    import torch

    from napari_mpt_deblur import create_model

    torch.manual_seed(0)
    model = create_model("mpt-test", routing="aligned").eval()
    model.info = {"name": "mpt-test (untrained)", "arch": "mpt"}
    return model


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_model, tmp_path_factory) -> Path:
    from napari_mpt_deblur.models.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    return save_checkpoint(path, tiny_model, metadata={"name": "tiny-test"})


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
