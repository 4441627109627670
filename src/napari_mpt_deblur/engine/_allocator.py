"""Keep freed host memory in the process while a CPU inference runs (glibc only).

Why: PyTorch's CPU tensors come from ``malloc``. glibc serves blocks above its mmap threshold
(at most 32 MB by default) with a fresh ``mmap`` and returns them with ``munmap`` when freed, so
every large activation of a whole-image forward pass is page-faulted and zero-filled by the
kernel again, layer after layer. For MPT at 512² that kernel work took longer than the network's
arithmetic (measured: mpt-base 512² on 2 threads 23.6 s -> 14.2 s with the policy below; see
docs/performance.md).

:func:`retain_freed_memory` raises the mmap and trim thresholds for the duration of an inference
so that freed activations stay in the heap and are reused, then restores glibc's usual large-block
behaviour and hands the cached memory back to the operating system with ``malloc_trim``. It is
re-entrant and thread-safe (a counter: the first caller tunes, the last one restores).

It does nothing when the C library is not glibc (macOS, Windows, musl), when the user already
tunes malloc through the environment (``MALLOC_*`` variables or ``GLIBC_TUNABLES``), or when
``NAPARI_MPT_DEBLUR_MALLOC=0``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import platform
import threading
from collections.abc import Iterator

logger = logging.getLogger(__name__)

__all__ = ["retain_freed_memory", "tuning_available"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP = 2**31 - 1  # largest value mallopt's int accepts: "never mmap, never trim" in practice
# What to restore: glibc's dynamic mmap threshold grows to at most 32 MB (64-bit) and keeps the
# trim threshold at twice that; fixed values of that size are the steady state it would reach.
_RESTORE_MMAP = 32 * 2**20
_RESTORE_TRIM = 64 * 2**20

_lock = threading.Lock()
_depth = 0
_libc: ctypes.CDLL | None = None
_checked = False


def _load_libc() -> ctypes.CDLL | None:
    global _libc, _checked
    if _checked:
        return _libc
    _checked = True
    if os.environ.get("NAPARI_MPT_DEBLUR_MALLOC", "1") == "0":
        logger.debug("malloc tuning disabled by NAPARI_MPT_DEBLUR_MALLOC=0")
        return None
    if any(key.startswith("MALLOC_") for key in os.environ) or "GLIBC_TUNABLES" in os.environ:
        logger.debug("malloc is tuned through the environment; leaving it alone")
        return None
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    _libc = libc
    return libc


def tuning_available() -> bool:
    """Whether :func:`retain_freed_memory` changes anything in this process."""
    return _load_libc() is not None


@contextlib.contextmanager
def retain_freed_memory() -> Iterator[None]:
    """Reuse freed large blocks inside the ``with`` body; release them afterwards."""
    global _depth
    libc = _load_libc()
    if libc is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            # glibc releases before 2.35 refuse mmap thresholds above 32 MB (mallopt returns
            # 0): then the largest one they accept still keeps mid-sized activations.
            if not libc.mallopt(_M_MMAP_THRESHOLD, _KEEP):
                libc.mallopt(_M_MMAP_THRESHOLD, _RESTORE_MMAP)
            libc.mallopt(_M_TRIM_THRESHOLD, _KEEP)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(_M_MMAP_THRESHOLD, _RESTORE_MMAP)
                libc.mallopt(_M_TRIM_THRESHOLD, _RESTORE_TRIM)
                libc.malloc_trim(0)
