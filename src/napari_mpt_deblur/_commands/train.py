"""``mpt-deblur train``: supervised training on simulated defocus pairs, in resumable chunks.

Everything about the run is in the config file (``configs/recipes/*.yaml``); the options here
only steer its execution. A run that stops on ``--time-budget`` or Ctrl-C saves its state and
continues with ``--resume``; ``--init`` starts from trained weights (a recipe that continues
another model's training)::

    mpt-deblur train --config configs/recipes/mpt-tiny.yaml --init mpt-tiny --out runs/mine
    mpt-deblur train --config configs/recipes/mpt-tiny.yaml --out runs/mine --resume
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import DEVICE_HELP, stop_on_interrupt

NAME = "train"
HELP = "train a deblurring model on simulated defocus pairs (resumable, time-budgeted)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path,
                        help="training config, JSON or YAML (see configs/recipes/)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run saved in the output folder")
    parser.add_argument("--time-budget", type=float, default=None, metavar="S",
                        help="stop cleanly (state saved) before S seconds have passed")
    parser.add_argument("--steps", type=int, default=None, metavar="N",
                        help="total optimiser steps (overrides the config)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="run folder (overrides the config's out_dir)")
    parser.add_argument("--data-root", type=Path, default=None, metavar="DIR",
                        help="folder the config's data paths are relative to")
    parser.add_argument("--device", default=None,
                        help=DEVICE_HELP + " (default: the config's, else auto)")
    parser.add_argument("--init", default=None, metavar="CKPT",
                        help="start from these weights: a pretrained key, a checkpoint file or "
                             "another run's state (state.pt, state-NNNNN.pt)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import logging

    from tqdm import tqdm

    from ..train.config import TrainConfig
    from ..train.loop import fit

    log = logging.getLogger(__name__)
    cfg = TrainConfig.from_file(args.config)
    changes: dict = {}
    if args.steps is not None:
        changes["steps"] = args.steps
    if args.out is not None:
        changes["out_dir"] = str(args.out)
    if args.data_root is not None:
        changes["data_root"] = str(args.data_root)
    if args.device is not None:
        changes["device"] = args.device
    if args.time_budget is not None:
        changes["time_budget_s"] = args.time_budget
    cfg = cfg.replace(**changes) if changes else cfg
    if args.device is None:  # --device was checked by the CLI; a config's own device is too
        from .._device import require_device

        require_device(cfg.device)

    model = None
    if args.init is not None:
        from ..models.pretrained import canonical_name
        from ..models.resolve import load_model

        # A run's state (say step 1250 of the previous stage) carries its own config: its
        # weights are taken as they are, and a routing the new config contradicts is refused.
        model = load_model(canonical_name(args.init), device=cfg.device, routing=cfg.routing)
        model.train()
        log.info("starting from %s", args.init)

    bar = tqdm(total=cfg.steps, unit="step", disable=args.no_progress or None)

    def progress(step: int, total: int, info: dict) -> None:
        bar.total = total
        bar.n = step
        bar.set_postfix({k: f"{v:.4g}" for k, v in info.items()
                         if k in ("loss", "lr", "val_psnr")}, refresh=False)
        bar.refresh()

    def log_event(update) -> None:
        kind = update.kind.value
        if kind == "validation":
            log.info("step %d: validation PSNR %.2f dB, SSIM %.3f", update.step,
                     update.value["psnr"], update.value["ssim"])
        elif kind == "loss" and bar.disable and update.step % cfg.log_every == 0:
            log.info("step %d/%d: loss %.5f", update.step, update.total, update.value["loss"])

    # First Ctrl-C: finish the current step, save the state and stop; second: abort.
    with bar, stop_on_interrupt(log, " and saving the state") as cancel:
        if not args.resume and Path(cfg.out_dir, "state.pt").exists():
            raise FileExistsError(
                f"{cfg.out_dir} already holds a run; add --resume to continue it or use --out"
            )
        history = fit(cfg, model=model, resume=args.resume, progress=progress, cancel=cancel,
                      callbacks=log_event)
    log.info("%s at step %d/%d; best validation PSNR %s dB (step %s) in %s",
             history.stopped, history.step, history.total_steps,
             f"{history.best_psnr:.2f}" if history.best_psnr is not None else "n/a",
             history.best_step, history.best_checkpoint)
    if history.stopped != "completed":
        log.info("continue with: mpt-deblur train --config %s --resume%s", args.config,
                 f" --out {cfg.out_dir}" if args.out is not None else "")
    return 0
