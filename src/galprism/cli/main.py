"""Entry point of the ``galprism`` command.

Sub-commands live in their own modules and are imported only when invoked, so that
``galprism --help`` and shell completion do not pay for importing torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from .. import __version__
from ..errors import GalprismError

#: command name -> (module, attribute, one-line help shown in ``galprism --help``)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "separate": (
        "galprism.cli.separate",
        "separate",
        "Sample the posterior of each source for FITS cutouts.",
    ),
    "fit": ("galprism.cli.fit", "fit", "Learn priors from observations by EM (diffusion or asvd)."),
    "simulate": (
        "galprism.cli.simulate",
        "simulate",
        "Make realistic cutouts from real HST COSMOS galaxies.",
    ),
    "priors": ("galprism.cli.priors", "priors", "List the built-in priors."),
    "sample": ("galprism.cli.sample", "sample", "Draw prior samples of a source as a FITS cube."),
    "logprob": (
        "galprism.cli.logprob",
        "logprob",
        "Log-probability of a candidate image under a source prior.",
    ),
    "evaluate": (
        "galprism.cli.evaluate",
        "evaluate",
        "Compare deblenders on a simulated test set with truth.",
    ),
}


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, (mod, _, _) in COMMANDS.items() if importlib.util.find_spec(mod)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[cmd_name]
        if importlib.util.find_spec(module) is None:
            return None
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="galprism")
def cli() -> None:
    """galprism: deblend astronomical images with priors learned from observations."""


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; galprism errors become one line on stderr and their exit status."""
    try:
        cli.main(args=argv, prog_name="galprism", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("galprism: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except GalprismError as exc:
        click.echo(f"galprism: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    sys.exit(0)
