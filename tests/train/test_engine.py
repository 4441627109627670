"""Tests of the one trainer (train/engine.py) and the shared config parts it takes."""

from __future__ import annotations

import json
import math
import threading
import time

import pytest
import torch
from _train_helpers import TinyNet, blurry_user_images
from torch import nn

from napari_mpt_deblur.train import engine
from napari_mpt_deblur.train._common import load_state_file, lr_at
from napari_mpt_deblur.train.config import EfcrConfig, OpticsHints, OptimConfig, TrainConfig
from napari_mpt_deblur.train.engine import Every, StepLoop, Stopped, Trainer, write_state
from napari_mpt_deblur.train.updates import TrainUpdate, UpdateKind

CPU = torch.device("cpu")


def _regression(seed: int = 0, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return x, x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1


def _linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(4, 1)


def _loss_fn(x: torch.Tensor, y: torch.Tensor, batch: int = 8):
    """A loss whose batch is a pure function of the step (as the real runs' are)."""

    def loss(ctx):
        i = (ctx.step * batch) % x.shape[0]
        err = ctx.forward(x[i : i + batch]) - y[i : i + batch]
        return (err**2).mean(), {"mse": (err**2).mean()}

    return loss


def _trainer(model: nn.Module, total: int = 10, **optim) -> Trainer:
    settings = dict(lr=0.05, warmup_steps=2, weight_decay=0.0, grad_clip=0.0, amp="off")
    settings.update(optim)
    return Trainer(model, OptimConfig(**settings), total_steps=total, device=CPU)


# ------------------------------------------------------------------------------------ Trainer


def test_step_follows_the_schedule_and_learns():
    x, y = _regression()
    trainer = _trainer(_linear(), total=40, lr=0.3)
    results = [trainer.step(i, _loss_fn(x, y)) for i in range(40)]
    assert [r.step for r in results] == list(range(1, 41))
    for i, r in enumerate(results):
        assert r.lr == pytest.approx(lr_at(i, lr=0.3, min_lr=1e-6, warmup_steps=2,
                                           total_steps=40))
        assert r.finite and set(r.record()) == {"loss", "lr", "grad_norm", "mse"}
        assert math.isnan(r.grad_norm)  # no clipping asked: no norm computed
    assert results[-1].loss < 0.1 * results[0].loss


def test_grad_clip_bounds_the_gradient_and_reports_the_norm_before_clipping():
    x, y = _regression()
    model = _linear()
    trainer = _trainer(model, grad_clip=0.01)
    result = trainer.step(5, _loss_fn(x, y))
    clipped = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert result.grad_norm > 0.1  # the raw gradient is much larger than the clip ...
    assert float(clipped) == pytest.approx(0.01, rel=1e-4)  # ... and what AdamW saw is clipped


def test_a_non_finite_loss_skips_the_update():
    model = _linear()
    trainer = _trainer(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def nan_loss(ctx):
        return ctx.forward(torch.ones(2, 4)).sum() * math.nan, {}

    result = trainer.step(0, nan_loss)
    assert not result.finite and math.isnan(result.grad_norm)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert not trainer.optimizer.state  # AdamW never stepped


def test_trainer_state_resumes_bit_for_bit(tmp_path):
    x, y = _regression()
    straight = _linear()
    trainer = _trainer(straight)
    for i in range(6):
        trainer.step(i, _loss_fn(x, y))

    first = _linear()
    trainer = _trainer(first)
    for i in range(3):
        trainer.step(i, _loss_fn(x, y))
    path = write_state(tmp_path / "state.pt", "fit", 3, trainer, history="[]")
    state = load_state_file(path, "fit")
    # the keys every state file has had, so that states of earlier versions resume
    assert {"format", "version", "kind", "step", "model", "optimizer", "scaler", "rng",
            "history"} == set(state)
    resumed = _linear(seed=99)
    trainer = _trainer(resumed)
    trainer.load_state(state)
    for i in range(int(state["step"]), 6):
        trainer.step(i, _loss_fn(x, y))
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ------------------------------------------------------------------------------------ StepLoop


def _marker(name: str, seen: list):
    def action(step: int):
        seen.append((name, step))
        yield TrainUpdate(UpdateKind.CHECKPOINT, step, 0, {"kind": name})

    return action


def test_loop_yields_loss_then_due_actions_in_order():
    x, y = _regression()
    seen: list = []
    loop = StepLoop(_trainer(_linear(), total=6), _loss_fn(x, y), start=0, total=6,
                    every=(Every(3, _marker("val", seen), at_last=True),
                           Every(2, _marker("preview", seen)),
                           Every(4, _marker("state", seen), at_last=False)))
    out = [(u.kind, u.step, (u.value or {}).get("kind")) for u in loop]
    loss = UpdateKind.LOSS
    ck = UpdateKind.CHECKPOINT
    assert out == [
        (loss, 1, None),
        (loss, 2, None), (ck, 2, "preview"),
        (loss, 3, None), (ck, 3, "val"),
        (loss, 4, None), (ck, 4, "preview"), (ck, 4, "state"),
        (loss, 5, None),
        # the last step: "val" always (at_last=True), "preview" when due, "state" never
        (loss, 6, None), (ck, 6, "val"), (ck, 6, "preview"),
    ]
    assert loop.stopped == Stopped("completed", 6)


def test_cancel_is_checked_once_before_every_step():
    x, y = _regression()
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    model = _linear()
    loop = StepLoop(_trainer(model), _loss_fn(x, y), start=0, total=10, cancel=cancel)
    steps = [u.step for u in loop if u.kind is UpdateKind.LOSS]
    assert steps == [1, 2, 3] and calls["n"] == 4
    assert loop.stopped == Stopped("cancelled", 3)

    event = threading.Event()
    event.set()
    loop = StepLoop(_trainer(_linear()), _loss_fn(x, y), start=4, total=10, cancel=event)
    assert list(loop) == [] and loop.stopped == Stopped("cancelled", 4)


def test_time_budget_stops_before_a_step_would_overrun_it():
    x, y = _regression()
    inner = _loss_fn(x, y)

    def slow(ctx):
        time.sleep(0.05)
        return inner(ctx)

    loop = StepLoop(_trainer(_linear(), total=1000), slow, start=0, total=1000,
                    time_budget_s=0.3)
    t0 = time.monotonic()
    steps = [u.step for u in loop]
    assert loop.stopped is not None and loop.stopped.reason == "time_budget"
    assert 1 <= len(steps) < 10 and time.monotonic() - t0 < 0.3 + 0.2


def test_too_many_non_finite_losses_raise():
    def nan_loss(ctx):
        return ctx.forward(torch.ones(2, 4)).sum() * math.nan, {}

    loop = StepLoop(_trainer(_linear()), nan_loss, start=0, total=10, max_bad_steps=3)
    seen = []
    with pytest.raises(FloatingPointError, match="3 consecutive non-finite losses at step 3"):
        for update in loop:
            seen.append(update.step)
    assert seen == [1, 2]  # reported (as NaN losses) until the third raised


# ------------------------------------------------------------------------------------ both runs


def _count_steps(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = engine.Trainer.step

    def counting(self, step, loss_fn):
        calls.append(step)
        return original(self, step, loss_fn)

    monkeypatch.setattr(engine.Trainer, "step", counting)
    return calls


def test_supervised_training_steps_through_the_trainer(tiny_data_root, tmp_path, monkeypatch):
    from napari_mpt_deblur.train.loop import fit

    calls = _count_steps(monkeypatch)
    cfg = TrainConfig(model="mpt-test", data_root=str(tiny_data_root), train_dirs=["train"],
                      val_dirs=["val"], out_dir=str(tmp_path / "run"), patch_size=32,
                      batch_size=2, steps=3, warmup_steps=0, val_every=3, ckpt_every=3,
                      num_val_patches=2, device="cpu")
    torch.manual_seed(0)
    history = fit(cfg, model=TinyNet())
    assert calls == [0, 1, 2] and history.step == 3


def test_fine_tuning_steps_through_the_trainer(monkeypatch):
    from napari_mpt_deblur.train.finetune import FinetuneConfig, finetune

    calls = _count_steps(monkeypatch)
    settings = FinetuneConfig(steps=3, batch_size=2, patch_size=32, warmup_steps=0,
                              val_crop_size=64, val_every=3, preview_every=0, state_every=0,
                              device="cpu", reblur_defocus_dof=(0.5, 1.0),
                              reblur_kernel_size=31, score_pairs=2)
    torch.manual_seed(0)
    result = finetune(TinyNet(), blurry_user_images(3, sigma_px=2.0, noise=10),
                      settings=settings)
    assert calls == [0, 1, 2]
    assert [h["step"] for h in result.history if h["kind"] == "loss"] == [1, 2, 3]


# ------------------------------------------------------------------------------------ config parts


def test_run_configs_hand_their_shared_parts_to_the_trainer():
    from napari_mpt_deblur.train.finetune import FinetuneConfig

    cfg = TrainConfig(lr=1e-3, grad_clip=0.5, amp="off", compile=True, efcr_weight=0.0)
    assert cfg.optim == OptimConfig(lr=1e-3, min_lr=cfg.min_lr, warmup_steps=cfg.warmup_steps,
                                    weight_decay=cfg.weight_decay, grad_clip=0.5, amp="off",
                                    compile=True)
    assert cfg.efcr == EfcrConfig(efcr_weight=0.0, reblur_defocus_dof=cfg.reblur_defocus_dof)
    ft = FinetuneConfig(lr=2e-4, pixel_size_um=0.1, numerical_aperture=1.2)
    # fine-tuning has no schedule/compile fields: the part's defaults
    assert ft.optim.lr == 2e-4 and ft.optim.schedule == "cosine" and not ft.optim.compile
    assert ft.optics == OpticsHints(pixel_size_um=0.1, numerical_aperture=1.2)
    assert ft.optics.has_psf and not OpticsHints(pixel_size_um=0.1).has_psf


@pytest.mark.parametrize("bad, message", [
    ({"lr": 0}, "lr must be > 0"),
    ({"grad_clip": -1}, "grad_clip must be >= 0"),
    ({"warmup_steps": -1}, "warmup_steps must be an integer >= 0"),
    ({"amp": "fp8"}, "amp must be one of"),
    ({"efcr_weight": -1}, "efcr_weight must be >= 0"),
    ({"reblur_defocus_dof": (1.0, 0.0)}, "reblur_defocus_dof must be a non-empty list"),
])
def test_both_run_configs_validate_the_shared_fields_alike(bad, message):
    from napari_mpt_deblur.train.finetune import FinetuneConfig

    for config_type in (TrainConfig, FinetuneConfig):
        with pytest.raises(ValueError, match=message):
            config_type(**bad)
    with pytest.raises(ValueError, match="numerical_aperture must be a positive number"):
        FinetuneConfig(numerical_aperture=-1.0)


def test_flat_files_of_earlier_versions_still_read():
    from napari_mpt_deblur.train.finetune import FinetuneConfig

    flat = {"lr": 5e-4, "min_lr": 1e-6, "warmup_steps": 3, "weight_decay": 0.0,
            "grad_clip": 1.0, "amp": "off", "efcr_weight": 5e-4, "efcr_rel_weight": 0.1,
            "reblur_defocus_dof": [2.0, 4.0]}
    assert FinetuneConfig.from_dict(flat).optim.lr == 5e-4
    train = TrainConfig.from_dict({**flat, "schedule": "constant", "compile": False})
    assert train.to_dict()["lr"] == 5e-4 and "optim" not in train.to_dict()
    assert json.loads(json.dumps(train.to_dict())) == train.to_dict()
