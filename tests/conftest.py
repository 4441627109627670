"""Shared fixtures: tiny models, the ../shared folder, deterministic torch, the scripts."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def pytest_configure(config: pytest.Config) -> None:
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI (``CI`` set, as ``.ci/run`` does), a skipped test fails the run.

    CI installs everything the suite needs (Qt, napari, ../shared beside the clone), so a skip
    there means a missing dependency or display that would hide a broken widget behind a green
    run. Developers without a display keep their skips.
    """
    import os

    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped and session.exitstatus == 0:
        names = ", ".join(sorted({r.nodeid for r in skipped})[:10])
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(
                f"CI: {len(skipped)} test(s) skipped ({names}); CI must run every test",
                red=True,
            )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def load_script() -> Callable[[str], ModuleType]:
    """Import ``scripts/<name>.py`` (the scripts are not a package), a fresh module each call."""

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


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


@pytest.fixture
def spy_deblur(monkeypatch) -> Callable[..., list[dict]]:
    """Record the keyword arguments of every ``deblur`` call while still running it.

    Tests that check what reached the engine (the optics, ``amp``, ``ensemble``) call
    ``calls = spy_deblur()`` (or ``spy_deblur(module)`` for a caller that imported ``deblur``
    by name) and read ``calls`` afterwards; the real engine still runs, so the command's output
    is checked too.
    """

    def install(module: ModuleType | None = None) -> list[dict]:
        if module is None:
            from napari_mpt_deblur.engine import predict as module  # commands import it late
        calls: list[dict] = []
        real = module.deblur

        def spy(*args, **kwargs):
            calls.append(kwargs)
            return real(*args, **kwargs)

        monkeypatch.setattr(module, "deblur", spy)
        return calls

    return install
