"""``mpt-deblur finetune``: adapt a model to your own blurry images (EFCR, no ground truth).

Example::

    mpt-deblur finetune my_images/ --model mpt_tiny.defocus -o my-mpt.safetensors \\
        --pixel-size-um 0.65 --na 0.5 --wavelength-nm 520 --time-budget 900

The checkpoint holds the best weights found, judged by the PSNR on fixed simulated pairs at your
optics (real in-focus images the run never trains on), and a record of the run; when no
checkpoint beats the starting model it holds the starting weights and says so.
``mpt-deblur deblur --model my-mpt.safetensors`` uses it. A stopped run (``--time-budget``,
Ctrl-C) continues with ``--resume``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..train.config import FINETUNE_MODES, REPLAY_OPTICS, SELECTION_SCORES, TRAINABLE_CHOICES
from . import DEVICE_HELP, add_optics_arguments, stop_on_interrupt

NAME = "finetune"
HELP = "fine-tune a model on your own unlabeled blurry images (EFCR + re-blur + replay)"

_MODES = FINETUNE_MODES  # the old name of the --mode choices


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", help="blurry image files, folders or glob patterns")
    parser.add_argument("--model", default=None,
                        help="starting model: pretrained key or checkpoint file (default: "
                             "mpt_tiny.defocus)")
    parser.add_argument("-o", "--output", required=True, type=Path,
                        help="checkpoint to write (.safetensors)")
    parser.add_argument("--preset", default="cpu-laptop", help="settings preset: cpu-laptop, gpu")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps")
    parser.add_argument("--time-budget", type=float, default=None, metavar="S",
                        help="stop cleanly before S seconds")
    parser.add_argument("--mode", choices=FINETUNE_MODES, default=None,
                        help="full (default), reblur_only, efcr or replay (for ablations)")
    add_optics_arguments(parser, default_help="the pixel size from the image metadata, else "
                         "the model's simulation optics")
    parser.add_argument("--max-defocus-um", type=float, default=None, metavar="UM",
                        help="deepest defocus in your images (default: the model's training "
                        "range carried over to your optics)")
    parser.add_argument("--replay-optics", choices=REPLAY_OPTICS, default=None,
                        help="simulate replay pairs and the selection score at your optics "
                        "(auto: when pixel size and NA are known) or the model's")
    parser.add_argument("--selection-score", choices=SELECTION_SCORES,
                        default=None,
                        help="content of the simulated pairs whose PSNR decides which weights "
                        "are kept: your own images (the start model's output on them, "
                        "re-blurred at your optics) or the bundled in-focus images (default: "
                        "the --preset's)")
    parser.add_argument("--trainable", choices=TRAINABLE_CHOICES, default=None,
                        help="which parameters adapt: all (default), the last third of the "
                        "network's blocks, or normalisation weights and biases")
    parser.add_argument("--replay", nargs="+", default=None, metavar="PATH",
                        help="in-focus images for replay pairs (default: procedural images)")
    parser.add_argument("--batch-size", type=int, default=None, metavar="N",
                        help="training patches per step (default: the --preset's)")
    parser.add_argument("--patch-size", type=int, default=None, metavar="PX",
                        help="patch side in pixels, rounded up to the model's multiple "
                        "(default: the --preset's)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate")
    parser.add_argument("--efcr-weight", type=float, default=None, help="λ on the EFCR term")
    parser.add_argument("--device", default=None,
                        help=DEVICE_HELP + " (default: auto)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed for every random choice; the same seed repeats a run "
                        "(default: 0)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUTPUT's .state.pt file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import logging

    from tqdm import tqdm

    from .._io import expand_inputs, read_image
    from ..models.info import model_info
    from ..models.pretrained import canonical_name
    from ..models.resolve import load_model
    from ..train.finetune import finetune_iter, get_finetune_preset
    from ..train.updates import UpdateKind

    log = logging.getLogger(__name__)
    output = args.output
    if output.suffix != ".safetensors":
        output = output.with_name(output.name + ".safetensors")
    if output.exists() and not (args.overwrite or args.resume):
        raise FileExistsError(f"{output} exists; use --overwrite to replace it or --resume")

    files = list(expand_inputs(args.images))
    if not files:
        raise FileNotFoundError("no input images found (supported: .tif, .tiff, .png)")
    pixel_sizes = []
    for f in files:
        _, meta = read_image(f)
        if meta.get("pixel_size_um"):
            pixel_sizes.append(float(meta["pixel_size_um"][-1]))

    changes = {
        "steps": args.steps,
        "time_budget_s": args.time_budget,
        "mode": args.mode,
        "pixel_size_um": args.pixel_size_um,
        "numerical_aperture": args.numerical_aperture,
        "wavelength_nm": args.wavelength_nm,
        "immersion_index": args.immersion_index,
        "max_defocus_um": args.max_defocus_um,
        "replay_optics": args.replay_optics,
        "selection_score": args.selection_score,
        "trainable": args.trainable,
        "batch_size": args.batch_size,
        "patch_size": args.patch_size,
        "lr": args.lr,
        "efcr_weight": args.efcr_weight,
        "device": args.device,
        "seed": args.seed,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    if "pixel_size_um" not in changes and pixel_sizes:
        changes["pixel_size_um"] = pixel_sizes[0]
        log.info("pixel size %.4g µm from the image metadata", pixel_sizes[0])
    settings = get_finetune_preset(args.preset, **changes)

    model = load_model(canonical_name(args.model) if args.model else None,
                       device=settings.device)  # a fresh copy: fine-tuning changes it
    log.info("fine-tuning %s on %d images (%s mode, %d steps)", model_info(model).name,
             len(files), settings.mode, settings.steps)
    replay = None
    if args.replay:
        replay = list(expand_inputs(args.replay))

    done = None
    with (tqdm(total=settings.steps, unit="step", disable=args.no_progress or None) as bar,
          stop_on_interrupt(log, ", keeping the best weights") as cancel):
        for update in finetune_iter(model, files, settings=settings, replay_images=replay,
                                    out_path=output, resume=args.resume, cancel=cancel):
            if update.kind is UpdateKind.LOSS:
                bar.n = update.step
                bar.set_postfix(loss=f"{update.value['loss']:.4g}", refresh=False)
                bar.refresh()
            elif update.kind is UpdateKind.VALIDATION:
                log.info("step %d: %s %.2f dB; re-blur PSNR %.2f dB (identity %.2f), "
                         "detail ratio %.3f", update.step, update.value["score_name"],
                         update.value["score"], update.value["reblur_psnr"],
                         update.value["reblur_psnr_identity"], update.value["hf_energy_ratio"])
            elif update.kind is UpdateKind.DONE:
                done = update.value
    if done is not None:
        log.info("%s: %s; wrote %s", done["reason"], done["verdict"], done["checkpoint"])
        if done["reason"] != "completed":
            log.info("continue with --resume")
    return 0
