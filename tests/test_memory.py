"""Returning freed heap memory between the batches of a run."""

import ctypes.util
import sys

import pytest

from galprism import _memory


def test_trim_freed_memory_finds_glibc_malloc_trim():
    """On Linux with glibc the helper must find malloc_trim; if it did not, a long separate
    run would silently keep every freed page and its resident memory would grow."""
    libc = ctypes.util.find_library("c") or ""
    if not (sys.platform.startswith("linux") and "libc.so" in libc):
        pytest.skip("not glibc: the helper is a documented no-op here")
    try:
        ctypes.CDLL(libc).gnu_get_libc_version  # noqa: B018 - glibc-only symbol
    except AttributeError:
        pytest.skip("not glibc: the helper is a documented no-op here")
    assert _memory._TRIM is not None
    assert isinstance(_memory.trim_freed_memory(), bool)
