"""Checkpoints: project format round trip, authors' files, and refusing unsafe or broken files."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from napari_mpt_deblur import load_model
from napari_mpt_deblur.models.checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_header,
    save_checkpoint,
)
from napari_mpt_deblur.models.pretrained import bundled_models


def test_round_trip_keeps_weights_and_header(tiny_model, tmp_path):
    path = save_checkpoint(
        tmp_path / "m.safetensors",
        tiny_model,
        metadata={"name": "round-trip", "training": {"steps": 3}},
    )
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp files left
    header = read_header(path)
    assert header["arch"] == "mpt" and header["routing"] == "aligned"
    assert header["training"] == {"steps": 3} and "normalization" in header
    model = load_model(path, device="cpu")
    assert not model.training
    assert model.info["name"] == "round-trip" and len(model.info["sha256"]) == 64
    x = torch.rand(1, 1, 128, 128)
    with torch.inference_mode():
        assert torch.equal(model(x), tiny_model(x))


@pytest.mark.parametrize("prefix", ["", "Network.", "module.Network."])
def test_authors_checkpoints_load_with_any_prefix(shared_dir, tmp_path, prefix):
    ref = torch.load(shared_dir / "fixtures" / "mpt_ref_small_gray.pt", weights_only=True)
    path = tmp_path / "authors.pth"
    torch.save({prefix + k: v for k, v in ref["state_dict"].items()}, path)
    # Pooling rates are not stored in weights: a non-published schedule needs its config.
    model = load_model(path, device="cpu", config=ref["config"])
    assert model.config.routing == "compat" and model.info["authors_checkpoint"]
    assert model.config.in_channels == 1 and model.config.num_blocks == (6, 2, 2, 2)
    with torch.inference_mode():
        out = model(ref["inputs"][0])
    assert (out - ref["outputs"][0]).abs().max() <= 1e-4


def test_published_authors_layout_is_inferred(tmp_path):
    from napari_mpt_deblur import create_model

    base = create_model("mpt-base", in_channels=3, out_channels=3)
    path = tmp_path / "3dhistech.pytorch"
    torch.save({"Network." + k: v for k, v in base.state_dict().items()}, path)
    model = load_model(path, device="cpu")
    assert model.config == base.config.replace(routing="compat")


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_a_command_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"weights": torch.zeros(1), "payload": _Exploit(marker)}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_model(path, device="cpu")
    assert not marker.exists()


def test_raw_pickle_file_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_truncated_and_empty_files_give_clear_errors(tiny_model, tmp_path, suffix):
    good = tmp_path / f"good{suffix}"
    if suffix == ".safetensors":
        save_checkpoint(good, tiny_model)
    else:
        torch.save(tiny_model.state_dict(), good)
    data = good.read_bytes()
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"corrupt|truncated|not a valid"):
        load_model(truncated, device="cpu")
    empty = tmp_path / f"empty{suffix}"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_model(empty, device="cpu")


def test_state_dict_of_another_network_is_rejected(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7)}, path)
    with pytest.raises(CheckpointError, match="not an MPT state dict"):
        load_model(path, device="cpu")


def test_mismatched_shapes_are_reported_before_loading(tiny_model, tmp_path):
    sd = dict(tiny_model.state_dict())
    sd["inproj.weight"] = torch.zeros(8, 1, 5, 5)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_model(path, device="cpu")


def test_unknown_sources_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not a pretrained model.*valid keys: mpt_tiny"):
        load_model(tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match="'mpt-base' is an architecture preset, not trai"):
        load_model("mpt-base")
    with pytest.raises(CheckpointError, match="folder"):
        load_model(tmp_path)


def test_bundled_models_load_and_run():
    from napari_mpt_deblur.models.pretrained import list_pretrained

    bundled = list_pretrained()
    if not bundled:
        pytest.skip("no trained weights bundled in this checkout")
    assert sorted(bundled_models()) == sorted(e.label for e in bundled)  # the old names
    for entry in bundled:
        model = load_model(entry.key, device="cpu")
        header = read_header(entry.path)
        assert header["name"] == entry.label and "simulation" in header and "training" in header
        assert model.info.key == entry.key and model.info.name == entry.label
        with torch.inference_mode():
            out = model(torch.rand(1, model.config.in_channels, 128, 128))
        assert torch.isfinite(out).all()


@pytest.mark.parametrize(("name", "home"), [
    ("load_model", "resolve"), ("bundled_models", "pretrained"),
    ("default_model_name", "pretrained"), ("infer_mpt_config", "mpt"),
    ("strip_prefixes", "mpt"), ("AUTHOR_PREFIXES", "mpt"),
])
def test_names_that_moved_out_of_checkpoint_still_import_with_a_deprecation_warning(name, home):
    import importlib

    from napari_mpt_deblur.models import checkpoint

    with pytest.warns(DeprecationWarning, match=f"import it from napari_mpt_deblur.models.{home}"
                      ) as caught:
        moved = getattr(checkpoint, name)
    assert caught[0].filename == __file__  # the importer's line
    assert moved is getattr(importlib.import_module(f"napari_mpt_deblur.models.{home}"), name)


def test_the_old_default_model_constant_warns_and_names_the_key():
    from napari_mpt_deblur.models import checkpoint
    from napari_mpt_deblur.models.pretrained import default_model_name

    with pytest.warns(DeprecationWarning, match="DEFAULT_PRETRAINED"):
        assert checkpoint.DEFAULT_MODEL == default_model_name() == "mpt-tiny"
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        checkpoint.not_a_name  # noqa: B018
