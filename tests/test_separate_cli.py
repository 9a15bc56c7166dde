"""``galprism separate`` on the command line: JSON lines, exit statuses, stdin lists, SLURM
shards."""

from __future__ import annotations

from pathlib import Path

from astropy.io import fits
from fits_factory import FakePrior, make_cutout, run_cli


def test_json_lines_and_exit_zero(tmp_path, capsys, monkeypatch):
    """--json prints one parseable line per input with status, output, seconds, seed and flux
    stats."""
    paths = [
        make_cutout(tmp_path / f"c{i}.fits", seed=i, header={"MAGZERO": 27.0}) for i in range(3)
    ]
    code, recs, _, err = run_cli(
        ["separate", *paths, "--output-dir", tmp_path / "o", "--json", "-n", "4"],
        capsys,
        monkeypatch,
        prior=FakePrior(),
    )
    assert code == 0, err
    assert sorted(Path(r["input"]).name for r in recs) == ["c0.fits", "c1.fits", "c2.fits"]
    for r in recs:
        assert (
            r["status"] == "ok"
            and Path(r["output"]).exists()
            and r["seconds"] >= 0
            and isinstance(r["seed"], int)
        )
        assert set(r["sources"]) == {"galaxy", "background"}
        assert (
            len(r["sources"]["galaxy"]["flux_mean"]) == 1
            and r["sources"]["galaxy"]["flux_std"][0] > 0
        )
    assert fits.getval(tmp_path / "o" / "c0.galprism.fits", "NSAMPLE") == 4


def test_single_output_file_and_history(tmp_path, capsys, monkeypatch):
    """-o FILE names the output of a single input; the command line is kept in HISTORY."""
    p = make_cutout(tmp_path / "c.fits")
    out = tmp_path / "result.fits"
    code, _, _, err = run_cli(
        ["separate", p, "-o", out, "--seed", "7"], capsys, monkeypatch, prior=FakePrior()
    )
    assert code == 0, err
    hist = " ".join(str(h) for h in fits.getheader(out)["HISTORY"])
    assert "--seed 7" in hist and "separate" in hist
    assert fits.getval(out, "RUNSEED") == 7


def test_usage_errors_exit_2(tmp_path, capsys, monkeypatch):
    """Usage mistakes exit with status 2 and one line on stderr, before any work."""
    p = make_cutout(tmp_path / "c.fits")
    q = make_cutout(tmp_path / "d.fits")
    cases = [
        ["separate", p, q, "-o", tmp_path / "x.fits"],
        ["separate", p, "--shard", "3/2"],
        ["separate", p, "--shard", "x"],
        ["separate", p, "--overwrite", "--skip-existing"],
        ["separate", p, "--center", "1"],
        ["separate", p, "-n", "0"],
        ["separate", p, "--freeform-bright", "bright"],
        ["separate", p, "--freeform-edge", "-3"],
        ["separate", p, "--freeform-residual", "0"],
        ["separate", "-"],
    ]
    for argv in cases:
        code, recs, _, err = run_cli(argv, capsys, monkeypatch, prior=FakePrior(), stdin="")
        assert code == 2, f"{argv[2:]} gave exit status {code}: {err}"
        assert recs == [] and len(err) >= 1, f"{argv[2:]}: {err}"
        if "--freeform-residual" in argv:
            assert err[-1].endswith(
                "--freeform-residual 0: expected a positive number or 'none'"
            ), err
    assert not list(Path.cwd().glob("c.galprism.fits")), "a usage error still wrote an output"


def test_stdin_list_and_comments(tmp_path, capsys, monkeypatch):
    """'-' reads one path per line from stdin; blank lines and # comments are ignored."""
    paths = [make_cutout(tmp_path / f"c{i}.fits", seed=i) for i in range(2)]
    text = f"# cutouts\n{paths[0]}\n\n  {paths[1]}  \n"
    code, recs, _, err = run_cli(
        ["separate", "-", "--output-dir", tmp_path / "o", "--json", "-q"],
        capsys,
        monkeypatch,
        prior=FakePrior(),
        stdin=text,
    )
    assert code == 0, err
    assert sorted(r["input"] for r in recs) == sorted(str(p) for p in paths)


def test_slurm_array_selects_a_shard(tmp_path, capsys, monkeypatch):
    """SLURM_ARRAY_TASK_ID/COUNT (offset by SLURM_ARRAY_TASK_MIN) split a list like --shard does."""
    paths = [make_cutout(tmp_path / f"c{i}.fits", seed=i) for i in range(8)]
    got = []
    for task in (1, 2, 3):
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(task))
        monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
        monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
        code, recs, _, err = run_cli(
            ["separate", *paths, "--output-dir", tmp_path / "o", "--json"],
            capsys,
            monkeypatch,
            prior=FakePrior(),
        )
        assert code == 0, err
        monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
        code2, recs2, _, _ = run_cli(
            [
                "separate",
                *paths,
                "--output-dir",
                tmp_path / "p",
                "--json",
                "--shard",
                f"{task - 1}/3",
            ],
            capsys,
            monkeypatch,
            prior=FakePrior(),
        )
        assert sorted(r["input"] for r in recs) == sorted(r["input"] for r in recs2), (
            "SLURM shard differs from --shard"
        )
        got += [r["input"] for r in recs]
    assert sorted(got) == sorted(str(p) for p in paths), (
        "SLURM array tasks do not cover the list exactly once"
    )
