"""Tests of TrainConfig and fit(): learning, checkpoints, resume, cancel and time budget."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
from _train_helpers import TinyNet

from napari_mpt_deblur.train.config import TrainConfig
from napari_mpt_deblur.train.loop import History, fit
from napari_mpt_deblur.train.updates import UpdateKind


def _config(root, out, **changes) -> TrainConfig:
    base = dict(
        model="mpt-test", data_root=str(root), train_dirs=["train"], val_dirs=["val"],
        out_dir=str(out), patch_size=32, batch_size=4, steps=6, lr=2e-3, warmup_steps=0,
        val_every=3, ckpt_every=3, log_every=1, num_val_patches=4, efcr_weight=5e-4,
        device="cpu",
    )
    base.update(changes)
    return TrainConfig(**base)


def _tiny(seed=0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet()


# -------------------------------------------------------------------------------- config


def test_config_round_trips_through_yaml_and_json(tmp_path):
    cfg = TrainConfig(model="mpt-test", steps=7, train_dirs=["a", "b"], efcr_weight=0.0,
                      model_overrides={"dim": 8}, simulation_overrides={"defocus_um_range": [2, 8]})
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    import yaml

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    assert TrainConfig.from_file(tmp_path / "c.json") == cfg
    assert TrainConfig.from_file(tmp_path / "c.yaml") == cfg
    assert cfg.train_dirs == ("a", "b")


def test_config_unknown_keys_and_bad_values(tmp_path):
    (tmp_path / "bad.yaml").write_text("steps: 5\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown TrainConfig keys \['learning_rate'\].*lr"):
        TrainConfig.from_file(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="pixel_loss must be one of"):
        TrainConfig(pixel_loss="l3")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        TrainConfig(batch_size=0)
    with pytest.raises(FileNotFoundError):
        TrainConfig.from_file(tmp_path / "missing.yaml")


def test_source_weights_are_validated_against_the_entries():
    cfg = TrainConfig(train_dirs=["a", "b"], extra_dirs=["c"], source_weights=[1, 0, 2.5])
    assert cfg.source_weights == (1, 0, 2.5)
    with pytest.raises(ValueError, match="one weight per train_dirs"):
        TrainConfig(train_dirs=["a", "b"], source_weights=[1.0])
    with pytest.raises(ValueError, match="positive sum"):
        TrainConfig(train_dirs=["a", "b"], source_weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="positive sum"):
        TrainConfig(train_dirs=["a"], source_weights=[0.0])


def test_source_weights_share_an_entry_among_its_images(tiny_data_root, tmp_path):
    from napari_mpt_deblur.train.loop import _prepare_data

    # img0 is named twice: read once, for the first entry; the folder's weight is split
    # between img1 and img2 (same area).
    cfg = _config(tiny_data_root, tmp_path / "run", train_dirs=["train/img0.tif", "train"],
                  source_weights=[3.0, 1.0])
    data = _prepare_data(cfg, 1)
    probs = data.description["source_probabilities"]
    assert probs == pytest.approx({"img0.tif": 0.75, "img1.tif": 0.125, "img2.tif": 0.125})
    assert data.builder.simulator.probabilities.sum() == pytest.approx(1.0)
    unweighted = _prepare_data(_config(tiny_data_root, tmp_path / "run2"), 1)
    assert "source_probabilities" not in unweighted.description


def test_config_paths_resolve_under_data_root(tmp_path):
    cfg = TrainConfig(data_root=str(tmp_path))
    assert cfg.resolve_path("train/x") == tmp_path / "train" / "x"
    assert cfg.resolve_path("/abs/x").as_posix() == "/abs/x"


# -------------------------------------------------------------------------------- fit


def test_fit_learns_logs_and_keeps_best(tiny_data_root, tmp_path):
    updates = []
    cfg = _config(tiny_data_root, tmp_path / "run", steps=30, val_every=10, ckpt_every=10,
                  lr=3e-3)
    history = fit(cfg, model=_tiny(), callbacks=updates.append)
    assert history.stopped == "completed" and history.step == 30
    losses = history.losses
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert len(history.validation) == 3
    assert history.best_psnr == max(v["psnr"] for v in history.validation)
    kinds = [u.kind for u in updates]
    assert kinds.count(UpdateKind.LOSS) == 30 and kinds[-1] is UpdateKind.DONE
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    events = {r["event"] for r in log}
    assert {"baseline", "train", "validation", "best", "state", "stop"} <= events
    for name in ("best.safetensors", "last.safetensors", "state.pt", "config.json"):
        assert (tmp_path / "run" / name).is_file()
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    assert state["step"] == 30 and state["kind"] == "fit"
    assert History.from_dict(json.loads(state["history"])).best_psnr == history.best_psnr


def test_keep_every_keeps_loadable_snapshots_that_resume_where_they_were_taken(
    tiny_data_root, tmp_path
):
    run = tmp_path / "run"
    cfg = _config(tiny_data_root, run, steps=6, val_every=3, ckpt_every=1, keep_every=2)
    fit(cfg, model=_tiny())
    kept = sorted(p.name for p in run.glob("state-*.pt"))
    assert kept == ["state-00002.pt", "state-00004.pt", "state-00006.pt"]
    final = torch.load(run / "state.pt", weights_only=True)
    for name, step in zip(kept, (2, 4, 6)):
        snap = torch.load(run / name, weights_only=True)
        assert snap["step"] == step and snap["kind"] == "fit"
    # The last snapshot is the final state, tensor for tensor.
    snap = torch.load(run / kept[-1], weights_only=True)
    assert all(torch.equal(snap["model"][k], v) for k, v in final["model"].items())
    # An early snapshot is a state a run can resume from: copied back, it continues to step 6.
    again = tmp_path / "again"
    again.mkdir()
    (again / "state.pt").write_bytes((run / kept[0]).read_bytes())
    history = fit(cfg.replace(out_dir=str(again), keep_every=None), model=_tiny(), resume=True)
    assert history.step == 6 and not list(again.glob("state-*.pt"))


@pytest.mark.parametrize("keep_every", [0, 3, True, 2.0])
def test_keep_every_must_be_a_multiple_of_ckpt_every(keep_every):
    with pytest.raises(ValueError, match="keep_every"):
        TrainConfig(ckpt_every=2, keep_every=keep_every)


def test_fit_checkpoint_loads_with_load_model(tiny_data_root, tmp_path):
    from napari_mpt_deblur.models.checkpoint import read_header
    from napari_mpt_deblur.models.resolve import load_model

    torch.manual_seed(0)
    cfg = _config(tiny_data_root, tmp_path / "mpt", patch_size=128, batch_size=1, steps=2,
                  val_every=2, ckpt_every=2, num_val_patches=1)
    from napari_mpt_deblur.train.loop import build_model

    model = build_model(cfg)
    history = fit(cfg, model=model)
    loaded = load_model(history.last_checkpoint, device="cpu")
    assert loaded.config.routing == "aligned"
    x = torch.rand(1, 1, 128, 128)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    header = read_header(history.best_checkpoint)
    assert header["training"]["config"]["steps"] == 2
    assert header["simulation"]["preset"] == "bbbc006"
    assert "psnr" in header["metrics"] and "convention" in header["metrics"]
    assert header["normalization"]["method"] == "percentile"


def test_resume_reproduces_an_uninterrupted_run(tiny_data_root, tmp_path):
    straight = _tiny()
    fit(_config(tiny_data_root, tmp_path / "a"), model=straight)

    calls = {"n": 0}

    def stop_after_three() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    first = fit(_config(tiny_data_root, tmp_path / "b"), model=_tiny(), cancel=stop_after_three)
    assert first.stopped == "cancelled" and first.step == 3
    steps = []
    resumed_model = _tiny(seed=123)  # different init: the state must replace it
    second = fit(_config(tiny_data_root, tmp_path / "b"), model=resumed_model, resume=True,
                 progress=lambda step, total, info: steps.append(step))
    assert steps[0] == 4 and second.step == 6 and second.stopped == "completed"
    for (name, a), b in zip(straight.state_dict().items(), resumed_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert [r["step"] for r in second.train] == list(range(1, 7))


def test_existing_run_needs_resume_and_same_config(tiny_data_root, tmp_path):
    cfg = _config(tiny_data_root, tmp_path / "r", steps=1, val_every=1)
    fit(cfg, model=_tiny())
    with pytest.raises(FileExistsError, match="resume"):
        fit(cfg, model=_tiny())
    with pytest.raises(ValueError, match=r"differs .*\['lr'\]"):
        fit(cfg.replace(lr=1e-2, steps=2), model=_tiny(), resume=True)


def test_cancel_event_stops_and_keeps_best(tiny_data_root, tmp_path):
    event = threading.Event()

    def progress(step, total, info):
        if step == 2:
            event.set()

    history = fit(_config(tiny_data_root, tmp_path / "c", steps=50, val_every=1),
                  model=_tiny(), cancel=event, progress=progress)
    assert history.stopped == "cancelled" and history.step == 2
    assert history.best_step in (1, 2)
    assert (tmp_path / "c" / "best.safetensors").is_file()
    assert torch.load(tmp_path / "c" / "state.pt", weights_only=True)["step"] == 2


def test_time_budget_stops_cleanly_and_resumes(tiny_data_root, tmp_path):
    cfg = _config(tiny_data_root, tmp_path / "t", steps=10_000, val_every=10_000,
                  ckpt_every=10_000)
    history = fit(cfg, model=_tiny(), time_budget_s=0.5)
    assert history.stopped == "time_budget"
    assert 0 < history.step < 10_000
    again = fit(cfg, model=_tiny(), time_budget_s=0.3, resume=True)
    assert again.stopped == "time_budget" and again.step > history.step


def test_fit_with_unlabeled_images_uses_efcr_rel_and_reblur(tiny_data_root, tmp_path):
    cfg = _config(tiny_data_root, tmp_path / "u", steps=2, val_every=2,
                  unlabeled_dirs=["unlabeled"], reblur_weight=1.0, efcr_weight=1e-2)
    history = fit(cfg, model=_tiny())
    record = history.train[-1]
    assert record["efcr_rel"] > 0 and record["reblur"] > 0 and record["efcr"] > 0


def test_fit_trains_htcsf_with_multiscale_supervision(tiny_data_root, tmp_path, monkeypatch):
    """HTCSF is trained by the same loop, supervised at every scale, with and without EFCR."""
    from napari_mpt_deblur import load_model
    from napari_mpt_deblur.models.htcsf import HTCSF

    calls = []
    original = HTCSF.forward_multiscale

    def counting(self, x):
        calls.append(tuple(x.shape))
        return original(self, x)

    monkeypatch.setattr(HTCSF, "forward_multiscale", counting)
    for efcr in (0.0, 5e-4):
        out = tmp_path / f"h{efcr}"
        history = fit(_config(tiny_data_root, out, model="htcsf-test", efcr_weight=efcr))
        record = history.train[-1]
        # the multi-scale total adds the coarser (positive) terms to the full-resolution one
        assert record["multiscale"] > record["pixel"] > 0
        assert ("efcr" in record) == (efcr > 0)
        model = load_model(out / "best.safetensors")
        assert model.info["arch"] == "htcsf"
    assert len(calls) == 2 * 6 and all(shape[-1] == 32 for shape in calls)


# -------------------------------------------------------------------------------- speed options


def test_cpu_amp_bf16_only_when_asked_and_supported(monkeypatch, caplog):
    from napari_mpt_deblur import _device
    from napari_mpt_deblur.train import _common

    cpu = torch.device("cpu")
    assert _common.resolve_amp("auto", cpu) is None  # results must not depend on the CPU model
    assert _common.resolve_amp("off", cpu) is None
    assert _common.resolve_amp("fp16", cpu) is None
    monkeypatch.setattr(_device, "cpu_has_native_bf16", lambda: True)
    assert _common.resolve_amp("bf16", cpu) is torch.bfloat16
    monkeypatch.setattr(_device, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level("WARNING"):
        assert _common.resolve_amp("bf16", cpu) is None
    assert "no native bf16" in caplog.text
    with pytest.raises(ValueError, match="amp must be one of"):
        _common.resolve_amp("int8", cpu)


def test_bf16_compiled_training_learns_and_saves_float32_weights(tiny_data_root, tmp_path,
                                                                monkeypatch):
    from napari_mpt_deblur import _device

    monkeypatch.setattr(_device, "cpu_has_native_bf16", lambda: True)  # emulated elsewhere
    cfg = _config(tiny_data_root, tmp_path / "bf", steps=4, val_every=4, ckpt_every=2,
                  amp="bf16", compile=True)
    model = _tiny()
    before = [p.detach().clone() for p in model.parameters()]
    history = fit(cfg, model=model)
    assert history.stopped == "completed" and history.step == 4
    assert all(np.isfinite(r["loss"]) for r in history.train)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    state = torch.load(tmp_path / "bf" / "state.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in state["model"].values())


def test_speed_options_may_change_when_resuming(tiny_data_root, tmp_path):
    cfg = _config(tiny_data_root, tmp_path / "s", steps=2, val_every=2)
    fit(cfg.replace(steps=1), model=_tiny())
    history = fit(cfg.replace(amp="off", compile=False, steps=2), model=_tiny(), resume=True)
    assert history.step == 2
    with pytest.raises(ValueError, match="compile must be true or false"):
        TrainConfig(compile="yes")
