"""``mpt-deblur``: the command line, for batch and headless work on the same core as the plugin.

Subcommands live in ``napari_mpt_deblur._commands`` (one module each, discovered here), so the
parser stays cheap: torch is imported only by the subcommand that runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence

from . import __version__, _commands
from ._device import require_device

logger = logging.getLogger("napari_mpt_deblur")

_ORDER = ("demo", "deblur", "info", "simulate", "train", "evaluate", "finetune", "detect")


def _subcommand_modules() -> list:
    names = [m.name for m in pkgutil.iter_modules(_commands.__path__) if not m.name.startswith("_")]
    names.sort(key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))
    return [importlib.import_module(f"{_commands.__name__}.{n}") for n in names]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used by the docs)."""
    parser = argparse.ArgumentParser(
        prog="mpt-deblur",
        description="Remove defocus blur from microscopy images (Multi-Pyramid Transformer).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _subcommand_modules():
        sp = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(sp)
        sp.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (0 ok, 1 failed, 2 usage, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.ERROR if args.quiet else (logging.DEBUG if args.verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", stream=sys.stderr)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        if getattr(args, "device", None) is not None:
            # One check for every subcommand with --device: a missing GPU is an error here,
            # not a warning and a silent CPU run (the library itself still falls back).
            args.device = require_device(args.device)
        from .models.pretrained import old_names_accepted

        with old_names_accepted():  # `--model mpt-tiny` is a user's word, not code to update
            return int(args._run(args) or 0)
    except KeyboardInterrupt:
        logger.error("interrupted; complete output files were kept, partial ones removed")
        return 130
    except (FileNotFoundError, FileExistsError, ValueError, TypeError, MemoryError) as exc:
        if args.verbose:
            logger.exception("failed")
        else:
            logger.error("%s", exc)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
