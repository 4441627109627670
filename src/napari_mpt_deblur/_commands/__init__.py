"""Subcommands of ``mpt-deblur``: each module defines NAME, HELP, add_arguments and run."""

import argparse
import warnings
from typing import Any

# One wording for every --device option, so they all promise the behaviour cli.main enforces.
DEVICE_HELP = (
    "auto, cpu, cuda, cuda:N or mps; auto picks CUDA, then MPS, then the CPU, while a named "
    "device that is not available here is an error"
)


class DeprecatedFlag(argparse.Action):
    """Store like the flag it is an old name of, and say which flag replaces it.

    Give it as the second option string (``parser.add_argument("--new", "--old",
    action=DeprecatedFlag)``): the first is the name to use and is stored silently; the other
    still works, with a ``DeprecationWarning`` shown on the terminal (the command-line user is
    the one who must change).
    """

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if option_string is not None and option_string != self.option_strings[0]:
            with warnings.catch_warnings():
                warnings.simplefilter("always", DeprecationWarning)
                warnings.warn(f"{option_string} is deprecated; use {self.option_strings[0]}",
                              DeprecationWarning, stacklevel=2)
        setattr(namespace, self.dest, values)
