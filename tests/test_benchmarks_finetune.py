"""``benchmarks/finetune_domain_shift.py`` runs end to end (two fine-tuning steps, one held-out
pair): its table and its Spearman check decide how fine-tuning selects weights, so the command
that regenerates them must not rot between the sessions that rerun it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


@pytest.mark.skipif(not (DATA / "train").is_dir(), reason="needs ../shared/data/train")
def test_finetune_benchmark_reports_gains_guard_and_score_validation(tmp_path):
    out = tmp_path / "rows.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "finetune_domain_shift.py"), "--threads", "1",
         "--domain", "oil-1.2", "--modes", "none", "replay", "--seeds", "0", "--steps", "2",
         "--max-eval", "1", "--levels", "1", "--crop", "128", "--max-side", "256",
         "--extra", str(tmp_path / "none"), "--json", str(out)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| (a) no fine-tuning |" in proc.stdout
    assert "| (e) replay at the given optics, all weights |" in proc.stdout
    assert "Spearman" in proc.stdout
    payload = json.loads(out.read_text())
    replay = next(r for r in payload["rows"] if r["mode"] == "replay")
    run = replay["runs"][0]
    assert run["steps"] == 2 and isinstance(run["kept_start"], bool) and run["validation"]
    checkpoints = payload["checkpoints"]
    # the start once, then every validation of the run (val_every = 1 for 2 steps: steps 1, 2)
    assert [c["step"] for c in checkpoints] == [0, 1, 2]
    for c in checkpoints:
        assert all(math.isfinite(c[k]) for k in ("score", "reblur_psnr", "true_psnr"))
    # the starting model's true PSNR is the no-fine-tuning row's
    none = next(r for r in payload["rows"] if r["mode"] is None and r["label"].startswith("(a)"))
    assert checkpoints[0]["true_psnr"] == none["runs"][0]["summary"]["mean"][0]

    # runs made in parallel (here: the same payload twice, as if two seeds) merge into one table
    merged = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "finetune_domain_shift.py"), "--merge",
         str(out), str(out)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert merged.returncode == 0, merged.stderr[-3000:]
    replay_line = next(line for line in merged.stdout.splitlines()
                       if line.startswith("| (e) replay"))
    assert "±" in replay_line  # two runs pooled
    assert "rank the 5 checkpoints" in merged.stdout  # the start counted once
    assert merged.stdout.count("| (a) no fine-tuning |") == 1
