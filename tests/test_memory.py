"""Returning freed heap memory between the batches of a run."""

import ctypes.util
import os
import subprocess
import sys
from pathlib import Path

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


_PROBE = """
import ctypes, ctypes.util, sys
from galprism import _memory

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd",
        "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
if not hasattr(libc, "mallinfo2"):
    print("no-mallinfo2")
    sys.exit()
libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
fixed = sys.argv[1] == "fixed" and _memory.keep_large_allocations_mapped()
size = 4 * 2**20
libc.free(libc.malloc(size))  # glibc's own rule now raises the threshold past 4 MiB
before = libc.mallinfo2().hblkhd
block = libc.malloc(size)
print(fixed, libc.mallinfo2().hblkhd - before)
libc.free(block)
"""


def _probe(mode: str) -> tuple[str, int]:
    """Run the allocation probe in a fresh interpreter: glibc serves a request from free
    heap chunks before it considers a mapping, so a heap that earlier tests fragmented
    would hide what the threshold does."""
    libc = ctypes.util.find_library("c") or ""
    if not (sys.platform.startswith("linux") and "libc.so" in libc):
        pytest.skip("not glibc: the helpers are documented no-ops here")
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    src = str(Path(_memory.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, env=env, check=True
    ).stdout.split()
    if out == ["no-mallinfo2"]:
        pytest.skip("glibc older than 2.33 has no mallinfo2 to observe mapped blocks")
    return out[0], int(out[1])


def test_large_blocks_stay_mapped_after_one_was_freed():
    """glibc raises its mmap threshold to the size of each mapped block freed, after which
    blocks of that size come from the heap and fragment it: a long separate run's peak
    memory grew with the number of inputs. With the threshold fixed, a 4 MiB block
    allocated after another one was freed must still get its own mapping (and, as a
    check of the probe, without the fix it must not)."""
    fixed, mapped = _probe("fixed")
    assert fixed == "True"
    assert mapped >= 4 * 2**20, f"a 4 MiB block came from the heap ({mapped} bytes mapped)"
    _, mapped_default = _probe("default")
    assert mapped_default == 0, "glibc no longer raises its threshold: the probe proves nothing"


def test_threshold_from_the_environment_is_left_alone(monkeypatch):
    """A user who tunes glibc with MALLOC_MMAP_THRESHOLD_ must keep that setting: the run
    must not overwrite it with its own."""
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert _memory.keep_large_allocations_mapped() is False


@pytest.mark.parametrize("flat", [False, True])
def test_run_fixes_the_threshold_only_with_flat_memory(tmp_path, monkeypatch, flat):
    """flat_memory must reach glibc (else --flat-memory would silently do nothing), and a
    plain run must keep glibc's own rule, whose heap reuse is much faster for large
    tensors."""
    from fits_factory import FakePrior, make_cutout

    from galprism.separate import RunWarnings, SeparateConfig, run_separate, runner

    calls = []
    monkeypatch.setattr(runner, "keep_large_allocations_mapped", lambda: calls.append(1))
    path = make_cutout(tmp_path / "c.fits")
    config = SeparateConfig(output_dir=tmp_path / "out", flat_memory=flat)
    summary = run_separate([path], FakePrior(), config, warnings=RunWarnings(lambda m: None))
    assert summary.ok == 1
    assert calls == ([1] if flat else [])
