"""Write files atomically: to a temporary name in the same folder, then rename.

A crash or a full disk mid-write then leaves either the old file or no file, never a
truncated one, and readers never see a partial file under the final name. A process killed
mid-write (``kill -9``) cannot remove its temporary file; temporary names carry the writer's
process id, ``.<name>.<pid>.<random>.tmp``, so that the next write of the same file removes
those whose writer is no longer running (:func:`remove_stale_temps`).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import GalprismError, OutputExistsError

__all__ = ["atomic_path", "temp_prefix", "stale_temps", "remove_stale_temps"]


def temp_prefix(path: Path) -> str:
    """``.<name>.<pid>.``: the start of this process's temporary names for ``path``."""
    return f".{path.name}.{os.getpid()}."


def _pid_running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: the process exists but belongs to someone else
        return True
    return True


_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]{6,16}\.tmp$")


def stale_temps(names: Iterable[str]) -> dict[str, list[str]]:
    """Temporary names among ``names`` whose writer is no longer running, by final name.

    A name counts only if it has the form ``.<name>.<pid>.<random>.tmp`` and no process
    ``pid`` runs on this machine. On a folder shared between machines, a writer on
    another machine with the same file name cannot be told apart; galprism never has two
    jobs write the same output name.
    """
    found: dict[str, list[str]] = {}
    for entry in names:
        m = _TEMP_NAME.match(entry)
        if m is not None and not _pid_running(int(m.group("pid"))):
            found.setdefault(m.group("name"), []).append(entry)
    return found


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of ``path`` left by writers that were killed.

    Returns
    -------
    list of pathlib.Path
        The files removed.
    """
    path = Path(path)
    try:
        names = [n for n in os.listdir(path.parent or ".") if n.startswith(f".{path.name}.")]
    except OSError:
        return []
    removed = []
    for name in stale_temps(names).get(path.name, []):
        with contextlib.suppress(FileNotFoundError):
            (path.parent / name).unlink()
            removed.append(path.parent / name)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    Raises
    ------
    OutputExistsError
        If ``path`` exists (or appears while writing) and ``overwrite`` is false.
    GalprismError
        If writing fails (the temporary file is removed and any existing ``path`` is
        left untouched).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: exists and overwriting is not allowed")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        if not overwrite and path.exists():
            raise OutputExistsError(
                f"{path}: appeared while writing and overwriting is not allowed"
            )
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise GalprismError(f"{path}: could not be written: {exc.strerror or exc}") from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
