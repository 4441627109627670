"""docs/architecture.md names only what exists, and names every module of the package."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "napari_mpt_deblur"
DOC = ROOT / "docs" / "architecture.md"
#: Folders of the repository that the page names paths in (relative to the repository root).
OUTSIDE = ("src", "tests", "scripts", "benchmarks", "configs", "docs", ".ci")
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"


def _ticked() -> list[str]:
    """Every backticked token of the page (a code span split at spaces and commas)."""
    spans = re.findall(r"`([^`\n]+)`", DOC.read_text(encoding="utf-8"))
    return [t for span in spans for t in re.split(r"[\s,()]+", span) if t]


def _modules() -> list[str]:
    """Package modules as the page names them: files relative to the package, and the
    subpackages as ``name/`` (their ``__init__.py`` is the subpackage itself)."""
    out = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        out.append(rel if rel.count("/") == 0 or path.name != "__init__.py"
                   else rel[: -len("__init__.py")])
    return out


@cache
def _definitions() -> tuple[dict[str, set[str]], dict[str, dict[str, set[str]]],
                            dict[str, list[str]]]:
    """Top-level names per module (dotted, from the package), members and bases per class."""
    module_names: dict[str, set[str]] = {}
    members: dict[str, set[str]] = {}
    bases: dict[str, list[str]] = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).with_suffix("")
        dotted = ".".join(p for p in rel.parts if p != "__init__")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = module_names.setdefault(dotted, set())
        for node in tree.body:
            names.update(_bound(node))
            if isinstance(node, ast.ClassDef):
                members.setdefault(node.name, set()).update(
                    n for item in node.body for n in _bound(item))
                bases.setdefault(node.name, []).extend(
                    b.id for b in node.bases if isinstance(b, ast.Name))
    return module_names, members, bases


def _bound(node: ast.AST) -> set[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, ast.Assign):
        names = {t.id for t in node.targets if isinstance(t, ast.Name)}
        if "__all__" in names and isinstance(node.value, (ast.List, ast.Tuple)):
            # lazily exported names (a module __getattr__) are defined by being listed
            names |= {e.value for e in node.value.elts if isinstance(e, ast.Constant)}
        return names
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return {node.target.id}
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in node.names}
    return set()


def _class_has(cls: str, attr: str) -> bool:
    _, members, bases = _definitions()
    seen, todo = set(), [cls]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if attr in members.get(name, ()):
            return True
        todo.extend(bases.get(name, ()))
    return False


def _path_exists(token: str) -> bool:
    token = token.rstrip(".:;")
    if token.split("/")[0] in OUTSIDE:
        return any(ROOT.glob(token.rstrip("/"))) if token.strip("/") else False
    if "/" in token:
        return (PKG / token).exists()
    return any(PKG.rglob(token)) or any((ROOT / d / token).exists()
                                        for d in ("scripts", "benchmarks", "tests"))


def _reference_problem(token: str) -> str | None:
    """Why a dotted ``module.name`` or ``Class.member`` reference does not resolve (``None``:
    it does, or the token is not such a reference, e.g. ``cfg.optim``)."""
    module_names, members, _ = _definitions()
    absolute = token.startswith("napari_mpt_deblur.")
    if absolute:
        token = token.removeprefix("napari_mpt_deblur.")
        if "." not in token:  # an attribute of the package itself
            return None if token in module_names[""] | set(module_names) else "no such name"
    parts = token.split(".")
    if parts[0] in members and len(parts) == 2:
        return None if _class_has(*parts) else f"{parts[0]} has no member {parts[1]!r}"
    # private modules are also named without their subpackage (``_layers.layer_axes``)
    by_basename = {m.rsplit(".", 1)[-1]: m for m in module_names if m.rsplit(".", 1)[-1][:1] == "_"}
    for cut in range(len(parts), 0, -1):
        module = ".".join(parts[:cut])
        if module not in module_names and cut == 1 and module in by_basename:
            module = by_basename[module]
        if module in module_names:
            rest = parts[cut:]
            if not rest:
                return None
            if rest[0] not in module_names[module]:
                return f"module {module!r} defines no {rest[0]!r}"
            if len(rest) == 2 and rest[0] in members and not _class_has(*rest):
                return f"{rest[0]} has no member {rest[1]!r}"
            return None
    return "no such module" if absolute else None


def test_every_module_of_the_package_is_on_the_page():
    ticked = set(_ticked())
    missing = [m for m in _modules() if m not in ticked]
    assert not missing, f"docs/architecture.md does not name {missing}"


def test_every_python_path_the_page_names_exists():
    """``x/y.py`` relative to the package, ``src/...``, ``scripts/...`` etc. relative to the
    repository, a bare ``y.py`` anywhere in the package (or scripts, benchmarks, tests)."""
    paths = [t for t in _ticked() if t.rstrip(".:;").endswith(".py")]
    assert len(paths) > 80  # the module map alone names every module
    missing = sorted({t for t in paths if not _path_exists(t)})
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


def test_every_module_and_member_the_page_names_exists():
    refs = [t for t in _ticked() if re.fullmatch(rf"{_NAME}(\.{_NAME})+", t)
            and not re.search(r"\.(py|md|ya?ml|json|jsonl|safetensors|pt|pth|sh|tif)$", t)]
    problems = {t: _reference_problem(t) for t in refs}
    problems = {t: why for t, why in problems.items() if why}
    assert not problems, f"docs/architecture.md names what does not exist: {problems}"


@pytest.mark.parametrize("token, ok", [
    ("train/engine.py", True), ("train/nothere.py", False), ("engine/lazy.py", True),
    ("src/napari_mpt_deblur/cli.py", True), ("scripts/nothere.py", False),
    ("evaluation.py", False), ("_commands/", True),
])
def test_the_path_check_can_fail(token, ok):
    assert _path_exists(token) is ok


@pytest.mark.parametrize("token, ok", [
    ("engine.predict.deblur", True), ("engine.predict.no_such_function", False),
    ("napari_mpt_deblur.train.nothere", False), ("train.loop.fit", True),
    ("napari_mpt_deblur.Cancelled", True), ("napari_mpt_deblur.NoSuchName", False),
    ("napari_mpt_deblur.no_module.function", False),
    ("_layers.layer_axes", True), ("_layers.no_such_function", False),
    ("TrainConfig.from_file", True), ("TrainConfig.no_such_member", False),
    ("EvalConfig.to_dict", True),  # inherited from DictRoundTrip
    ("cfg.optim", True),  # not a reference to the package: not checked
])
def test_the_reference_check_can_fail(token, ok):
    assert (_reference_problem(token) is None) is ok
