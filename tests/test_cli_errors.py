"""The command line adds flag hints to the library's flag-free errors."""

from __future__ import annotations

import pytest

from galprism.cli._errors import OVERWRITE_HINT, as_usage_error, overwrite_hint
from galprism.errors import ConfigError, InputError, OutputExistsError, UsageError
from galprism.io.inputs import expand_inputs, parse_shard, shard_from_env
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


@pytest.mark.parametrize(
    ("text", "words"),
    [("3", "expected I/N"), ("a/b", "expected I/N"), ("2/2", "0 <= I < N"), ("0/0", "0 <= I")],
)
def test_bad_shard_is_a_config_error_the_cli_turns_into_a_usage_error(text, words):
    """parse_shard names no flag and raises ConfigError; as_usage_error makes it exit-2
    UsageError naming --shard. Fails if a bad shard is accepted or the mapping is lost."""
    with pytest.raises(ConfigError, match=words) as lib:
        parse_shard(text)
    assert "--" not in str(lib.value)
    with pytest.raises(UsageError) as cli, as_usage_error("--shard"):
        parse_shard(text)
    assert cli.value.exit_code == 2 and str(cli.value) == f"--shard: {lib.value}"
    assert parse_shard("1/4") == (1, 4)


def test_inconsistent_slurm_array_and_missing_stdin_are_config_errors():
    """A stepped SLURM array and '-' without stdin are refused by the library with flag-free
    ConfigErrors (the CLI decides the exit status)."""
    env = {"SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_COUNT": "5"}
    with pytest.raises(ConfigError, match="outside 0..4") as exc:
        shard_from_env(env)
    assert "--shard" not in str(exc.value)
    assert shard_from_env({**env, "SLURM_ARRAY_TASK_MIN": "4"}) == (4, 5)
    with pytest.raises(ConfigError, match="no standard input"):
        list(expand_inputs(["-"], None))
