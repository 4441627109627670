"""``mpt-deblur info``: what this installation can do."""

from __future__ import annotations

import argparse

NAME = "info"
HELP = "show devices, torch version and the bundled models"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    import json
    import platform

    import torch

    from .. import __version__
    from .._device import list_devices
    from ..models._registry import describe_model, list_models
    from ..models.checkpoint import read_header
    from ..models.pretrained import DEFAULT_PRETRAINED, list_pretrained

    default = DEFAULT_PRETRAINED
    # The default first: it is what `deblur` and the widgets use without --model.
    bundled = {}
    for entry in list_pretrained():
        header = read_header(entry.path) or {}
        bundled[entry.key] = {
            "label": entry.label,
            "file": str(entry.path),
            "arch": header.get("arch"),
            "routing": header.get("routing"),
            "description": header.get("description") or entry.description,
            "metrics": header.get("metrics"),
        }
    info = {
        "napari_mpt_deblur": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "devices": list_devices(),
        "default_model": default,
        "bundled_models": bundled,
        "architectures": {n: describe_model(n) for n in list_models()},
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"napari-mpt-deblur {__version__}  (python {info['python']}, torch {info['torch']})")
    print(f"devices: {', '.join(info['devices'])}   cpu threads: {info['cpu_threads']}")
    print(f"default model: {default}")
    print("bundled trained models (pretrained key, then the picker's name):"
          if bundled else "bundled trained models: none")
    for name, meta in bundled.items():
        label = f"{name} (default)" if name == default else name
        print(f"  {label:<28} {meta['label']:<14} {_architecture(meta)}  {meta['file']}")
        if meta["description"]:
            print(f"  {'':<28} {meta['description']}")
    print("architectures (untrained presets, for training):")
    for name, text in info["architectures"].items():
        print(f"  {name:<22} {text}")
    return 0


def _architecture(meta: dict) -> str:
    """``"mpt, aligned routing"`` or ``"htcsf"``: routing only exists for MPT models, so a CNN
    shows its architecture alone rather than an unexplained placeholder."""
    arch = meta.get("arch") or "unknown architecture"
    return f"{arch}, {meta['routing']} routing" if meta.get("routing") else arch
