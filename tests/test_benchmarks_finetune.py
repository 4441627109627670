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
        assert all(math.isfinite(c[k]) for k in ("score", "reblur_psnr", "true_psnr",
                                                  "sim_psnr", "user_psnr", "focus_psnr"))
    # every compared score gets its Spearman row, the guard's picks next to it
    assert "| simulated PSNR on the user's images (start model's output re-blurred)" in (
        proc.stdout)
    assert "| mean of the two above |" in proc.stdout
    assert "replay seed 0: " in proc.stdout
    assert checkpoints[0]["closeness"] > checkpoints[-1]["closeness"] or (
        checkpoints[-1]["closeness"] > 100)  # the start is closest to itself
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


def _benchmark():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "finetune_domain_shift", ROOT / "benchmarks" / "finetune_domain_shift.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_guard_picks_replay_the_guard_with_each_score():
    bench = _benchmark()
    thirds = ("0-1", "1-2", "2-3")

    def checkpoint(run, step, user, sim, truth, user_thirds=(0, 0, 0)):
        return {"run": run, "mode": "replay", "seed": 0, "step": step, "score": sim,
                "sim_psnr": sim, "user_psnr": user, "true_psnr": truth,
                "score_by_defocus_um": dict(zip(thirds, (sim,) * 3)),
                "user_psnr_by_defocus_um": {b: user + d for b, d in zip(thirds, user_thirds)}}

    start = checkpoint(None, 0, 20.0, 30.0, 25.0)
    runs = [start,
            # the bundled score rises while the truth falls; the user score sees it
            checkpoint("fooling", 1, 19.9, 30.3, 24.9),
            checkpoint("fooling", 2, 20.1, 30.4, 24.8, user_thirds=(-0.3, 0.2, 0.4)),
            # both rise with the truth; the guard keeps the best step
            checkpoint("good", 1, 20.2, 30.1, 25.2),
            checkpoint("good", 2, 20.4, 30.2, 25.3)]
    sim = {p["run"]: p for p in bench.guard_picks(runs, "sim")}
    user = {p["run"]: p for p in bench.guard_picks(runs, "user")}
    assert sim["fooling"]["step"] == 2 and sim["fooling"]["true_change"] == pytest.approx(-0.2)
    # step 2's user score gained 0.1 dB on the mean but lost 0.2 dB in focus: refused
    assert user["fooling"]["step"] == 0 and user["fooling"]["true_change"] == 0.0
    assert user["good"]["step"] == 2 and user["good"]["true_change"] == pytest.approx(0.3)
    mix = bench.checkpoint_scores(runs[1])["mix"]
    assert mix == pytest.approx(0.5 * (19.9 + 30.3))
    assert bench.guard_picks(runs, "focus") == []  # not recorded: no picks


def test_the_domains_optics_are_what_deblur_and_the_scores_get():
    """Held-out truth and candidate scores run a conditioned model at the domain's optics
    (its hints without the defocus range, which is not a property of the microscope)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import finetune_domain_shift as bench
    finally:
        sys.path.pop(0)
    optics = bench.domain_optics(bench.DOMAINS["oil-1.2"]["hints"])
    assert optics == {"pixel_size_um": 0.1, "numerical_aperture": 1.2, "wavelength_nm": 550.0,
                      "immersion_index": 1.515}
