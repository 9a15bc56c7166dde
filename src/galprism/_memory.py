"""Return freed heap memory to the operating system between batches.

glibc keeps memory that a batch freed (the networks' activations, the FITS buffers) in its
arenas for reuse, so a long run's resident memory grows by fragmentation although nothing
leaks. ``malloc_trim(0)`` hands those free pages back. Other C libraries have no such call
(or return memory themselves), so there the helper does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["trim_freed_memory"]


def _load_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # musl and other libcs have no malloc_trim
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _load_trim()


def trim_freed_memory() -> bool:
    """Release the C heap's free pages to the system (glibc's ``malloc_trim(0)``).

    Returns
    -------
    bool
        Whether memory was released; False where the C library has no ``malloc_trim``.
    """
    return bool(_TRIM(0)) if _TRIM is not None else False
