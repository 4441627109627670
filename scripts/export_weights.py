"""Copy a training run's best checkpoint into the package as a bundled model.

    python scripts/export_weights.py runs/mpt-tiny/best.safetensors --name mpt-tiny

The header keeps the run's training config, simulation ranges and validation metrics, and gains
the bundled name, a licence and a short description. The model card
(``weights/<name>.md``) is written by ``scripts/model_card.py`` from the header and the
evaluation results.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_mpt_deblur.models.checkpoint import load_model, read_header, save_checkpoint

WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "napari_mpt_deblur" / "weights"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--description", default="")
    args = parser.parse_args()
    header = read_header(args.checkpoint) or {}
    model = load_model(args.checkpoint, device="cpu")
    extra = {k: header[k] for k in ("training", "simulation", "metrics", "data") if k in header}
    extra.update(
        name=args.name,
        description=args.description or f"{header.get('arch', 'mpt')} trained by napari-mpt-deblur",
        license="Apache-2.0 (weights trained by the napari-mpt-deblur developers)",
        source_checkpoint_sha256=model.info["sha256"],
    )
    model.info = {"arch": header.get("arch", "mpt"), "normalization": header.get("normalization")}
    path = save_checkpoint(WEIGHTS / f"{args.name}.safetensors", model, metadata=extra)
    print(path, f"{path.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
