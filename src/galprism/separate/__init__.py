"""The ``galprism separate`` pipeline: cutouts in, posterior sample cubes out.

Stages, for each input path:

1. decide the output name; skip it (``--skip-existing``) or refuse to clobber it;
2. read the cutout (:func:`galprism.io.read.read_cutout`), crop or pad it to the prior's
   size around the requested center;
3. group it with cutouts of the same shape; when a group holds ``batch_size`` cutouts,
   stack them (:func:`galprism.observation.stack_observations`), call the prior's
   ``separate`` with one ``torch.Generator`` per cutout, convert the samples back to each
   input's flux units and write each output file atomically;
4. report one :class:`InputRecord` per input.

Nothing is kept once a batch is written, so memory stays flat over any number of inputs.
A failure of one input (unreadable file, bad PSF, existing output...) is recorded and the
run goes on; a failure of a whole batch in the sampler is retried cutout by cutout, so
that one bad cutout cannot take its batch-mates down with it.

The prior is any object with the :class:`Separator` interface: the built-in
:class:`galprism.priorset.PriorSet` or, in tests, a stand-in; it declares what it can do
in its :class:`Capabilities`.

Modules: :mod:`.config` (:class:`SeparateConfig`, :func:`resolve_device`), :mod:`.precision`
(bf16/TF32 networks), :mod:`.prior`
(:class:`Separator`, :class:`Capabilities`, supports), :mod:`.inference`
(:func:`separate_observations`, :class:`SeparationResult`), :mod:`.output` (header
cards, HDU list, atomic write) and :mod:`.runner` (:func:`run_separate` and its records).
"""

from __future__ import annotations

from ..diffusion.samplers import METHODS as SAMPLERS
from ..diffusion.samplers import SamplerConfig
from .config import PRECISIONS, SeparateConfig, resolve_device, resolve_precision
from .inference import (
    FREEFORM_SALT,
    SeparationResult,
    fit_to_prior,
    prepare_observation,
    separate_observations,
)
from .output import build_hdulist, write_result
from .prior import Capabilities, Separator, effective_support, prior_zeropoint
from .runner import InputRecord, RunSummary, RunWarnings, run_separate

__all__ = [
    "FREEFORM_SALT",
    "SAMPLERS",
    "SamplerConfig",
    "Capabilities",
    "Separator",
    "SeparateConfig",
    "SeparationResult",
    "InputRecord",
    "RunSummary",
    "RunWarnings",
    "build_hdulist",
    "fit_to_prior",
    "prepare_observation",
    "separate_observations",
    "effective_support",
    "write_result",
    "run_separate",
    "resolve_device",
    "resolve_precision",
    "PRECISIONS",
    "prior_zeropoint",
]
