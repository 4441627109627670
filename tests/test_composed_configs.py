"""Run configs composed from shared parts, read and written flat.

``TrainConfig`` holds ``optim`` and ``efcr``, ``FinetuneConfig`` also ``optics``; every file
written so far (recipes, the ``config`` of resumable states, the ``training`` header of the
bundled weights) holds the parts' fields flat, and must read unchanged, without a warning.
"""

import dataclasses
import json
import warnings
from pathlib import Path

import pytest

from napari_mpt_deblur.models.checkpoint import read_header
from napari_mpt_deblur.train import (
    EfcrConfig,
    FinetuneConfig,
    OpticsHints,
    OptimConfig,
    TrainConfig,
    get_finetune_preset,
)
from napari_mpt_deblur.train.finetune import FINETUNE_PRESETS

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = sorted((ROOT / "src" / "napari_mpt_deblur" / "weights").glob("*.safetensors"))

#: ``TrainConfig().to_dict()`` before the parts were nested (54d03a1): the ``config`` of
#: every ``state.pt``/``config.json`` written so far has these keys (older ones fewer).
FLAT_TRAIN_DEFAULTS = {
    "model": "mpt-tiny", "model_overrides": {}, "routing": "aligned", "data_root": "data",
    "train_dirs": ["train/bbbc006_w2", "train/examplehuman/d1.tif",
                   "train/examplehuman/d2.tif"],
    "extra_dirs": [], "source_weights": [], "paired_dirs": [], "paired_fraction": 0.25,
    "unlabeled_dirs": [], "unlabeled_batch_size": 2, "reblur_weight": 0.0,
    "reblur_defocus_dof": [0.5, 1.0, 1.5, 2.0], "val_dirs": ["val/bbbc006_w2"],
    "simulation": "bbbc006", "simulation_overrides": {}, "patch_size": 128,
    "val_patch_size": None, "batch_size": 4, "steps": 20000, "lr": 0.0003, "min_lr": 1e-06,
    "weight_decay": 0.0001, "warmup_steps": 500, "schedule": "cosine", "grad_clip": 1.0,
    "efcr_weight": 0.0005, "efcr_rel_weight": 0.1, "pixel_loss": "l1", "optics_dropout": 0.3,
    "amp": "auto", "compile": False, "device": "auto", "seed": 0, "val_every": 500,
    "ckpt_every": 500, "keep_every": None, "log_every": 10, "num_val_patches": 32,
    "num_workers": 0, "time_budget_s": None, "out_dir": "runs/mpt-tiny",
}

#: ``FinetuneConfig().to_dict()`` at 54d03a1 (fine-tuning states' ``settings``).
FLAT_FINETUNE_DEFAULTS = {
    "steps": 300, "time_budget_s": None, "batch_size": 2, "patch_size": 128, "lr": 5e-05,
    "min_lr": 1e-06, "warmup_steps": 10, "weight_decay": 0.0, "grad_clip": 1.0,
    "efcr_weight": 0.0005, "efcr_rel_weight": 0.1, "replay_fraction": 0.5,
    "paired_fraction": 0.25, "pixel_loss": "l1", "mode": "full", "pixel_size_um": None,
    "numerical_aperture": None, "wavelength_nm": None, "immersion_index": None,
    "reblur_defocus_dof": [2.0, 4.0, 6.0, 8.0], "reblur_kernel_size": 63, "reblur_noise": True,
    "simulation": None, "replay_optics": "auto", "max_defocus_um": None, "min_gain_db": 0.05,
    "max_level_loss_db": 0.1, "score_pairs": 16, "selection_score": "bundled-images",
    "match_camera": True, "trainable": "all", "val_crop_size": 256, "val_every": 25,
    "preview_every": 50, "state_every": 50, "amp": "auto", "device": "auto", "seed": 0,
}


@pytest.fixture(autouse=True)
def _no_deprecation_for_flat_keys():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        yield


def _round_trips_flat(cls, data):
    """``data`` loads; its dict keeps every key and value, flat; a second trip is the same."""
    cfg = cls.from_dict(data)
    out = cfg.to_dict()
    assert set(out) == set(cls.field_names())
    assert not set(out) & {"optim", "efcr", "optics"}
    assert {k: out[k] for k in data} == json.loads(json.dumps(dict(data)))
    assert cls.from_dict(json.loads(json.dumps(out))) == cfg
    return cfg


def test_train_config_holds_its_parts_and_writes_the_same_flat_dict():
    cfg = TrainConfig()
    assert isinstance(cfg.optim, OptimConfig) and isinstance(cfg.efcr, EfcrConfig)
    assert [f.name for f in dataclasses.fields(TrainConfig)].count("optim") == 1
    assert not {"lr", "amp", "efcr_weight", "reblur_defocus_dof"} & {
        f.name for f in dataclasses.fields(TrainConfig)}
    assert cfg.to_dict() == FLAT_TRAIN_DEFAULTS
    assert TrainConfig.from_dict(FLAT_TRAIN_DEFAULTS) == cfg


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_yaml_under_configs_reads_unchanged(path):
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    cfg = TrainConfig.from_file(path)
    out = cfg.to_dict()
    for key, value in data.items():
        if key != "simulation":  # a mixture is stored in its canonical list form
            assert out[key] == json.loads(json.dumps(value)), key
    assert TrainConfig.from_dict(json.loads(json.dumps(out))) == cfg


@pytest.mark.parametrize("path", WEIGHTS, ids=lambda p: p.name)
def test_training_config_of_each_bundled_header_reads_unchanged(path):
    recorded = read_header(path)["training"]["config"]
    cfg = _round_trips_flat(TrainConfig, recorded)
    assert cfg.lr == recorded["lr"] and cfg.optim.lr == recorded["lr"]
    assert cfg.efcr.reblur_defocus_dof == tuple(recorded["reblur_defocus_dof"])


def test_a_state_config_of_the_current_format_reads_and_resumes():
    from napari_mpt_deblur.train.loop import _check_resume_compatible

    # the shape of runs/*/state.pt's "config": the flat dict, here as a stage run changed it
    saved = {**FLAT_TRAIN_DEFAULTS, "lr": 2e-4, "amp": "bf16", "reblur_defocus_dof": [1, 2],
             "steps": 3000, "out_dir": "runs/stage"}
    cfg = _round_trips_flat(TrainConfig, saved)
    assert (cfg.lr, cfg.amp, cfg.efcr.reblur_defocus_dof) == (2e-4, "bf16", (1.0, 2.0))
    # a config written before optics_dropout existed (stage 17's) still reads
    older = {k: v for k, v in saved.items() if k != "optics_dropout"}
    assert TrainConfig.from_dict(older) == cfg
    # resuming: the run-control fields (amp, compile among them) may change, lr may not
    _check_resume_compatible(cfg, cfg.replace(amp="off", compile=True, steps=5000))
    with pytest.raises(ValueError, match=r"differs from the saved run in \['lr'\]"):
        _check_resume_compatible(cfg, cfg.replace(lr=1e-4))


def test_flat_reads_keywords_and_replace_reach_the_parts():
    cfg = TrainConfig(lr=1e-3, amp="off", efcr_weight=0.0, reblur_defocus_dof=[1, 3])
    assert (cfg.lr, cfg.amp, cfg.efcr_weight) == (1e-3, "off", 0.0)
    assert cfg.optim == OptimConfig(lr=1e-3, amp="off")
    assert cfg.efcr == EfcrConfig(efcr_weight=0.0, reblur_defocus_dof=(1.0, 3.0))
    changed = dataclasses.replace(cfg, lr=5e-4, steps=10)
    assert (changed.lr, changed.amp, changed.steps) == (5e-4, "off", 10)
    assert cfg.replace(min_lr=0.0).optim == dataclasses.replace(cfg.optim, min_lr=0.0)
    # a part given whole, and flat fields over it
    whole = TrainConfig(optim=OptimConfig(lr=2e-4, schedule="constant"), lr=7e-4)
    assert (whole.lr, whole.schedule) == (7e-4, "constant")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]
    with pytest.raises(AttributeError, match="no attribute 'lrr'"):
        cfg.lrr  # noqa: B018
    # the parts' checks, in the parts' words, whichever way the field is given
    with pytest.raises(ValueError, match="lr must be > 0"):
        TrainConfig(lr=0.0)
    with pytest.raises(ValueError, match="amp must be one of"):
        TrainConfig.from_dict({"amp": "fp8"})
    with pytest.raises(ValueError, match="reblur_defocus_dof must be a non-empty list"):
        TrainConfig(reblur_defocus_dof=())
    with pytest.raises(TypeError, match="optim must be a OptimConfig"):
        TrainConfig(optim=3)


def test_nested_mappings_read_like_flat_keys_and_conflicts_are_errors():
    flat = TrainConfig.from_dict({"lr": 1e-4, "efcr_weight": 0.0})
    nested = TrainConfig.from_dict({"optim": {"lr": 1e-4}, "efcr": {"efcr_weight": 0}})
    assert nested == flat and nested.to_dict() == flat.to_dict()
    assert TrainConfig(optim={"lr": 1e-4}, efcr_weight=0.0) == flat
    with pytest.raises(ValueError, match=r"\['lr'\] given both flat and under 'optim'"):
        TrainConfig.from_dict({"lr": 1e-4, "optim": {"lr": 2e-4}})
    with pytest.raises(ValueError, match=r"unknown OptimConfig keys \['lrr'\]"):
        TrainConfig.from_dict({"optim": {"lrr": 1e-4}})
    # an unknown key names the parts' fields among the valid ones
    with pytest.raises(ValueError, match=r"unknown TrainConfig keys \['lrr'\].*\blr\b.*efcr_wei"):
        TrainConfig.from_dict({"lrr": 1e-4})
    with pytest.raises(ValueError, match=r"TrainConfig\.lr: could not convert"):
        TrainConfig.from_dict({"lr": "fast"})


def test_finetune_config_has_its_own_default_parts():
    cfg = FinetuneConfig()
    assert cfg.optim == OptimConfig(lr=5e-5, warmup_steps=10, weight_decay=0.0)
    assert cfg.efcr == EfcrConfig(reblur_defocus_dof=(2.0, 4.0, 6.0, 8.0))
    assert cfg.optics == OpticsHints()
    assert not {"lr", "pixel_size_um", "reblur_defocus_dof"} & {
        f.name for f in dataclasses.fields(FinetuneConfig)}
    # the flat dict of before, plus the two optimiser fields it now declares at their defaults
    assert cfg.to_dict() == {**FLAT_FINETUNE_DEFAULTS, "schedule": "cosine", "compile": False}
    old = _round_trips_flat(FinetuneConfig, FLAT_FINETUNE_DEFAULTS)  # settings saved before
    assert old == cfg
    one = FinetuneConfig(lr=1e-4, pixel_size_um=0.1, numerical_aperture=1.2,
                         immersion_index=1.515)
    assert one.optim == dataclasses.replace(cfg.optim, lr=1e-4)  # the fine-tuning warm-up kept
    assert one.optics.has_psf and one.uses_user_optics and one.pixel_size_um == 0.1
    with pytest.raises(ValueError, match="must be below immersion_index"):
        FinetuneConfig(numerical_aperture=1.2, immersion_index=1.0)


def test_finetune_presets_cli_flags_and_form_changes_reach_the_parts():
    laptop = FINETUNE_PRESETS["cpu-laptop"]
    assert (laptop.lr, laptop.warmup_steps, laptop.mode, laptop.trainable) == (
        3e-4, 10, "replay", "late")
    # the keys that ``mpt-deblur finetune``'s flags and the Fine-tune form pass, flat
    changes = {"steps": 7, "time_budget_s": 60.0, "mode": "full", "pixel_size_um": 0.2,
               "numerical_aperture": 0.8, "wavelength_nm": 520.0, "immersion_index": 1.0,
               "max_defocus_um": 4.0, "replay_optics": "user",
               "selection_score": "own-images", "trainable": "norms", "batch_size": 3,
               "patch_size": 64, "lr": 2e-4, "efcr_weight": 1e-3, "replay_fraction": 0.3,
               "val_every": 5, "preview_every": 5, "device": "cpu", "seed": 3}
    for name in FINETUNE_PRESETS:
        cfg = get_finetune_preset(name, **changes)
        assert {k: cfg.to_dict()[k] for k in changes} == changes
        assert cfg.optim.lr == 2e-4 and cfg.efcr.efcr_weight == 1e-3
        assert cfg.optics == OpticsHints(pixel_size_um=0.2, numerical_aperture=0.8,
                                         wavelength_nm=520.0, immersion_index=1.0)
        assert cfg.warmup_steps == FINETUNE_PRESETS[name].warmup_steps
    with pytest.raises(ValueError, match="unknown FinetuneConfig keys"):
        get_finetune_preset("cpu-laptop", lrr=1.0)


def test_train_cli_flags_still_change_the_config(tmp_path, monkeypatch):
    from napari_mpt_deblur._commands import train as train_command
    from napari_mpt_deblur.cli import build_parser

    class Fitted(Exception):
        pass

    def fake_fit(cfg, **kwargs):
        raise Fitted(cfg)

    monkeypatch.setattr("napari_mpt_deblur.train.loop.fit", fake_fit)
    recipe = ROOT / "configs" / "recipes" / "smoke.yaml"
    args = build_parser().parse_args(
        ["train", "--config", str(recipe), "--steps", "3", "--out", str(tmp_path / "run"),
         "--device", "cpu", "--no-progress"])
    with pytest.raises(Fitted) as fitted:
        train_command.run(args)
    cfg = fitted.value.args[0]
    assert (cfg.steps, cfg.device, cfg.out_dir) == (3, "cpu", str(tmp_path / "run"))
    assert cfg.optim == TrainConfig.from_file(recipe).optim


def test_eval_config_holds_its_optics_and_camera_and_reads_results_unchanged():
    from napari_mpt_deblur._dataclass_io import flat_field_names
    from napari_mpt_deblur.evaluation import EvalConfig, eval_config
    from napari_mpt_deblur.simulate import CameraConfig

    cfg = EvalConfig()
    assert {f.name for f in dataclasses.fields(EvalConfig)} >= {"optics", "camera"}
    assert not {"numerical_aperture", "photons_per_unit", "bit_depth"} & {
        f.name for f in dataclasses.fields(EvalConfig)}
    assert cfg.optics == OpticsHints(pixel_size_um=0.645, numerical_aperture=0.5,
                                     immersion_index=1.0)
    # the camera is the protocol's: the gain follows from the full-scale fraction
    assert cfg.camera == CameraConfig.at_full_scale(
        photons_per_unit=1500.0, read_noise_e=4.0, offset_adu=110.0, bit_depth=12,
        full_scale_fraction=0.5)
    # only the fields the protocol sets are keys (no wavelength, gain or shot noise)
    keys = set(cfg.to_dict())
    assert keys == set(flat_field_names(EvalConfig))
    assert not keys & {"optics", "camera", "wavelength_nm", "gain_adu_per_e", "shot_noise"}
    oil = eval_config("oil-1.4", data_root="data", photons_per_unit=300.0)
    assert (oil.numerical_aperture, oil.optics.numerical_aperture) == (1.4, 1.4)
    assert oil.camera.photons_per_unit == 300.0 == oil.photons_per_unit
    changed = dataclasses.replace(oil, full_scale_fraction=0.25, bit_depth=14)
    assert changed.camera == CameraConfig.at_full_scale(
        photons_per_unit=300.0, read_noise_e=4.0, offset_adu=110.0, bit_depth=14,
        full_scale_fraction=0.25)
    assert EvalConfig.from_dict(json.loads(json.dumps(changed.to_dict()))) == changed
    assert EvalConfig.from_dict({"optics": {"numerical_aperture": 0.8}}).numerical_aperture == 0.8
    with pytest.raises(ValueError, match=r"\['wavelength_nm'\] are not settable here"):
        EvalConfig.from_dict({"optics": {"wavelength_nm": 500.0}})
    with pytest.raises(ValueError, match="unknown EvalConfig keys"):
        EvalConfig.from_dict({"gain_adu_per_e": 2.0})
    with pytest.raises(ValueError, match="wavelength_nm must be None"):
        EvalConfig(optics=OpticsHints(pixel_size_um=0.1, numerical_aperture=0.5,
                                      immersion_index=1.0, wavelength_nm=500.0))
    with pytest.raises(TypeError, match="numerical_aperture must be a number"):
        EvalConfig(optics=OpticsHints(pixel_size_um=0.1, immersion_index=1.0))
    with pytest.raises(ValueError, match="must draw shot noise"):
        EvalConfig(camera=CameraConfig(shot_noise=False))
