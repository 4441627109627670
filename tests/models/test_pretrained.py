"""The pretrained table: keys, old names, the recorded SHA-256 and the error for unknown names."""

from __future__ import annotations

import re
import warnings

import pytest
import torch

from napari_mpt_deblur.models._registry import get_architecture, list_models
from napari_mpt_deblur.models.checkpoint import file_sha256
from napari_mpt_deblur.models.pretrained import (
    DEFAULT_PRETRAINED,
    canonical_name,
    get_pretrained,
    list_pretrained,
    pretrained_keys,
)
from napari_mpt_deblur.models.resolve import clear_model_cache, load_model, resolve_model

OLD_NAMES = {"mpt-tiny": "mpt_tiny.defocus", "mpt-tiny-wide": "mpt_tiny.defocus_wide",
             "htcsf": "htcsf.defocus"}


@pytest.fixture(autouse=True)
def _empty_cache():
    clear_model_cache()
    yield
    clear_model_cache()


def test_keys_are_arch_dot_tag_of_a_preset_the_default_first():
    keys = pretrained_keys()
    assert keys[0] == DEFAULT_PRETRAINED == "mpt_tiny.defocus"
    assert set(keys) == set(OLD_NAMES.values())
    for key in keys:
        entry = get_pretrained(key)
        arch, tag = key.split(".")
        assert arch == entry.preset.replace("-", "_") and tag
        assert entry.preset in list_models()  # create_model(preset) builds the network
        assert get_architecture(entry.arch).name == entry.arch
        assert entry.file.endswith(".safetensors") and entry.description and entry.lineage


def test_shipped_files_match_the_recorded_sha256():
    entries = list_pretrained(installed=False)
    assert [e.key for e in entries] == pretrained_keys()
    for entry in entries:
        assert entry.path.is_file(), f"{entry.key}: {entry.file} is not installed"
        assert file_sha256(entry.path) == entry.sha256, (
            f"{entry.file} changed: update the sha256 of {entry.key!r} in "
            "napari_mpt_deblur/models/pretrained.py")


@pytest.mark.parametrize("old", sorted(OLD_NAMES))
def test_old_names_still_load_with_a_deprecation_warning_at_the_callers_line(old):
    with pytest.warns(DeprecationWarning, match=f"use the pretrained key '{OLD_NAMES[old]}'") as w:
        net = load_model(old, device="cpu")
    assert w[0].filename == __file__  # the user's line, not the package's internals
    assert net.info.key == OLD_NAMES[old] and net.info.name == old
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the key itself never warns
        by_key = load_model(OLD_NAMES[old], device="cpu")
    for a, b in zip(net.state_dict().values(), by_key.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_canonical_name_maps_old_names_silently_for_the_cli_and_widgets():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert canonical_name("mpt-tiny-wide") == "mpt_tiny.defocus_wide"
        assert canonical_name("htcsf.defocus") == "htcsf.defocus"
        assert canonical_name("runs/x.safetensors") == "runs/x.safetensors"


def test_an_unknown_name_lists_the_valid_keys_and_the_closest_one():
    valid = "valid keys: mpt_tiny.defocus, mpt_tiny.defocus_wide, htcsf.defocus"
    with pytest.raises(ValueError, match=re.escape(valid)) as info:
        get_pretrained("mpt_tiny.defocs")
    assert "did you mean 'mpt_tiny.defocus'" in str(info.value)
    with pytest.raises(FileNotFoundError, match=r"did you mean 'htcsf\.defocus'.*valid keys"):
        resolve_model("htcsf.defocs", device="cpu")
    with pytest.raises(FileNotFoundError, match="architecture preset, not trained weights"):
        resolve_model("mpt-small", device="cpu")


def test_the_catalog_shows_old_names_and_loads_by_key_without_warnings():
    from napari_mpt_deblur.models.catalog import ModelCatalog

    catalog = ModelCatalog()
    bundled = {e.name: e.source for e in catalog.entries() if e.kind == "bundled"}
    assert bundled == OLD_NAMES
    assert catalog.default_name() == "mpt-tiny"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net = catalog.load("mpt-tiny-wide", device="cpu")
    assert net.info.key == "mpt_tiny.defocus_wide"


def test_the_command_line_accepts_old_names_without_warnings(tmp_path, monkeypatch):
    from napari_mpt_deblur import cli

    seen = []
    monkeypatch.setattr(cli, "build_parser", _parser_running(lambda: seen.append(
        load_model("mpt-tiny", device="cpu").info.key)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cli.main(["fake"]) == 0
    assert seen == ["mpt_tiny.defocus"]
    with pytest.warns(DeprecationWarning):  # outside the command line, code is told
        load_model("mpt-tiny", device="cpu")


def _parser_running(body):
    import argparse

    def build_parser():
        parser = argparse.ArgumentParser()
        parser.add_argument("-v", "--verbose", action="count", default=0)
        parser.add_argument("-q", "--quiet", action="store_true")
        sub = parser.add_subparsers(dest="command")
        sub.add_parser("fake").set_defaults(_run=lambda args: body())
        return parser

    return build_parser
