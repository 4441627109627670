"""Copy a training run's best checkpoint into the package as a bundled model.

    python scripts/export_weights.py runs/mpt-tiny/best.safetensors --name mpt-tiny
    python scripts/export_weights.py runs/mpt-tiny-stage6/state-00750.pt --name mpt-tiny

A training state (``state*.pt``, e.g. a snapshot chosen by ``scripts/select_checkpoint.py``)
takes its weights and step from the state and the rest of the header from the run's
``last.safetensors`` beside it; its validation metrics are those logged at that step.

The header keeps the run's training config, simulation ranges and validation metrics, and gains
the bundled name, a licence and a short description. The model card
(``weights/<name>.md``) is written by ``scripts/model_card.py`` from the header and the
evaluation results.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_mpt_deblur.models.checkpoint import read_header, save_checkpoint
from napari_mpt_deblur.models.info import attach_info, model_info
from napari_mpt_deblur.models.resolve import load_model

WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "napari_mpt_deblur" / "weights"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--description", default="",
                        help="one line shown in the model list (default: that of the bundled "
                             "model being replaced, if any)")
    args = parser.parse_args()
    if args.checkpoint.suffix == ".pt" and not args.checkpoint.with_name(
            "last.safetensors").is_file():
        raise SystemExit(f"{args.checkpoint.with_name('last.safetensors')} is missing: it gives "
                         f"the header (simulation, training config) of {args.checkpoint}")
    # A checkpoint, or a training state (resolve_model: its weights and step, the header of the
    # run's last.safetensors, the validation logged at that step, the state file's SHA-256).
    model = load_model(args.checkpoint, device="cpu")
    header = (read_header(args.checkpoint) or {}) if args.checkpoint.suffix != ".pt" else \
        model_info(model).to_header()
    # averaged_from: a weight average (scripts/average_weights.py) names its checkpoints; its
    # training record is that of the first one.
    extra = {k: header[k] for k in ("training", "simulation", "metrics", "data", "averaged_from")
             if k in header}
    target = WEIGHTS / f"{args.name}.safetensors"
    previous = (read_header(target) or {}) if target.is_file() else {}
    extra.update(
        name=args.name,
        description=args.description or previous.get("description")
        or f"{header.get('arch', 'mpt')} trained by napari-mpt-deblur",
        license="Apache-2.0 (weights trained by the napari-mpt-deblur developers)",
        source_checkpoint_sha256=model_info(model).sha256,
    )
    # Only what the header above does not say: the run's name, lineage and load-time fields
    # must not reach the shipped file through the model's info.
    attach_info(model, {"arch": header.get("arch", "mpt"),
                        "normalization": header.get("normalization")})
    path = save_checkpoint(target, model, metadata=extra)
    print(path, f"{path.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
