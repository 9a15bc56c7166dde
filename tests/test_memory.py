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


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _glibc():
    libc_name = ctypes.util.find_library("c") or ""
    if not (sys.platform.startswith("linux") and "libc.so" in libc_name):
        pytest.skip("not glibc: the helpers are documented no-ops here")
    libc = ctypes.CDLL(libc_name)
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc older than 2.33 has no mallinfo2 to observe mapped blocks")
    libc.mallinfo2.restype = _Mallinfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    return libc


def test_large_blocks_stay_mapped_after_one_was_freed(monkeypatch):
    """glibc raises its mmap threshold to the size of each mapped block freed, after which
    blocks of that size come from the heap and fragment it: a long separate run's peak
    memory then grew with the number of inputs. With the threshold fixed, a 4 MiB block
    allocated after another one was freed must still get its own mapping."""
    libc = _glibc()
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert _memory.keep_large_allocations_mapped()
    size = 4 * 2**20
    first = libc.malloc(size)
    libc.free(first)  # glibc's dynamic rule would now raise the threshold past 4 MiB
    before = libc.mallinfo2().hblkhd
    second = libc.malloc(size)
    try:
        mapped = libc.mallinfo2().hblkhd - before
    finally:
        libc.free(second)
    assert mapped >= size, f"a {size}-byte block came from the heap ({mapped} bytes mapped)"


def test_threshold_from_the_environment_is_left_alone(monkeypatch):
    """A user who tunes glibc with MALLOC_MMAP_THRESHOLD_ must keep that setting: the run
    must not overwrite it with its own."""
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert _memory.keep_large_allocations_mapped() is False
