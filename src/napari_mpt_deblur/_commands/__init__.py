"""Subcommands of ``mpt-deblur``: each module defines NAME, HELP, add_arguments and run."""

import argparse
import contextlib
import logging
import signal
import threading
import warnings
from collections.abc import Iterator
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
    the one who must change). ``deprecated=("--old",)`` names the old spellings when other
    option strings are current aliases (``"--new", "--short", "--old"``).
    """

    def __init__(self, *args: Any, deprecated: tuple[str, ...] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deprecated = (tuple(self.option_strings[1:]) if deprecated is None
                           else tuple(deprecated))

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if option_string is not None and option_string in self.deprecated:
            with warnings.catch_warnings():
                warnings.simplefilter("always", DeprecationWarning)
                warnings.warn(f"{option_string} is deprecated; use {self.option_strings[0]}",
                              DeprecationWarning, stacklevel=2)
        setattr(namespace, self.dest, values)


@contextlib.contextmanager
def stop_on_interrupt(log: logging.Logger, keeping: str) -> Iterator[threading.Event]:
    """Ctrl-C as the long-running commands (``train``, ``finetune``) take it: the first sets
    the event it yields, so the run stops cleanly after the current step (``keeping`` says
    what is kept, e.g. ", keeping the best weights"); the second raises
    ``KeyboardInterrupt`` (abort). The handler is installed only in the main thread, where
    Python delivers signals, and the previous one is restored on the way out."""
    cancel = threading.Event()

    def on_interrupt(_signum: int, _frame: Any) -> None:
        if cancel.is_set():
            raise KeyboardInterrupt
        log.warning("interrupt: stopping after this step%s (press Ctrl-C again to abort)",
                    keeping)
        cancel.set()

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_interrupt) if main else None
    try:
        yield cancel
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


#: ``argparse`` destinations of :func:`add_optics_arguments`, as ``OpticsHints`` names them.
OPTICS_DESTS = ("pixel_size_um", "numerical_aperture", "wavelength_nm", "immersion_index")


def add_optics_arguments(parser: argparse.ArgumentParser, *, default_help: str) -> None:
    """The microscope options, one definition for every subcommand that takes them
    (``finetune``: its re-blur and replay optics; ``deblur``: an optics-conditioned model's
    input). Each is stored under its ``OpticsHints`` name (:data:`OPTICS_DESTS`), ``None``
    when not given; ``default_help`` says what the command uses then."""
    group = parser.add_argument_group(f"optics (default: {default_help})")
    group.add_argument("--pixel-size-um", "--pixel-size", dest="pixel_size_um", type=float,
                       default=None, metavar="UM", help="pixel size in the sample plane, µm")
    group.add_argument("--na", "--numerical-aperture", dest="numerical_aperture", type=float,
                       default=None, help="objective numerical aperture")
    group.add_argument("--wavelength-nm", "--wavelength", dest="wavelength_nm", type=float,
                       default=None, metavar="NM", help="emission wavelength in nm")
    group.add_argument("--immersion-index", "--immersion", "--refractive-index",
                       dest="immersion_index", type=float, default=None, metavar="N",
                       action=DeprecatedFlag, deprecated=("--refractive-index",),
                       help="refractive index of the immersion medium (1.0 dry, 1.33 water, "
                       "1.515 oil); --refractive-index is its old name")


def optics_arguments(args: argparse.Namespace) -> dict[str, float]:
    """The optics options the user gave (:func:`add_optics_arguments`), by ``OpticsHints``
    name; options not given are left out."""
    return {name: getattr(args, name) for name in OPTICS_DESTS
            if getattr(args, name, None) is not None}
