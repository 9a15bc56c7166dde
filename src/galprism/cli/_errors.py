"""Flag hints that the command line adds to the library's errors.

Library errors name the file and the problem but no command-line flag; a command knows
which of its options would resolve the problem and appends that to the one-line message.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..errors import ConfigError, OutputExistsError, UsageError

OVERWRITE_HINT = "pass --overwrite to replace it"


@contextlib.contextmanager
def overwrite_hint(hint: str = OVERWRITE_HINT) -> Iterator[None]:
    """Re-raise :class:`~galprism.errors.OutputExistsError` with ``hint`` appended.

    Parameters
    ----------
    hint
        What the user can pass to replace the output, in flag names.

    Raises
    ------
    OutputExistsError
        The library's error, its message followed by ``; <hint>``.
    """
    try:
        yield
    except OutputExistsError as exc:
        raise OutputExistsError(f"{exc}; {hint}") from exc


@contextlib.contextmanager
def as_usage_error(flag: str) -> Iterator[None]:
    """Re-raise a :class:`~galprism.errors.ConfigError` as a usage error about ``flag``.

    For library calls that only check a command-line value (a shard, a support), so that
    a bad value exits with status 2 and a message that names the flag.

    Parameters
    ----------
    flag
        The flag whose value was checked, e.g. ``"--shard"``.

    Raises
    ------
    UsageError
        ``"<flag>: <library message>"``.
    """
    try:
        yield
    except ConfigError as exc:
        raise UsageError(f"{flag}: {exc}") from exc
