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


def test_shard_and_input_list_errors_are_flag_free_config_errors():
    """The library's shard and input-list checks raise ConfigError naming the value but no
    flag. Fails if they raise a usage error themselves or speak in command-line flags."""
    from galprism.io.inputs import expand_inputs, parse_shard, shard_from_env

    env = {"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_COUNT": "3"}
    checks = [
        (lambda: parse_shard("3/2"), "'3/2'"),
        (lambda: parse_shard("x"), "'x'"),
        (lambda: shard_from_env(env), "SLURM array task 12"),
        (lambda: list(expand_inputs(["-"], None)), "standard input"),
    ]
    for call, names in checks:
        with pytest.raises(ConfigError) as exc:
            call()
        assert not isinstance(exc.value, UsageError), str(exc.value)
        assert names in str(exc.value) and "--" not in str(exc.value), str(exc.value)


def test_separate_names_the_flags_for_bad_shards(tmp_path, capsys, monkeypatch):
    """`galprism separate` maps the library's shard errors to exit status 2 with the flag
    named: --shard for a bad value, the --array / --shard remedy for a bad SLURM array.
    Fails if the exit status or the flag hint is lost."""
    from fits_factory import FakePrior, make_cutout, run_cli

    p = make_cutout(tmp_path / "c.fits")
    code, _, _, err = run_cli(["separate", p, "--shard", "3/2"], capsys, monkeypatch)
    assert code == 2 and err[-1].endswith("--shard: shard '3/2': need 0 <= I < N"), err
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "12")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    code, _, _, err = run_cli(["separate", p], capsys, monkeypatch, prior=FakePrior())
    assert code == 2, err
    assert err[-1].endswith(
        "SLURM array task 12 (min 0) is outside 0..2; "
        "use a contiguous --array range or pass --shard I/N"
    ), err


def test_existing_output_record_names_the_flags_alike_on_stderr_and_json(
    tmp_path, capsys, monkeypatch
):
    """An output refused because it exists gets '--overwrite ... or --skip-existing' appended
    by the command, and the JSON record's error is the very text of the stderr line. Fails
    if the hint is missing, doubled, or the two channels disagree."""
    from fits_factory import FakePrior, make_cutout, run_cli

    p = make_cutout(tmp_path / "c.fits")
    out = tmp_path / "o"
    out.mkdir()
    (out / "c.galprism.fits").write_bytes(b"old")
    argv = ["separate", p, "--output-dir", out, "--json"]
    code, recs, _, err = run_cli(argv, capsys, monkeypatch, prior=FakePrior())
    assert code == 1 and len(recs) == 1, err
    text = recs[0]["error"]
    assert text == (
        f"{p}: {out / 'c.galprism.fits'}: output exists and overwriting is not allowed; "
        f"{OVERWRITE_HINT} or --skip-existing"
    ), text
    assert f"galprism: error: {text}" in err, err
    assert (out / "c.galprism.fits").read_bytes() == b"old"
