"""The npe2 manifest: valid, every target importable, cheap to import, contributions wired."""

from __future__ import annotations

import fnmatch
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

npe2 = pytest.importorskip("npe2")

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "src" / "napari_mpt_deblur" / "napari.yaml"


@pytest.fixture(scope="module")
def manifest():
    from npe2 import PluginManifest

    return PluginManifest.from_file(MANIFEST)


def python_names(manifest) -> list[str]:
    return [c.python_name for c in manifest.contributions.commands if c.python_name]


def test_npe2_validate_passes_with_imports():
    from npe2.cli import app
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["validate", str(MANIFEST), "--imports"])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output


def test_every_python_name_imports(manifest):
    names = python_names(manifest)
    assert len(names) == len(manifest.contributions.commands)
    for name in names:
        module, _, attr = name.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), name


def test_manifest_targets_do_not_import_torch(manifest):
    modules = sorted({name.partition(":")[0] for name in python_names(manifest)})
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + "print('torch' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True)
    assert out.stdout.strip() == "False"


def test_contributions_are_wired(manifest):
    from napari_mpt_deblur.models.catalog import CHECKPOINT_SUFFIXES

    contributions = manifest.contributions
    command_ids = {c.id for c in contributions.commands}
    widgets = {w.display_name: w.command for w in contributions.widgets}
    assert widgets == {
        "Deblur": "napari-mpt-deblur.deblur_widget",
        "Fine-tune": "napari-mpt-deblur.finetune_widget",
        "Detection preview": "napari-mpt-deblur.detect_widget",
    }
    menu = contributions.menus["napari/layers/filter"]
    assert [item.command for item in menu] == ["napari-mpt-deblur.deblur_image"]
    samples = {sample.key: sample.command for sample in contributions.sample_data}
    assert list(samples) == ["defocused_actin", "defocused_nuclei_actin"]
    assert set(samples.values()) <= command_ids
    patterns = [p for reader in contributions.readers for p in reader.filename_patterns]
    for name in [f"model{s}" for s in CHECKPOINT_SUFFIXES]:
        assert any(fnmatch.fnmatchcase(name, p) for p in patterns), name
    for name in ["a.tif", "b.ome.tiff", "c.TIF", "d.png"]:  # napari's own reader opens images
        assert not any(fnmatch.fnmatch(name.lower(), p.lower()) for p in patterns), name
    referenced = {w.command for w in contributions.widgets} | {r.command for r in
                                                               contributions.readers}
    assert referenced <= command_ids


def test_menu_titles_do_not_repeat_the_plugin_name(manifest):
    """napari 0.9 titles widgets, samples and commands "<item> (<plugin display name>)"."""
    plugin = manifest.display_name
    contributions = manifest.contributions
    items = [w.display_name for w in contributions.widgets]
    items += [s.display_name for s in contributions.sample_data]
    items += [c.title for c in contributions.commands]
    for item in items:
        assert plugin.lower() not in item.lower(), f"{item} ({plugin})"
