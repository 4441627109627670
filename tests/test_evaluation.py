"""Evaluation harness on tiny synthetic data (never the eval set): baselines, table, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_mpt_deblur import evaluation
from napari_mpt_deblur.evaluation import (
    BLURRED,
    IMAGE_SETS,
    REAL_PAIR_FOLDER,
    RICHARDSON_LUCY,
    EvalConfig,
    EvalResult,
    RLTuning,
    baselines,
    evaluate,
    fit_affine,
    richardson_lucy_deconvolve,
    save_example_figure,
    simulation_params,
    to_markdown,
    tune_richardson_lucy,
)
from napari_mpt_deblur.metrics import psnr, ssim


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One thread: the machine is shared, and tiny models gain nothing from more."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cells_image(shape: tuple[int, int], seed: int, offset: float = 110.0) -> np.ndarray:
    """Blob 'cells' on a camera offset, uint16 like BBBC006."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    image = np.zeros(shape)
    for _ in range(14):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        radius, amplitude = rng.uniform(1.5, 4.0), rng.uniform(600, 2500)
        image += amplitude * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
    image += rng.normal(0, 2, shape)
    return np.clip(image + offset, 0, 4095).astype(np.uint16)


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        import imageio.v3 as iio

        iio.imwrite(path, image)
    else:
        import tifffile

        tifffile.imwrite(path, image)


def _data_root(root: Path, *, shape: tuple[int, int] = (64, 80), real_pair: bool = True) -> Path:
    _write(root / "eval" / IMAGE_SETS["w1"].folder / "a01_s1_w1.png", _cells_image(shape, 1))
    _write(root / "eval" / IMAGE_SETS["w1"].folder / "a02_s1_w1.png", _cells_image(shape, 2))
    _write(root / "eval" / IMAGE_SETS["w2"].folder / "n17_s2_w2.tif", _cells_image(shape, 3))
    _write(root / "val" / "bbbc006_w2" / "l19_s2_w2.tif", _cells_image(shape, 4))
    if real_pair:
        focused = _cells_image(shape, 5)
        # A "defocused" recording that differs only by intensity scale and offset: after the
        # affine fit it must match the in-focus image almost exactly.
        scaled = np.round(focused.astype(np.float64) * 0.25 + 100).astype(np.uint16)
        _write(root / "eval" / REAL_PAIR_FOLDER / "a01_s1_w1_z16_infocus.png", focused)
        _write(root / "eval" / REAL_PAIR_FOLDER / "a01_s1_w1_z00_minus32um.tif", scaled)
    return root


def _fixed_tuning(cfg: EvalConfig, n: int = 4) -> RLTuning:
    cells = [(IMAGE_SETS[s].wavelength_nm, dz) for s in cfg.sets for dz in cfg.levels_um]
    cells.append((cfg.real_pair_wavelength_nm, cfg.real_pair_defocus_um))
    return RLTuning({c: n for c in cells})


def test_richardson_lucy_improves_on_blurred_input_with_true_psf():
    from napari_mpt_deblur.simulate import make_pair

    cfg = EvalConfig()
    sharp = _cells_image((96, 96), 7)
    pair = make_pair(sharp, simulation_params(cfg, 460.0, 4.0), 0)
    restored = richardson_lucy_deconvolve(pair.blurred, pair.psf, 10)
    assert restored.dtype == np.float32 and restored.shape == sharp.shape
    assert psnr(restored, pair.sharp) > psnr(pair.blurred, pair.sharp) + 1.0
    assert ssim(restored, pair.sharp) > ssim(pair.blurred, pair.sharp)


def test_richardson_lucy_trajectory_equals_scikit_image_runs():
    rng = np.random.default_rng(0)
    image = rng.random((30, 41)).astype(np.float32) - 0.2  # negative values: shifted by min
    psf = np.outer(np.hanning(7), np.hanning(7)).astype(np.float32)
    psf /= psf.sum()
    for n, estimate in baselines._rl_iterates(image, psf, [1, 4, 9]):
        np.testing.assert_allclose(estimate, richardson_lucy_deconvolve(image, psf, n),
                                   rtol=1e-5, atol=1e-6)  # fmt: skip


def test_richardson_lucy_rejects_bad_iterations():
    with pytest.raises(ValueError, match="num_iter"):
        richardson_lucy_deconvolve(np.ones((8, 8)), np.ones((3, 3)) / 9, 0)


def test_tune_richardson_lucy_uses_val_only_and_caches(tmp_path, monkeypatch):
    root = _data_root(tmp_path / "data", real_pair=False)
    cfg = EvalConfig(rl_max_iter=12)
    cache = tmp_path / "results" / "rl_iterations.json"
    tuning = tune_richardson_lucy(root / "val", cfg, cells=[(460.0, 4.0)], cache_path=cache)
    n = tuning.iterations_for(460.0, 4.0)
    curve = tuning.curves[(460.0, 4.0)]
    assert n == max(curve, key=curve.get) and 1 <= n <= 12
    assert tuning.settings["val_files"][0]["name"] == "bbbc006_w2/l19_s2_w2.tif"
    stored = json.loads(cache.read_text())
    assert stored["entries"][0]["iterations"] == {"460": {"4": n}}

    def no_tuning(*args, **kwargs):
        raise AssertionError("tuned again instead of reading the cache")

    monkeypatch.setattr(baselines, "_rl_iterates", no_tuning)
    again = tune_richardson_lucy(root / "val", cfg, cells=[(460.0, 4.0)], cache_path=cache)
    assert again.iterations == tuning.iterations
    with pytest.raises(AssertionError, match="tuned again"):  # other settings: not reused
        tune_richardson_lucy(root / "val", cfg.replace(seed=1), cells=[(460.0, 4.0)],
                             cache_path=cache)  # fmt: skip
    with pytest.raises(ValueError, match="eval"):
        tune_richardson_lucy(root / "eval" / IMAGE_SETS["w1"].folder, cfg)
    with pytest.raises(ValueError, match="no tuned"):
        tuning.iterations_for(620.0, 4.0)


def test_fit_affine_recovers_gain_and_offset():
    rng = np.random.default_rng(3)
    reference = rng.random((20, 30))
    fitted, gain, offset = fit_affine((reference - 3.0) / 5.0, reference)
    assert gain == pytest.approx(5.0) and offset == pytest.approx(3.0)
    np.testing.assert_allclose(fitted, reference, atol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        fit_affine(reference[:5], reference)


def test_evaluate_table_real_pair_and_figure(tmp_path, tiny_model):
    root = _data_root(tmp_path / "data")
    cfg = EvalConfig(eval_dir=str(root / "eval"), val_dir=str(root / "val"),
                     levels_um=(2.0, 6.0), device="cpu", example_crop_px=32)  # fmt: skip
    calls: list[tuple[int, int]] = []
    result = evaluate({"tiny": tiny_model}, cfg, rl_tuning=_fixed_tuning(cfg),
                      progress=lambda d, t: calls.append((d, t)))  # fmt: skip

    methods = [BLURRED, RICHARDSON_LUCY, "tiny"]
    assert result.methods == methods
    assert len(result.scores) == 3 * 2 * 3  # images x levels x methods
    assert calls[-1] == (7, 7)  # 3 images x 2 levels + the real pair
    summary = result.summary()
    assert set(summary) == {"2", "6"}
    for row in summary.values():
        assert set(row) == set(methods)
        assert all(cell["n"] == 3 for cell in row.values())
    assert set(result.summary(by_set=True)) == {"w1/2", "w1/6", "w2/2", "w2/6"}
    blurred = {k: v[BLURRED]["psnr_db"][0] for k, v in summary.items()}
    assert blurred["6"] < blurred["2"]  # more defocus, worse input

    # Real pair: the fit undoes the 0.25x + 100 intensity change of the "defocused" image.
    real = {s.method: s for s in result.real_pair}
    assert list(real) == [BLURRED, evaluation.RICHARDSON_LUCY_REAL, "tiny"]
    assert real[BLURRED].psnr_db > 40 and real[BLURRED].ssim > 0.99
    assert real[BLURRED].affine[0] == pytest.approx(4.0, rel=0.01)
    assert real[BLURRED].affine[1] == pytest.approx(-400.0, rel=0.02)

    markdown = to_markdown(result)
    table_rows = [line for line in markdown.splitlines() if line.startswith("| 2 µm")]
    assert [row.split(" | ")[1] for row in table_rows] == ["PSNR (dB)", "SSIM"]
    assert all("**" in row for row in table_rows)  # best of each row is bold
    assert "| defocus | metric | blurred input | Richardson–Lucy (true PSF) | tiny |" in markdown
    assert "affine fit" in markdown and "`val/`" in markdown

    # results.json round trip gives the same table.
    data = json.loads(json.dumps(result.to_dict()))
    assert to_markdown(EvalResult.from_dict(data)) == markdown

    figure = save_example_figure(result, tmp_path / "examples.png")
    import imageio.v3 as iio

    assert iio.imread(figure).ndim == 3
    assert len(result.examples) == 2 * 2 + 1  # first image of each set x levels + real pair
    with pytest.raises(FileExistsError):
        save_example_figure(result, figure)


def test_evaluate_subsets_reproduce_the_full_run(tmp_path):
    root = _data_root(tmp_path / "data", real_pair=False)
    cfg = EvalConfig(eval_dir=str(root / "eval"), val_dir=str(root / "val"),
                     levels_um=(2.0, 6.0), real_pair=False)  # fmt: skip
    full = evaluate({}, cfg, rl_tuning=_fixed_tuning(cfg))
    part = evaluate({}, cfg.replace(levels_um=(6.0,), sets=("w1",), max_images=1),
                    rl_tuning=_fixed_tuning(cfg))  # fmt: skip
    assert part.images == {"w1": ["a01_s1_w1.png"]}
    assert part.methods == [BLURRED, RICHARDSON_LUCY] and not part.real_pair
    def key(s):
        return s.set, s.image, s.defocus_um, s.method, s.psnr_db, s.ssim

    expected = [key(s) for s in full.scores
                if (s.set, s.image, s.defocus_um) == ("w1", "a01_s1_w1.png", 6.0)]  # fmt: skip
    assert [key(s) for s in part.scores] == expected and len(expected) == 2


def test_eval_config_validates_and_round_trips():
    cfg = EvalConfig(levels_um=(4, 8), sets=("w2",), crop_px=256)
    assert EvalConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="sets"):
        EvalConfig(sets=("w3",))
    with pytest.raises(ValueError, match="levels_um"):
        EvalConfig(levels_um=(4.0, -8.0))
    with pytest.raises(ValueError, match="unknown EvalConfig keys"):
        EvalConfig.from_dict({"defocus": 3})


def test_regimes_in_focus_level_and_oil_objective(tmp_path):
    default = evaluation.eval_config()
    assert default == EvalConfig() and default.levels_um[:2] == (0.0, 2.0)
    oil = evaluation.eval_config("oil-1.4", levels_um=None, max_images=1)
    assert (oil.numerical_aperture, oil.immersion_index, oil.pixel_size_um) == (1.4, 1.515, 0.1)
    assert oil.levels_um == (0.0, 0.5, 1.0, 2.0) and not oil.real_pair and oil.max_images == 1
    with pytest.raises(ValueError, match=r"unknown evaluation regime 'oil'.*oil-1\.4"):
        evaluation.eval_config("oil")

    # 0 µm is a real level: the input is the in-focus image with camera noise only, so it is
    # far closer to the truth than any defocused level, and the same at both NAs' scales.
    root = _data_root(tmp_path / "data", real_pair=False)
    cfg = evaluation.eval_config("oil-1.4", eval_dir=str(root / "eval"),
                                 val_dir=str(root / "val"), levels_um=(0.0, 2.0))  # fmt: skip
    result = evaluate({}, cfg, rl_tuning=_fixed_tuning(cfg))
    blurred = {k: v[BLURRED]["psnr_db"][0] for k, v in result.summary().items()}
    assert set(blurred) == {"0", "2"} and blurred["0"] > blurred["2"] + 3


def test_cli_writes_results_and_refuses_overwrite(tmp_path, tiny_checkpoint):
    from napari_mpt_deblur import cli
    from napari_mpt_deblur._commands import evaluate as command

    root = _data_root(tmp_path / "data", real_pair=False)
    out = tmp_path / "out"
    argv = ["evaluate", "--data", str(root), "--models", str(tiny_checkpoint), "--sets", "w1",
            "--levels", "4", "--no-real-pair", "--out", str(out), "--no-progress",
            "--rl-iterations", str(tmp_path / "rl.json"), "--device", "cpu"]  # fmt: skip
    args = cli.build_parser().parse_args(argv)
    assert command.run(args) == 0
    for name in command.OUTPUT_FILES:
        assert (out / name).stat().st_size > 0
    data = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert data["methods"] == [BLURRED, RICHARDSON_LUCY, "tiny"]
    assert data["models"]["tiny"]["sha256"]
    assert len(data["scores"]) == 2 * 1 * 3
    assert "460" in json.loads((tmp_path / "rl.json").read_text())["entries"][0]["iterations"]
    assert "| 4 µm | PSNR (dB) |" in (out / "results.md").read_text(encoding="utf-8")
    assert cli.main(argv) == 1  # outputs exist and --overwrite was not given


def test_ensembled_columns_run_with_test_time_views(tmp_path, tiny_checkpoint, spy_deblur):
    from napari_mpt_deblur.evaluation import model_columns

    entries = model_columns([str(tiny_checkpoint), f"{tiny_checkpoint}@x8"])
    assert list(entries) == ["tiny", "tiny ×8"]
    assert entries["tiny ×8"] == evaluation.Ensembled(str(tiny_checkpoint), 8)
    with pytest.raises(ValueError, match="must be one of 1, 2, 4, 8"):
        model_columns([f"{tiny_checkpoint}@x3"])

    calls = spy_deblur()
    root = _data_root(tmp_path / "data", real_pair=False)
    cfg = EvalConfig(eval_dir=str(root / "eval"), val_dir=str(root / "val"), sets=("w1",),
                     levels_um=(4.0,), real_pair=False, max_images=1, device="cpu")  # fmt: skip
    result = evaluate(entries, cfg, rl_tuning=_fixed_tuning(cfg))
    assert result.methods == [BLURRED, RICHARDSON_LUCY, "tiny", "tiny ×8"]
    assert [c.get("ensemble", 1) for c in calls] == [1, 8]
    assert result.models["tiny ×8"]["ensemble"] == 8 and "ensemble" not in result.models["tiny"]
    by_method = {s.method: s.psnr_db for s in result.scores}
    assert by_method["tiny"] != by_method["tiny ×8"]
    assert "mean of 8 rotated/mirrored views" in to_markdown(result)


def test_conditioned_columns_get_each_sets_true_optics_unless_blind(tmp_path, spy_deblur):
    """A conditioned model is scored as a user who knows the microscope would run it (the
    regime's objective, the set's wavelength); ``@blind`` withholds them."""
    from napari_mpt_deblur.evaluation import model_columns, split_blind
    from napari_mpt_deblur.evaluation.protocol import IMAGE_SETS
    from napari_mpt_deblur.models._registry import create_model
    from napari_mpt_deblur.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    net = create_model("mpt-test", optics_conditioning=True, routing="aligned").eval()
    with torch.no_grad():
        net.optics_film.mlp[-1].weight.normal_(std=0.1)
    path = save_checkpoint(tmp_path / "cond.safetensors", net, metadata={"name": "cond"})
    assert split_blind("m@x8@blind") == ("m@x8", True) and split_blind("m@x8") == ("m@x8", False)
    entries = model_columns([str(path), f"{path}@blind", f"{path}@x2@blind"])
    assert list(entries) == ["cond", "cond (blind)", "cond ×2 (blind)"]
    assert entries["cond (blind)"] == evaluation.Ensembled(str(path), 1, blind=True)

    calls = spy_deblur()
    root = _data_root(tmp_path / "data", real_pair=False)
    cfg = evaluation.eval_config("oil-1.4", eval_dir=str(root / "eval"), val_dir=str(root / "val"),
                                 sets=("w1",), levels_um=(1.0,), max_images=1, device="cpu")
    result = evaluate(entries, cfg, rl_tuning=_fixed_tuning(cfg))
    told, blind, blind_views = (c.get("optics") for c in calls)
    assert blind is None and blind_views is None
    assert (told.pixel_size_um, told.numerical_aperture, told.immersion_index) == (0.1, 1.4, 1.515)
    assert told.wavelength_nm == IMAGE_SETS["w1"].wavelength_nm
    by_method = {s.method: s.psnr_db for s in result.scores}
    assert by_method["cond"] != by_method["cond (blind)"]  # the optics changed the output
    assert result.models["cond"]["optics"] == "true optics of each image set"
    assert result.models["cond (blind)"]["optics"] == "withheld"


def test_model_record_reads_the_model_contract():
    """results.json describes a column through ModelInfo, whatever form the network's info has:
    a ModelInfo, an old plain dict, or none (a user's own module: its class name)."""
    import torch

    from napari_mpt_deblur.evaluation.scoring import _model_info
    from napari_mpt_deblur.models.info import ModelInfo, attach_info

    class OwnNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    typed, old, bare = OwnNet(), OwnNet(), OwnNet()
    attach_info(typed, ModelInfo(name="net", arch="own", sha256="ab" * 32,
                                 training={"steps": 3}, description="not recorded"))
    old.info = {"name": "net", "arch": "own", "sha256": "ab" * 32, "training": {"steps": 3}}
    assert _model_info(typed) == _model_info(old) == {
        "name": "net", "arch": "own", "routing": None, "sha256": "ab" * 32,
        "training": {"steps": 3}, "parameters": 10}
    assert _model_info(bare, views=8) == {"name": "OwnNet", "arch": "ownnet", "routing": None,
                                           "ensemble": 8, "parameters": 10}


def test_data_folders_are_parameters_with_clear_errors(tmp_path):
    """The package has no default data location; a missing or unset one is named clearly."""
    assert EvalConfig().eval_dir is None and EvalConfig().val_dir is None
    root = _data_root(tmp_path / "data", real_pair=False)
    cfg = evaluation.eval_config(data_root=root, sets=("w1",), levels_um=(4.0,),
                                 real_pair=False, max_images=1)  # fmt: skip
    assert (cfg.eval_dir, cfg.val_dir) == (str(root / "eval"), str(root / "val"))
    explicit = evaluation.eval_config(data_root=root, val_dir=str(tmp_path / "v"))
    assert explicit.val_dir == str(tmp_path / "v") and explicit.eval_dir == str(root / "eval")
    tuning = _fixed_tuning(cfg)
    assert evaluate({}, cfg, rl_tuning=tuning).images == {"w1": ["a01_s1_w1.png"]}

    with pytest.raises(ValueError, match=r"EvalConfig\.eval_dir is not set.*data_root"):
        evaluate({}, cfg.replace(eval_dir=None), rl_tuning=tuning)
    with pytest.raises(ValueError, match=r"EvalConfig\.val_dir is not set"):
        evaluate({}, cfg.replace(val_dir=None))  # tuning needs the validation images
    missing = evaluation.eval_config(data_root=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"eval_dir .*nowhere.* does not exist.*eval/"):
        evaluate({}, missing, rl_tuning=tuning)
    with pytest.raises(FileNotFoundError, match=r"val_dir .*nowhere.* does not exist"):
        tune_richardson_lucy(tmp_path / "nowhere" / "val", cfg)


def test_cli_data_root_and_rl_cache_defaults(tmp_path, monkeypatch):
    from napari_mpt_deblur import cli
    from napari_mpt_deblur._commands import evaluate as command

    # The RL cache follows the working folder (a source checkout's benchmarks/results), never
    # the install location of the package.
    checkout = tmp_path / "repo"
    (checkout / "benchmarks").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text("[project]\n")
    out = tmp_path / "out"
    assert command.default_rl_cache(out, checkout) == (
        checkout / "benchmarks" / "results" / "rl_iterations.json"
    )
    assert command.default_rl_cache(out, tmp_path) == out / "rl_iterations.json"
    monkeypatch.chdir(checkout)
    assert command.default_rl_cache(out) == Path("benchmarks/results/rl_iterations.json").resolve()

    monkeypatch.delenv("MPT_DEBLUR_DATA", raising=False)
    assert command.default_data_root() == Path("../shared/data")
    monkeypatch.setenv("MPT_DEBLUR_DATA", str(tmp_path / "nowhere"))
    assert command.default_data_root() == tmp_path / "nowhere"
    args = cli.build_parser().parse_args(["evaluate", "--models", "none", "--out", str(out)])
    with pytest.raises(FileNotFoundError, match=r"data root .*nowhere.* --data"):
        command.run(args)
    assert not out.exists()
