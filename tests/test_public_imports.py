"""Benchmarks and scripts use the package's public API only.

They are the package's first outside users and the examples a newcomer copies; a private name
they import (a module or a name starting with ``_``) can be renamed or removed by any refactor
without notice and breaks them silently, since nothing runs most of them in CI. Each name they
need has a public home instead (e.g. :func:`napari_mpt_deblur.files.atomic_write`,
:func:`napari_mpt_deblur.train.optics_domain.model_simulation`). Code that a benchmark runs in
a child process is held in string constants; its import lines are checked too.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "napari_mpt_deblur"

#: ``(file, imported name)`` pairs allowed to stay private, each with its reason. Empty: every
#: name benchmarks and scripts need has a public home.
ALLOWED: dict[tuple[str, str], str] = {}

_IMPORT_LINE = re.compile(rf"^\s*(from|import)\s+{PACKAGE}\b.*$", re.MULTILINE)


def private_imports(source: str) -> list[tuple[int, str]]:
    """``(line, dotted name)`` of every import of a private module or name of the package in
    ``source``, including import lines inside string constants (child-process code)."""
    found: list[tuple[int, str]] = []

    def check(tree: ast.AST, offset: int = 0) -> None:
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
                    node.module.split(".")[0] == PACKAGE):
                for alias in node.names:
                    dotted = f"{node.module}.{alias.name}"
                    if any(part.startswith("_") for part in dotted.split(".")[1:]):
                        found.append((node.lineno + offset, dotted))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if parts[0] == PACKAGE and any(p.startswith("_") for p in parts[1:]):
                        found.append((node.lineno + offset, alias.name))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                for match in _IMPORT_LINE.finditer(node.value):
                    line = match.group(0).strip().rstrip("\\").rstrip()
                    try:
                        check(ast.parse(line), node.lineno - 1)
                    except SyntaxError:  # a multi-line import: its first line names the module
                        module = line.split()[1]
                        if any(part.startswith("_") for part in module.split(".")[1:]):
                            found.append((node.lineno, module))

    check(ast.parse(source))
    return sorted(set(found))


def _files() -> list[Path]:
    return sorted([*ROOT.glob("benchmarks/*.py"), *ROOT.glob("scripts/*.py")])


def test_the_scan_sees_benchmarks_and_scripts():
    names = {p.name for p in _files()}
    assert {"train_throughput.py", "finetune_domain_shift.py", "select_checkpoint.py",
            "export_weights.py", "speed.py"} <= names


@pytest.mark.parametrize("path", _files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_benchmarks_and_scripts_import_no_private_name(path):
    rel = f"{path.parent.name}/{path.name}"
    bad = [f"{rel}:{line} imports {name}" for line, name in private_imports(path.read_text())
           if (rel, name) not in ALLOWED]
    assert not bad, "private imports (give the name a public home):\n" + "\n".join(bad)


@pytest.mark.parametrize("source, expected", [
    ("from napari_mpt_deblur._io import atomic_write", ["napari_mpt_deblur._io.atomic_write"]),
    ("from napari_mpt_deblur.models import _registry", ["napari_mpt_deblur.models._registry"]),
    ("import napari_mpt_deblur.engine._allocator as a", ["napari_mpt_deblur.engine._allocator"]),
    ("def f():\n    from napari_mpt_deblur.train._finetune_run import (\n        SCORE_SEED,\n"
     "    )", ["napari_mpt_deblur.train._finetune_run.SCORE_SEED"]),
    ('CHILD = """\nimport torch\nfrom napari_mpt_deblur.engine._allocator import (\n'
     '    retain_freed_memory,\n)\n"""', ["napari_mpt_deblur.engine._allocator"]),
    ('CODE = """\nfrom napari_mpt_deblur.files import _umask\n"""',
     ["napari_mpt_deblur.files._umask"]),
    ("from napari_mpt_deblur import load_sample\nfrom napari_mpt_deblur.files import atomic_write\n"
     "from _machine import machine_line\nfrom . import _local", []),
])
def test_the_scan_finds_private_imports_and_only_those(source, expected):
    assert [name for _, name in private_imports(source)] == expected


@pytest.mark.parametrize("module, name", [
    ("napari_mpt_deblur", "get_device"),
    ("napari_mpt_deblur", "load_sample"),
    ("napari_mpt_deblur.engine", "retain_freed_memory"),
    ("napari_mpt_deblur.engine", "tuning_available"),
    ("napari_mpt_deblur.files", "atomic_write"),
    ("napari_mpt_deblur.files", "remove_stale_temp_files"),
    ("napari_mpt_deblur.train.optics_domain", "model_simulation"),
    ("napari_mpt_deblur.train.optics_domain", "SCORE_SEED"),
])
def test_the_public_homes_list_and_document_their_names(module, name):
    mod = importlib.import_module(module)
    assert name in mod.__all__
    obj = getattr(mod, name)
    assert callable(obj) is (name != "SCORE_SEED")
    if callable(obj):
        assert obj.__doc__ and obj.__module__.split(".")[-1] != "__init__"


def test_old_private_homes_still_give_the_same_objects():
    """Internal callers (and older user code) keep their imports: one object, two names."""
    from napari_mpt_deblur import _io, files
    from napari_mpt_deblur.train import _finetune_data, _finetune_run, optics_domain

    assert _io.atomic_write is files.atomic_write
    assert _io.remove_stale_temp_files is files.remove_stale_temp_files
    assert _finetune_data.model_simulation is optics_domain.model_simulation
    assert _finetune_run._model_simulation is optics_domain.model_simulation
    assert _finetune_run.SCORE_SEED == optics_domain.SCORE_SEED == 2027


@pytest.mark.parametrize("path", _files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_benchmarks_and_scripts_take_optimiser_steps_through_the_trainer(path):
    """A benchmark that times or runs training steps uses ``train.engine.Trainer`` (one step,
    as the issue asks); its own AdamW and clipping would time a step nobody trains with.
    (``compare_revisions.py --train`` times forward + backward only, no optimiser.)"""
    text = path.read_text()
    assert not re.search(r"torch\.optim\.\w+\(|clip_grad_norm_?\(|\.zero_grad\(", text
                         .replace("model.zero_grad(set_to_none=True)", "")
                         if path.name == "compare_revisions.py" else text)
