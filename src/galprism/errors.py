"""Exception types shared by the library and the command line.

Every error galprism raises on purpose derives from :class:`GalprismError` and carries a
one-line message that names the offending object (file, HDU, operator, prior) and the
problem. The CLI prints ``str(error)`` on one line and exits with ``exit_code``.
"""

from __future__ import annotations


class GalprismError(Exception):
    """Base class of galprism's own errors: one line, naming the object and the problem."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        # Messages are printed as a single line by the CLI: fold any newline a caller
        # might have let through so that log parsers see one record per error.
        super().__init__(" ".join(str(message).split()))


class InputError(GalprismError, ValueError):
    """Bad input data: shapes, non-finite values, unusable FITS files, PSFs, masks."""


class ShapeError(InputError):
    """Arrays whose shapes do not match each other or an operator."""


class PSFError(InputError):
    """A point-spread function that is not odd-sized, centered, finite or normalisable."""


class CheckpointError(GalprismError):
    """A prior or run checkpoint that is corrupted, from another version, or unsafe."""


class ConfigError(GalprismError, ValueError):
    """An inconsistent configuration (views, sources, run folders, options)."""


class OutputExistsError(GalprismError):
    """An output that already exists where replacing it was not allowed.

    The message names the output and says only that it exists: which option replaces it
    is the command line's to say, so each command appends its own hint.
    """


class UsageError(GalprismError):
    """Wrong use of the command line; exit status 2 like click's own usage errors."""

    exit_code = 2
