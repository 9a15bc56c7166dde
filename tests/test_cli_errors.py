"""The command line adds flag hints to the library's flag-free errors."""

from __future__ import annotations

import pytest

from galprism.cli._errors import OVERWRITE_HINT, as_usage_error, overwrite_hint
from galprism.errors import ConfigError, InputError, OutputExistsError, UsageError
from galprism.io.write import write_atomic


def test_overwrite_hint_appends_the_flag_to_output_exists_only(tmp_path):
    """An existing output refused by the library gets '--overwrite' appended by the CLI
    wrapper, keeping the file name; other errors pass through unchanged. Fails if the
    library names the flag itself or the wrapper swallows or rewrites other errors."""
    from astropy.io import fits

    out = tmp_path / "o.fits"
    hdul = fits.HDUList([fits.PrimaryHDU()])
    write_atomic(hdul, out)
    with pytest.raises(OutputExistsError) as lib:
        write_atomic(hdul, out)
    assert "--" not in str(lib.value) and str(out) in str(lib.value), str(lib.value)
    with pytest.raises(OutputExistsError) as cli, overwrite_hint():
        write_atomic(hdul, out)
    assert str(cli.value) == f"{lib.value}; {OVERWRITE_HINT}"
    with pytest.raises(InputError, match="^bad$"), overwrite_hint():
        raise InputError("bad")


def test_as_usage_error_names_the_flag_and_exits_2():
    """A library ConfigError about a command-line value becomes an exit-2 UsageError
    prefixed with the flag; other errors pass through. Fails if the flag or the library's
    message is lost, or if the exit status is not the usage one."""
    with pytest.raises(UsageError) as cli, as_usage_error("--source"):
        raise ConfigError("prior 'p' has no source 'star'")
    assert cli.value.exit_code == 2
    assert str(cli.value) == "--source: prior 'p' has no source 'star'"
    with pytest.raises(InputError, match="^bad$"), as_usage_error("--source"):
        raise InputError("bad")
