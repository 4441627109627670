"""``benchmarks/train_throughput.py`` runs end to end on the CPU (tiny preset, one timed step):
the table it prints is what decides the training precision and compilation settings, so it must
not rot between the sessions that rerun it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_train_throughput_prints_a_row_per_variant_with_finite_times(tmp_path):
    out = tmp_path / "rows.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--presets",
         "mpt-test", "--variants", "fp32", "bf16", "--batch", "2", "--patch", "128",
         "--warmup", "1", "--steps", "1", "--json", str(out)],
        capture_output=True, text=True, env=env, cwd=ROOT / "benchmarks", timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| mpt-test | 1 | fp32 |" in proc.stdout and "| mpt-test | 1 | bf16 |" in proc.stdout
    rows = json.loads(out.read_text())
    assert [r["variant"] for r in rows] == ["fp32", "bf16"]
    for row in rows:
        assert "error" not in row, row
        assert 0 < row["median_s"] < 60 and row["loss"] == row["loss"]  # finite, not NaN
