"""Average the weights of checkpoints of one architecture into a new checkpoint (a "model soup").

Two stages of the same lineage (one continued from the other) trade levels of defocus against
each other; a weighted mean of their weights often lands between them on every level, or above
both. The result keeps the first checkpoint's header (its training record), with the recipe
stated in ``averaged_from``.

    python scripts/average_weights.py A.pt B.safetensors --weights 0.5 0.5 -o soup.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from napari_mpt_deblur import load_model
from napari_mpt_deblur.models.checkpoint import save_checkpoint
from napari_mpt_deblur.models.info import model_info


def average_state_dicts(states: list[dict[str, torch.Tensor]],
                        weights: list[float]) -> dict[str, torch.Tensor]:
    """The weighted mean of state dicts with the same keys and shapes (floating tensors only;
    integer buffers are taken from the first)."""
    if len(states) != len(weights) or not states:
        raise ValueError("one weight per checkpoint, at least one checkpoint")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"the weights must sum to a positive number, got {weights}")
    keys = list(states[0])
    for i, state in enumerate(states[1:], 1):
        if list(state) != keys:
            raise ValueError(f"checkpoint {i} has other parameters than checkpoint 0")
    out = {}
    for key in keys:
        first = states[0][key]
        if not first.is_floating_point():
            out[key] = first.clone()
            continue
        acc = torch.zeros_like(first, dtype=torch.float64)
        for state, w in zip(states, weights, strict=True):
            if state[key].shape != first.shape:
                raise ValueError(f"{key}: shapes differ ({tuple(state[key].shape)} vs "
                                 f"{tuple(first.shape)})")
            acc += state[key].double() * (w / total)
        out[key] = acc.to(first.dtype)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="checkpoints or state.pt files")
    parser.add_argument("--weights", nargs="+", type=float, help="default: equal")
    parser.add_argument("-o", "--output", required=True, type=Path)
    parser.add_argument("--name", help="the model name in the header (default: the output stem)")
    args = parser.parse_args(argv)
    weights = args.weights or [1.0] * len(args.checkpoints)
    models = [load_model(str(p), device="cpu") for p in args.checkpoints]
    net = models[0]
    net.load_state_dict(average_state_dicts([m.state_dict() for m in models], weights))
    weights = [w / sum(weights) for w in weights]  # as recorded: sum checked positive above
    metadata = {
        "name": args.name or args.output.stem,
        # each part's SHA-256 too: a bundled key such as mpt_tiny.defocus names other weights
        # once a new model ships under it
        "averaged_from": [
            {"checkpoint": str(p), "weight": w, "sha256": model_info(m).sha256}
            for p, w, m in zip(args.checkpoints, weights, models, strict=True)],
    }
    save_checkpoint(args.output, net, metadata=metadata)
    parts = " + ".join(f"{w:g} x {p}" for p, w in zip(args.checkpoints, weights, strict=True))
    print(f"wrote {args.output}: {parts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
