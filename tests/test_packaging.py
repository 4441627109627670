"""Packaging: the installed distribution says what the source says (licence, one version)."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import pytest

import napari_mpt_deblur

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dist() -> importlib.metadata.Distribution:
    return importlib.metadata.distribution("napari-mpt-deblur")


def test_installed_license_is_apache_2_and_ships_the_license_text(dist):
    meta = dist.metadata
    assert meta["License-Expression"] == "Apache-2.0"  # SPDX form (PEP 639), no free text
    assert not [c for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    licenses = [f for f in dist.files or [] if f.name == "LICENSE"]
    assert licenses, "LICENSE is not in the installed distribution"
    text = licenses[0].locate().read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text


def test_installed_version_is_the_package_version(dist):
    assert dist.version == napari_mpt_deblur.__version__


def test_no_placeholder_project_urls(dist):
    urls = dist.metadata.get_all("Project-URL") or []
    assert not [u for u in urls if "example.invalid" in u]


def test_the_version_is_written_in_one_place_only():
    """pyproject takes the version from ``__init__``; a literal there would drift."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    project = pyproject["project"]
    assert "version" not in project and "version" in project["dynamic"]
    dynamic = pyproject["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "napari_mpt_deblur.__version__"}
    manifest = (ROOT / "src" / "napari_mpt_deblur" / "napari.yaml").read_text(encoding="utf-8")
    assert "version" not in manifest  # napari takes it from the distribution
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").lstrip().startswith("Apache License")
