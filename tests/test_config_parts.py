"""The shared config parts (optics, camera) and the old names that still load."""

import json
import warnings

import pytest

from napari_mpt_deblur.cli import build_parser
from napari_mpt_deblur.evaluation import EvalConfig, eval_config, simulation_params
from napari_mpt_deblur.simulate import CameraConfig, OpticsHints, sample_parameters
from napari_mpt_deblur.train import FinetuneConfig, get_finetune_preset
from napari_mpt_deblur.train import OpticsHints as TrainOpticsHints


def test_one_optics_part_with_one_name_for_the_immersion_index():
    assert TrainOpticsHints is OpticsHints
    hints = OpticsHints(pixel_size_um=0.1, numerical_aperture=1.2, immersion_index=1.515)
    assert hints.has_psf and OpticsHints.NAMES[-1] == "immersion_index"
    with pytest.raises(ValueError, match=r"numerical_aperture .* must be below immersion_index"):
        OpticsHints(numerical_aperture=1.2, immersion_index=1.0)
    with pytest.raises(ValueError, match="wavelength_nm must be a positive number"):
        OpticsHints(wavelength_nm=-5.0)


def test_old_refractive_index_name_loads_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="'refractive_index' is deprecated; use "
                                                "'immersion_index'"):
        old = OpticsHints(numerical_aperture=1.2, refractive_index=1.515)
    assert old == OpticsHints(numerical_aperture=1.2, immersion_index=1.515)
    with pytest.warns(DeprecationWarning, match=r"OpticsHints\.refractive_index is deprecated"):
        assert old.refractive_index == 1.515


def test_finetune_config_reads_settings_written_before_the_rename():
    new = FinetuneConfig(pixel_size_um=0.1, numerical_aperture=1.2, immersion_index=1.515)
    saved = new.to_dict()
    assert "immersion_index" in saved and "refractive_index" not in saved
    assert FinetuneConfig.from_dict(json.loads(json.dumps(saved))) == new
    # a resumable state or checkpoint header written before: the old key, not the new one
    old = {("refractive_index" if k == "immersion_index" else k): v for k, v in saved.items()}
    with pytest.warns(DeprecationWarning, match="'refractive_index' is deprecated"):
        assert FinetuneConfig.from_dict(old) == new
    with pytest.warns(DeprecationWarning):
        assert FinetuneConfig(refractive_index=1.515).immersion_index == 1.515
    with pytest.warns(DeprecationWarning):  # the overrides of docs/finetuning.md
        preset = get_finetune_preset("cpu-laptop", numerical_aperture=1.2,
                                     refractive_index=1.515)
    assert preset.immersion_index == 1.515 and preset.optics.immersion_index == 1.515
    # replace() merges the changes over the current values: the change wins under either name
    with pytest.warns(DeprecationWarning):
        assert new.replace(refractive_index=1.33).immersion_index == 1.33
    with pytest.raises(ValueError, match="unknown FinetuneConfig keys"):
        FinetuneConfig.from_dict({"refractive_indx": 1.5})


def test_finetune_cli_old_flag_still_works_and_says_so():
    parser = build_parser()
    base = ["finetune", "--model", "mpt-tiny", "-o", "out.safetensors", "in.tif"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new flag is silent
        args = parser.parse_args([*base, "--immersion-index", "1.515"])
    assert args.immersion_index == 1.515
    with pytest.warns(DeprecationWarning, match="--refractive-index is deprecated; use "
                                                "--immersion-index"):
        args = parser.parse_args([*base, "--refractive-index", "1.33"])
    assert args.immersion_index == 1.33


def test_eval_config_is_built_from_the_shared_parts():
    cfg = eval_config("oil-1.4")
    assert cfg.optics == OpticsHints(pixel_size_um=0.1, numerical_aperture=1.4,
                                     immersion_index=1.515)
    camera = cfg.camera
    assert isinstance(camera, CameraConfig) and camera.bit_depth == cfg.bit_depth
    # full scale (signal 1.0) fills full_scale_fraction of the ADU range above the offset
    full_scale_adu = camera.offset_adu + camera.adu_per_unit
    assert full_scale_adu == pytest.approx(
        cfg.offset_adu + cfg.full_scale_fraction * (camera.max_adu - cfg.offset_adu))
    params = simulation_params(cfg, 520.0, 1.0)
    assert params["gain_adu_per_e"] == camera.gain_adu_per_e == cfg.gain_adu_per_e
    # the parts' checks are EvalConfig's
    with pytest.raises(ValueError, match="must be below immersion_index"):
        EvalConfig(numerical_aperture=1.2)
    with pytest.raises(ValueError, match="full_scale_fraction must be in"):
        EvalConfig(full_scale_fraction=1.5)
    with pytest.raises(ValueError, match="saturation level"):
        EvalConfig(bit_depth=8, offset_adu=300.0)


def test_eval_config_round_trip_and_results_written_so_far():
    cfg = eval_config("oil-1.4", data_root="data", sets=("w1",), crop_px=128)
    assert EvalConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    # the flat keys of a results.json "config" written before the parts (same names, same
    # values): the parts did not change the file format
    old = {"eval_dir": None, "val_dir": None, "sets": ["w1", "w2"],
           "levels_um": [0.0, 2.0, 4.0, 8.0, 16.0, 24.0], "numerical_aperture": 0.5,
           "immersion_index": 1.0, "pixel_size_um": 0.645, "photons_per_unit": 1500.0,
           "read_noise_e": 4.0, "offset_adu": 110.0, "bit_depth": 12,
           "full_scale_fraction": 0.5, "source_percentiles": [0.5, 99.9], "seed": 0,
           "crop_px": None, "max_images": None, "real_pair": True,
           "real_pair_defocus_um": 32.0, "real_pair_wavelength_nm": 460.0, "rl_max_iter": 100,
           "rl_criterion": "psnr", "example_crop_px": 160, "device": "auto"}
    assert EvalConfig.from_dict(old) == EvalConfig() and EvalConfig().to_dict() == old
    # the gain of the default camera, as the protocol computed it before the camera part
    assert EvalConfig().gain_adu_per_e == 0.5 * (4095 - 110.0) / 1500.0


def test_simulator_draws_its_camera_through_the_same_part():
    params = sample_parameters("bbbc006", 3)
    camera = CameraConfig.at_full_scale(
        photons_per_unit=params["photons_per_unit"], read_noise_e=params["read_noise_e"],
        offset_adu=params["offset_adu"], bit_depth=params["bit_depth"],
        full_scale_fraction=params["full_scale_fraction"])
    # the recorded values are rounded, the gain is computed from the unrounded draw
    assert params["gain_adu_per_e"] == pytest.approx(camera.gain_adu_per_e, rel=1e-3)
    with pytest.raises(ValueError, match="full_scale_fraction must be in"):
        CameraConfig.at_full_scale(photons_per_unit=1000.0, read_noise_e=2.0, offset_adu=100.0,
                                   bit_depth=12, full_scale_fraction=0.0)


def test_functions_take_the_one_name_and_still_the_old_keyword():
    from napari_mpt_deblur.simulate import get_simulation_preset
    from napari_mpt_deblur.train.optics_domain import depth_of_field_um, simulation_for_optics
    from napari_mpt_deblur.train.reblur import build_reblur_bank

    base = get_simulation_preset("bbbc006")
    oil = dict(pixel_size_um=0.1, numerical_aperture=1.2, wavelength_nm=550.0)
    new = simulation_for_optics(base, **oil, immersion_index=1.515)
    assert new.immersion_index == 1.515
    with pytest.warns(DeprecationWarning, match="simulation_for_optics: 'refractive_index' is "
                                                "deprecated; use 'immersion_index'"):
        assert simulation_for_optics(base, **oil, refractive_index=1.515) == new
    with pytest.warns(DeprecationWarning, match="depth_of_field_um"):
        assert depth_of_field_um(550.0, 1.2, refractive_index=1.515) == depth_of_field_um(
            550.0, 1.2, 1.515)
    with pytest.warns(DeprecationWarning, match="build_reblur_bank"):
        old_bank = build_reblur_bank(**oil, refractive_index=1.515, defocus_dof=(2.0,))
    bank = build_reblur_bank(**oil, immersion_index=1.515, defocus_dof=(2.0,))
    assert old_bank.defocus_um == bank.defocus_um and bank.defocus_um[0] > 0
