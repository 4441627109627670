"""``benchmarks/gpu.py`` works before a GPU is ever lent: its ``--dry-run`` runs every row of the
GPU plan on the CPU at tiny sizes, so the one-shot device run cannot fail on a typo.

Device time comes in short, rare slots; a script first run on the device would spend one of them
on its own bugs. The dry run uses the same row functions, tables and budget logic.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.py"


@functools.cache
def _load_gpu_module():
    """``benchmarks`` is not a package: import the script by path (for its planned row ids)."""
    spec = importlib.util.spec_from_file_location("gpu_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NAPARI_MPT_DEBLUR_MALLOC": "0"}
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), *extra],
        capture_output=True, text=True, env=env, timeout=300, cwd=ROOT,
    )


@pytest.fixture(scope="module")
def planned_ids() -> list[str]:
    gpu = _load_gpu_module()
    return [row_id for row_id, *_ in gpu.planned_rows(gpu.DRY_PLAN)]


@pytest.mark.slow
def test_dry_run_writes_every_row(tmp_path, planned_ids):
    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (tmp_path / "gpu_dry_run.md").read_text()
    data = json.loads((tmp_path / "gpu_dry_run.json").read_text())

    rows = data["rows"]
    assert [r["status"] for r in rows] == ["ok"] * len(rows), [r.get("note") for r in rows]
    assert sorted({r["id"] for r in rows}) == sorted(planned_ids)
    by_section: dict[str, list[dict]] = {}
    for r in rows:
        by_section.setdefault(r["section"], []).append(r["values"])

    # Same weights, same function: the optimised MPT and the released algorithm agree.
    assert [v["size"] for v in by_section["reference"]] == [128, 256]
    assert all(v["max_abs_diff"] <= 1e-4 and v["ratio"] > 0 for v in by_section["reference"])
    # bf16 and fp16 for the shipped and the published model, each against fp32.
    precision = by_section["precision"]
    assert sorted((v["model"].split(" (")[1], v["dtype"]) for v in precision) == [
        ("published)", "bf16"), ("published)", "fp16"), ("shipped)", "bf16"), ("shipped)", "fp16")
    ]
    assert all(math.isfinite(v["psnr_db"]) and v["psnr_db"] > 20 for v in precision)
    tiled = by_section["tiled"]
    assert len(tiled) == 2 and all(v["tiles"] == 9 and v["tile"] == 128 for v in tiled)
    (train,) = by_section["training"]
    assert train["steps_per_s"] > 0 and train["amp"] == "fp32"

    # The Markdown has every section's table, each row with numbers (no skip notes).
    for title, _ in _load_gpu_module().SECTIONS.values():
        assert f"### {title}" in table
    assert "skipped" not in table and "failed" not in table
    body = [line for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| model |")]
    assert len(body) == len(rows)  # one table line per JSON row


def test_budget_skips_rows_but_lists_them(tmp_path, planned_ids):
    """Out of time, every planned row is still in both outputs, marked with why it did not run."""
    proc = _run(tmp_path, "--budget-s", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "gpu_dry_run.json").read_text())
    assert [r["id"] for r in data["rows"]] == planned_ids
    assert all(r["status"] == "skipped" for r in data["rows"])
    table = (tmp_path / "gpu_dry_run.md").read_text()
    assert table.count("skipped: time budget") == len(planned_ids)


def test_released_port_runs_off_the_cpu():
    """The GPU rows time the released algorithm on CUDA; its port builds masks without a device.
    The ``meta`` device stands in for CUDA here: any tensor left on the CPU would fail."""
    import torch

    from napari_mpt_deblur import create_model

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from speed import released_forward

    model = create_model("mpt-test", routing="compat").eval().to("meta")
    x = torch.rand(1, 1, 128, 128, device="meta")
    assert released_forward(model, x).shape == x.shape
