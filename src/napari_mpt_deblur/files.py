"""Files written so that a crash or a kill never leaves a half-written one.

:func:`atomic_write` writes to a hidden temporary file in the target folder and renames it into
place in one step, refusing to replace an existing file unless asked; the image writer, the
training checkpoints and states, the CLI's reports and the benchmarks' result files all go
through it. A process killed mid-write cannot remove its temporary file, so
:func:`remove_stale_temp_files` lets the next run clean up exactly those names.

Public (scripts and benchmarks write their results with it); :mod:`._io` re-exports both, their
home before this module.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["atomic_write", "remove_stale_temp_files"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, writer: Callable[[str], Any], *,
                 overwrite: bool = False) -> Path:
    """Call ``writer(tmp_path)`` then move the result to ``path`` in one step.

    Raises ``FileExistsError`` when ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; refusing to overwrite it (use --overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f".part{path.suffix}", dir=path.parent
    )
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        writer(tmp)
        if path.exists() and not overwrite:  # appeared while we were writing
            raise FileExistsError(f"{path} appeared while writing; refusing to overwrite it")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path




# Names of the temporary files this package's atomic writers create with ``tempfile.mkstemp``:
# ``atomic_write`` -> ``.<stem>.<8 random>.part<suffix>``; checkpoint and training-state saves ->
# ``.<name>.safetensors|.pt.<8 random>.tmp``. Anything else is never touched.
_STALE_TEMP_PATTERNS = (
    re.compile(r"^\..+\.[a-z0-9_]{8}\.part(\.[A-Za-z0-9]+)?$"),
    re.compile(r"^\..+\.(safetensors|pt)\.[a-z0-9_]{8}\.tmp$"),
)


def remove_stale_temp_files(folder: str | os.PathLike, *, min_age_s: float = 60.0) -> list[Path]:
    """Delete temporary files that a killed run of this package left in ``folder``.

    An atomic write goes to a hidden temporary file that is renamed into place when complete;
    a process killed mid-write (SIGKILL, power loss) cannot remove it. Such files are hidden
    (dot names), never complete outputs, and are cleaned up by the next run. Only names made
    by this package's writers are recognised, only directly in ``folder``, and only when they
    have not been modified for ``min_age_s`` seconds, so a write still in progress in another
    process is left alone.

    Returns
    -------
    list of Path
        The files removed (empty when ``folder`` does not exist).
    """
    import time

    folder = Path(folder)
    if not folder.is_dir():
        return []
    now = time.time()
    removed = []
    for entry in folder.iterdir():
        if not any(p.match(entry.name) for p in _STALE_TEMP_PATTERNS):
            continue
        try:
            if entry.is_symlink() or not entry.is_file():
                continue
            if now - entry.stat().st_mtime < min_age_s:
                continue
            entry.unlink()
        except FileNotFoundError:  # removed by its writer meanwhile
            continue
        except OSError as exc:
            logger.warning("could not remove stale temporary file %s: %s", entry, exc)
            continue
        removed.append(entry)
        logger.info("removed %s, left by an interrupted earlier run", entry.name)
    return removed
