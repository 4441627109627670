"""The core never imports napari or Qt, and importing the package does not import torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

CORE = [
    "napari_mpt_deblur",
    "napari_mpt_deblur.models",
    "napari_mpt_deblur.engine.predict",
    "napari_mpt_deblur.simulate",
    "napari_mpt_deblur.train",
    "napari_mpt_deblur.detect",
    "napari_mpt_deblur.cli",
    "napari_mpt_deblur.metrics",
    "napari_mpt_deblur.evaluation",
    "napari_mpt_deblur.optics_metadata",
]


@pytest.mark.parametrize("module", CORE)
def test_core_modules_do_not_import_napari_or_qt(module):
    code = (
        f"import sys, importlib; importlib.import_module({module!r}); "
        "bad = [m for m in ('napari', 'qtpy', 'PyQt5', 'magicgui') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_package_import_is_cheap():
    code = "import sys, napari_mpt_deblur; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_evaluation_import_is_cheap():
    """The harness loads torch, scikit-image and matplotlib only when it runs or draws."""
    code = ("import sys, napari_mpt_deblur.evaluation; "
            "print(','.join(m for m in ('torch', 'matplotlib', 'skimage') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_building_the_cli_parser_imports_no_torch():
    """``mpt-deblur --help`` and argument errors stay quick: the subcommands' choices come from
    torch-free modules, and torch is imported only by the subcommand that runs. (SciPy too:
    the simulator's optics, imported with those modules, load ``scipy.fft`` when they blur.)"""
    code = ("import sys; from napari_mpt_deblur.cli import build_parser; "
            "parser = build_parser(); parser.parse_args(['finetune', 'x.tif', '-o', 'y']); "
            "print(','.join(m for m in ('torch', 'scipy', 'napari', 'qtpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
