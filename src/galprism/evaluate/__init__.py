"""Side-by-side evaluation of deblenders on simulated test cutouts with truth (``galprism
evaluate``).

* :mod:`.testset`: the test set (observations read as ``galprism separate`` reads them,
  truth files), made from a seed with :func:`make_testset`;
* :mod:`.methods`: one adapter per method (galprism priors, adversarial SVD, photutils;
  scarlet2 in :mod:`.scarlet`), each returning central-galaxy estimates;
* :mod:`.measures` and :mod:`.calibration`: per-cutout measures and posterior calibration;
* :mod:`.run`: every method on every cutout; :mod:`.report` and :mod:`.figures`: the report;
* :mod:`.real` and :mod:`.multiview`: the HSC cutout against its HST truth, and both views at once;
* :mod:`.pipeline`: all of it as one call (what the command runs).

See docs/evaluation.md.
"""

from .measures import MEASURES, adaptive_moments, blendedness, compare
from .methods import ASVDMethod, Estimate, GalprismMethod, PhotutilsMethod
from .pipeline import EvaluateConfig, run_evaluation
from .run import EvalResult, evaluate_methods
from .testset import EvalCutout, load_testset, make_testset

__all__ = [
    "MEASURES",
    "ASVDMethod",
    "EvalCutout",
    "EvalResult",
    "Estimate",
    "EvaluateConfig",
    "GalprismMethod",
    "PhotutilsMethod",
    "adaptive_moments",
    "blendedness",
    "compare",
    "evaluate_methods",
    "load_testset",
    "make_testset",
    "run_evaluation",
]
