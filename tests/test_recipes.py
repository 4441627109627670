"""Training recipes (``configs/recipes/``) and the references to them.

The repository keeps one runnable recipe per bundled model, not a config per experiment: the
stage history lives in docs/training.md and in git. A run that is still open (to be resumed by
a later session) keeps its config in ``configs/experiments/`` until it ships or is dropped.
These tests hold the recipes to the weights they describe, and the docs to the files that exist.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from napari_mpt_deblur.models.checkpoint import read_header
from napari_mpt_deblur.models.pretrained import bundled_models
from napari_mpt_deblur.train.config import RUN_CONTROL_FIELDS, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "configs" / "recipes"
EXPERIMENTS = ROOT / "configs" / "experiments"
# A commit, then a path inside it (``git show 7f1c27b:configs/htcsf.yaml``, ``git archive 7f1c27b
# training-state``): a pointer into the history, not a claim that the file is in the tree.
_IN_HISTORY = re.compile(r"[0-9a-f]{7,40}[: ]$")


def _text_files() -> list[Path]:
    """Everything a reader or a tool follows a path from: docs, code, configs, CI."""
    files = [ROOT / "README.md", ROOT / "pyproject.toml", ROOT / "tox.ini", ROOT / ".ci" / "run"]
    for folder, pattern in (("docs", "*.md"), ("src", "*.md"), ("src", "*.py"),
                            ("src", "*.yaml"), ("scripts", "*.py"), ("benchmarks", "*.py"),
                            ("benchmarks", "*.sh"), ("tests", "*.py"), ("configs", "*.yaml")):
        files += sorted((ROOT / folder).rglob(pattern))
    return [f for f in files if f.is_file()]


def test_configs_holds_only_recipes_and_each_loads():
    """Recipes, plus the configs of training runs still open (``configs/experiments/``): each
    loads, and each open run is described in docs/training.md, so none is a diary entry."""
    files = sorted(f for f in (ROOT / "configs").rglob("*") if f.is_file())
    assert files and all(f.parent in (RECIPES, EXPERIMENTS) and f.suffix in (".yaml", ".json")
                         for f in files)
    for f in files:
        TrainConfig.from_file(f)
    assert {"smoke", *bundled_models()} <= {f.stem for f in files if f.parent == RECIPES}
    training_doc = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    for f in files:
        if f.parent == EXPERIMENTS:
            assert f"configs/experiments/{f.name}" in training_doc, f"{f.name} is not described"


@pytest.mark.parametrize("name", sorted(bundled_models()))
def test_each_bundled_model_was_made_by_its_recipe(name):
    """The recipe's settings are those recorded in the shipped weights' header.

    Only execution settings (``RUN_CONTROL_FIELDS``: steps, out_dir, time budget, ...) may differ,
    the same rule as for resuming a run; so the recipe both reproduces the shipped file's last
    stage and resumes the run that made it.
    """
    header = read_header(bundled_models()[name]) or {}
    recorded = header.get("training", {}).get("config")
    assert recorded, f"{name}: the weights do not record their training config"
    trained = TrainConfig.from_dict(recorded)
    recipe = TrainConfig.from_file(RECIPES / f"{name}.yaml")
    differing = {field: (getattr(recipe, field), getattr(trained, field))
                 for field in TrainConfig.field_names()
                 if field not in RUN_CONTROL_FIELDS
                 and getattr(recipe, field) != getattr(trained, field)}
    assert not differing, f"{name}: recipe vs weights differ in {differing}"


def test_recipes_name_data_that_exist(shared_dir):
    """Paths under data_root must exist; ``${PWD}/runs/...`` ones are written by
    scripts/prepare_extra_data.py and are not checked."""
    for f in sorted(RECIPES.glob("*.yaml")):
        cfg = TrainConfig.from_file(f).replace(data_root=str(shared_dir / "data"))
        for entry in (*cfg.train_dirs, *cfg.val_dirs, *cfg.extra_dirs):
            if "${" not in entry:
                assert cfg.resolve_path(entry).exists(), f"{f.name}: {entry}"


@pytest.mark.slow
def test_smoke_recipe_trains(shared_dir, tmp_path):
    import torch

    from napari_mpt_deblur.cli import main

    run = tmp_path / "run"
    assert main(["train", "--config", str(RECIPES / "smoke.yaml"), "--data-root",
                 str(shared_dir / "data"), "--steps", "1", "--out", str(run), "--device", "cpu",
                 "--no-progress"]) == 0
    assert torch.load(run / "state.pt", weights_only=True)["step"] == 1


def test_every_config_path_named_in_the_repository_exists():
    missing = []
    for f in _text_files():
        text = f.read_text(encoding="utf-8", errors="replace")
        for m in re.finditer(r"(?<![\w/.-])configs/[\w./-]+\.(?:ya?ml|json)", text):
            if not _IN_HISTORY.search(text[max(0, m.start() - 41):m.start()]) \
                    and not (ROOT / m.group()).is_file():
                missing.append(f"{f.relative_to(ROOT)}: {m.group()}")
    assert not missing


def test_the_removed_training_state_folder_is_named_only_as_history():
    assert not (ROOT / "training-state").exists()
    stale = []
    for f in _text_files():
        if f == Path(__file__):
            continue
        text = f.read_text(encoding="utf-8", errors="replace")
        for m in re.finditer(r"training-state/", text):
            if not _IN_HISTORY.search(text[max(0, m.start() - 41):m.start()]):
                line = text.count("\n", 0, m.start()) + 1
                stale.append(f"{f.relative_to(ROOT)}:{line}")
    assert not stale


def test_relative_links_in_the_docs_resolve():
    broken = []
    for f in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for m in re.finditer(r"\]\(([^)\s]+)\)", f.read_text(encoding="utf-8")):
            target = m.group(1).split("#")[0]
            if target and not re.match(r"[a-z]+:", target) \
                    and not (f.parent / target).exists():
                broken.append(f"{f.relative_to(ROOT)}: {m.group(1)}")
    assert not broken
