"""``galprism logprob``: log-probability of candidate source images under a prior."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click

from ._threads import device_option

__all__ = ["logprob"]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument(
    "candidates", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path)
)
@click.option(
    "--prior",
    "prior_spec",
    default="default",
    show_default=True,
    help="Built-in prior name or prior folder.",
)
@click.option("--source", required=True, help="Source of the prior to score against (e.g. galaxy).")
@click.option(
    "--hdu", default=None, help="HDU holding the image(s) (default: the first with data)."
)
@click.option(
    "--zeropoint",
    type=float,
    help="AB zero point of the candidates (default: header MAGZERO, else the prior's).",
)
@click.option(
    "--steps",
    type=int,
    default=128,
    show_default=True,
    help="Heun steps of the probability-flow ODE.",
)
@click.option(
    "--exact", is_flag=True, help="Exact Jacobian trace (one VJP per pixel: small images only)."
)
@click.option(
    "--probes", type=int, default=8, show_default=True, help="Hutchinson probes per evaluation."
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the Hutchinson probes."
)
@device_option()
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON line per candidate image on stdout."
)
def logprob(candidates: tuple[Path, ...], prior_spec: str, source: str, **kw: Any) -> None:
    """Print log p(CANDIDATE) in nats under SOURCE's prior (probability-flow ODE).

    A candidate FITS HDU holds one image (H, W), a band cube (C, H, W) matching the prior,
    or a stack of images (N, [C,] H, W). Values are in the candidate's flux units; the
    density is per data unit (it changes by -D log k when the data are scaled by k).
    """
    import numpy as np
    import torch

    from ..io.fitsfile import hdu_array, read_hdulist
    from ..priorset import load_priorset
    from .separate import device_from_flag

    device = device_from_flag(kw["device"])
    prior = load_priorset(prior_spec)
    for path in candidates:
        hdul = read_hdulist(str(path))
        hdu = (
            hdul[kw["hdu"]]
            if kw["hdu"] is not None
            else next((h for h in hdul if h.data is not None), None)
        )
        if hdu is None or hdu.data is None:
            raise click.ClickException(f"{path}: no image data")
        data = np.asarray(hdu_array(hdu.data, f"{path}"), dtype=np.float64)
        shape = tuple(prior.frame.shape)
        if data.shape == shape[1:] or data.shape == shape:
            data = data.reshape(1, *shape)
        elif data.shape[1:] == shape[1:] and shape[0] == 1:
            data = data[:, None]
        elif data.shape[1:] != shape:
            raise click.ClickException(
                f"{path}: image of shape {data.shape} does not match prior shape {shape}"
            )
        zp = (
            kw["zeropoint"]
            if kw["zeropoint"] is not None
            else hdu.header.get("MAGZERO", prior.frame.zeropoint)
        )
        factor = (
            1.0
            if zp is None or prior.frame.zeropoint is None
            else 10 ** (-0.4 * (float(zp) - float(prior.frame.zeropoint)))
        )
        images = torch.from_numpy(data * factor)
        lp = prior.log_prob(
            source,
            images,
            steps=kw["steps"],
            exact=kw["exact"],
            probes=kw["probes"],
            generator=torch.Generator().manual_seed(kw["seed"]),
            device=device,
        )
        # Back to the candidate's own units: p_input(x) = p_prior(k x) k^D.
        lp = lp + images[0].numel() * math.log(factor)
        for i, value in enumerate(lp.tolist()):
            rec = {
                "file": str(path),
                "index": i,
                "source": source,
                "prior": prior.name,
                "log_prob": value,
                "log_prob_per_pixel": value / images[0].numel(),
                "steps": kw["steps"],
                "trace": "exact" if kw["exact"] else f"hutchinson({kw['probes']})",
                "seed": kw["seed"],
            }
            click.echo(
                json.dumps(rec)
                if kw["as_json"]
                else f"{path}[{i}] {source}: log p = {value:.3f} nats"
            )
