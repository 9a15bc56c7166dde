"""``galprism priors``: the built-in priors (or given prior folders) and what they model.

Described from each folder's ``prior.json`` alone: listing never imports torch or loads
network weights, so it answers at once.
"""

from __future__ import annotations

import json
from typing import Any

import click

__all__ = ["priors", "describe_prior"]


def _name_of(item: Any) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and "name" in item:
        return str(item["name"])
    return str(getattr(item, "name", item))


def describe_prior(prior: Any) -> dict[str, Any]:
    """The prior's own ``describe()`` plus the fields every listing shows."""
    info = dict(prior.describe()) if hasattr(prior, "describe") else {}
    info.setdefault("name", prior.name)
    info.setdefault("method", prior.method)
    info.setdefault("sources", list(prior.sources))
    frame = prior.frame
    info.setdefault("pixel_scale", frame.pixel_scale)
    info.setdefault("shape", list(frame.shape))
    info.setdefault("zeropoint", frame.zeropoint)
    info.setdefault("bunit", frame.bunit)
    info.setdefault("support", dict(prior.support))
    info.setdefault("sha256", prior.sha256)
    return info


def _fmt(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return (
            ", ".join(_fmt(v) for v in value)
            if not all(isinstance(v, int) for v in value)
            else "x".join(map(str, value))
        )
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) or "-"
    return "-" if value is None else str(value)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("names", nargs=-1)
@click.option(
    "--json", "as_json", is_flag=True, help='Print one JSON object {"priors": [...]} on stdout.'
)
def priors(names: tuple[str, ...], as_json: bool) -> None:
    """List the built-in priors: sources, pixel scale, size and training data.

    NAMES may name built-in priors or prior folders to describe instead of the built-in list.
    """
    from ..priors.catalog import describe_folder, list_builtin_priors

    wanted = list(names) or [_name_of(item) for item in list_builtin_priors()]
    entries = [describe_folder(name) for name in wanted]
    if as_json:
        click.echo(json.dumps({"priors": entries}, default=str))
        return
    if not entries:
        click.echo("no built-in priors are installed", err=True)
        return
    for info in entries:
        click.echo(f"{info['name']}  ({info['method']})")
        shown = ("sources", "pixel_scale", "shape", "zeropoint", "bunit", "support")
        for key in shown:
            click.echo(f"  {key.replace('_', ' '):<13} {_fmt(info.get(key))}")
        for key, value in info.items():
            if key not in (*shown, "name", "method", "sha256"):
                click.echo(f"  {key.replace('_', ' '):<13} {_fmt(value)}")
        click.echo(f"  {'sha256':<13} {info['sha256']}")
