"""Parameters and multiply-accumulates of every preset (the "size" columns of the docs' tables).

MACs are counted by ``torch.utils.flop_counter.FlopCounterMode`` over one inference forward of a
1-channel 256×256 input: convolutions, transposed convolutions, linear layers, matrix products
and ``scaled_dot_product_attention`` (MACs = FLOPs / 2). Element-wise work (norms, activations,
softmax) is not counted, as in the papers' GMAC figures.

    python benchmarks/model_table.py
    python benchmarks/model_table.py --presets mpt-base mpt-tiny htcsf --size 256
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from _machine import machine_line
from napari_mpt_deblur import create_model, list_models


def count(preset: str, size: int) -> tuple[int, float]:
    """(parameters, GMAC of one forward at ``size``²) of a 1-channel ``preset``."""
    model = create_model(preset).eval()
    params = sum(p.numel() for p in model.parameters())
    x = torch.rand(1, 1, size, size)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return params, counter.get_total_flops() / 2 / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=None, help="default: all but tests")
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    presets = args.presets or [m for m in list_models() if not m.endswith("-test")]
    print(machine_line("cpu") + "\n")
    print(f"| preset | parameters (1 channel) | GMAC at {args.size}² |")
    print("|---|---:|---:|")
    for preset in presets:
        params, gmac = count(preset, args.size)
        print(f"| `{preset}` | {params:,} | {gmac:.2f} |", flush=True)


if __name__ == "__main__":
    main()
