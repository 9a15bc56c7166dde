"""Input lists for batch runs: stdin lists, shards, per-cutout seeds, output names.

Everything that decides *which* job handles a cutout, and with which random seed, depends
only on the cutout's file name (its basename), never on its position in the list, so a
run gives identical files however the list is ordered, split or resumed:

* shard: input ``p`` belongs to shard ``I`` of ``N`` when
  ``int(sha256(basename(p))[:16], 16) % N == I``;
* seed: ``int(sha256(f"{seed}:{basename(p)}")[:16], 16) >> 1`` (63 bits, so that it
  fits a signed FITS integer and ``torch.Generator.manual_seed``).

Two inputs with the same basename would write the same output file; hashing the basename
puts them in the same shard, where the second is reported as a duplicate.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from ..errors import ConfigError
from .read import output_stem

__all__ = [
    "OUTPUT_SUFFIX",
    "cutout_seed",
    "derive_seed",
    "expand_inputs",
    "in_shard",
    "parse_shard",
    "shard_from_env",
    "output_path",
]

OUTPUT_SUFFIX = ".galprism.fits"


def _digest(text: str) -> int:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:16], 16)


def derive_seed(seed: int, name: str) -> int:
    """A 63-bit seed from a run seed and a name: ``sha256(f"{seed}:{name}")``."""
    return _digest(f"{int(seed)}:{name}") >> 1


def cutout_seed(seed: int, path: str | os.PathLike[str]) -> int:
    """Seed of one cutout: :func:`derive_seed` of the run seed and the file's basename."""
    return derive_seed(seed, Path(os.fspath(path)).name)


def in_shard(path: str | os.PathLike[str], index: int, count: int) -> bool:
    """Whether ``path`` belongs to shard ``index`` (0-based) of ``count``."""
    return _digest(Path(os.fspath(path)).name) % count == index


def parse_shard(text: str) -> tuple[int, int]:
    """Parse a shard ``I/N`` (``0 <= I < N``).

    Raises
    ------
    ConfigError
        If the text is not two integers with ``0 <= I < N``.
    """
    try:
        i_text, n_text = text.split("/")
        index, count = int(i_text), int(n_text)
    except ValueError as exc:
        raise ConfigError(f"shard {text!r}: expected I/N with integers, e.g. 0/8") from exc
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"shard {text!r}: need 0 <= I < N")
    return index, count


def shard_from_env(env: Mapping[str, str]) -> tuple[int, int] | None:
    """Shard of a SLURM array task, or None outside one.

    ``I = SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN`` (min 0 when unset) and
    ``N = SLURM_ARRAY_TASK_COUNT``, so ``--array=1-10`` and ``--array=0-9`` both work.

    Raises
    ------
    ConfigError
        If the variables are set but inconsistent (e.g. a stepped array ``0-9:2``).
    """
    task, count = env.get("SLURM_ARRAY_TASK_ID"), env.get("SLURM_ARRAY_TASK_COUNT")
    if task is None or count is None:
        return None
    try:
        index = int(task) - int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        n = int(count)
    except ValueError as exc:
        raise ConfigError(
            f"SLURM_ARRAY_TASK_ID={task!r}/SLURM_ARRAY_TASK_COUNT={count!r} are not integers"
        ) from exc
    if n < 1 or not 0 <= index < n:
        raise ConfigError(
            f"SLURM array task {task} (min {env.get('SLURM_ARRAY_TASK_MIN', '0')}) "
            f"is outside 0..{n - 1}"
        )
    return index, n


def expand_inputs(args: Iterable[str], stdin: Iterable[str] | None = None) -> Iterator[str]:
    """Input paths from the command line, where ``-`` stands for one path per stdin line.

    Blank lines and lines starting with ``#`` in the stdin list are ignored; surrounding
    whitespace is stripped.

    Raises
    ------
    ConfigError
        If ``-`` is given but ``stdin`` is None.
    """
    for arg in args:
        if arg == "-":
            if stdin is None:
                raise ConfigError("'-' given but there is no standard input to read paths from")
            for line in stdin:
                line = line.strip()
                if line and not line.startswith("#"):
                    yield line
        else:
            yield arg


def output_path(path: str | os.PathLike[str], output_dir: str | os.PathLike[str]) -> Path:
    """``<output_dir>/<stem>.galprism.fits`` for input ``path``."""
    return Path(os.fspath(output_dir)) / f"{output_stem(path)}{OUTPUT_SUFFIX}"
