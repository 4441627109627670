"""The two ABAB timing tools used for the performance levers run and compare what they claim.

``benchmarks/compare_revisions.py`` imports a git revision's package beside the checkout's; if it
silently built the checkout's models twice, every lever would read as 1.00x. ``speed.fair_pair``
with ``clock="cpu"`` must still time both sides.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_compare_revisions_builds_the_base_revisions_own_models():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from compare_revisions import import_revision

    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True
                      ).returncode:
        pytest.skip("not a git checkout")
    with tempfile.TemporaryDirectory() as tmp:
        registry = import_revision("HEAD", Path(tmp) / "base", "base_test")
        model = registry.create_model("mpt-test")
        assert type(model).__module__ == "napari_mpt_deblur_base_test.models.mpt"
        block = model.encoder_level1[0]
        assert type(block).__module__ == "napari_mpt_deblur_base_test.models.layers"


@pytest.mark.parametrize("train", [False, True], ids=["inference", "training-step"])
def test_compare_revisions_command_reports_both_clocks(train):
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True
                      ).returncode:
        pytest.skip("not a git checkout")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    result = subprocess.run(
        [sys.executable, "benchmarks/compare_revisions.py", "--base", "HEAD", "--after", "HEAD",
         "--preset", "mpt-test", "--size", "128", "--repeats", "2"]
        + (["--train", "--batch", "2"] if train else []),
        capture_output=True, text=True, env=env, timeout=300, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    diff = re.search(r"max abs diff ([0-9.e+-]+)", result.stdout)
    assert diff and float(diff.group(1)) == 0.0  # one revision against itself: same function
    assert "CPU time of the process" in result.stdout
    assert ("training step 2×128²" in result.stdout) == train


def test_fair_pair_on_cpu_time_times_both_sides():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from speed import fair_pair

    r = fair_pair("mpt-test", 128, "cpu", 1, 2, "off", clock="cpu")
    assert len(r["times"]["ours"]) == len(r["times"]["released"]) == 2
    assert r["ours_s"] > 0 and r["released_s"] > 0
    assert r["max_abs_diff"] < 1e-4
