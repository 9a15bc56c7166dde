"""Write files atomically: to a temporary name in the same folder, then rename.

A crash or a full disk mid-write then leaves either the old file or no file, never a
truncated one, and readers never see a partial file under the final name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import GalprismError

__all__ = ["atomic_path", "atomic_write"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    Raises
    ------
    GalprismError
        If ``path`` exists and ``overwrite`` is false, or if writing fails (the
        temporary file is removed and any existing ``path`` is left untouched).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise GalprismError(f"{path}: exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        if not overwrite and path.exists():
            raise GalprismError(f"{path}: appeared while writing; pass --overwrite to replace it")
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise GalprismError(f"{path}: could not be written: {exc.strerror or exc}") from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write(
    path: str | os.PathLike, write: Callable[[Path], None], *, overwrite: bool = True
) -> Path:
    """Call ``write(tmp_path)`` and atomically move the result to ``path``."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        write(tmp)
    return Path(path)
