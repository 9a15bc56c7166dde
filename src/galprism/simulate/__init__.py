"""Realistic survey cutouts made from real HST COSMOS galaxies (``galprism simulate``).

Python entry points:

* :class:`SimulationConfig` describes a batch; :class:`Simulator` prepares it once and
  makes any cutout with :meth:`Simulator.cutout` (in memory, e.g. for EM training);
* :func:`simulate_batch` writes a batch as FITS (``galprism separate``'s input convention,
  truth in separate files) and HDF5;
* :func:`load_split` gives the train/test IDENTs; :func:`measure_hsc_noise` the noise of
  the real HSC images.

See ``docs/simulate.md`` for the model and its numbers.
"""

from .batch import BatchResult, simulate_batch
from .cosmos import CosmosCatalog, load_split
from .noise import measure_hsc_noise
from .scene import SceneConfig
from .simulator import Cutout, SimulationConfig, Simulator

__all__ = [
    "BatchResult",
    "CosmosCatalog",
    "Cutout",
    "SceneConfig",
    "SimulationConfig",
    "Simulator",
    "load_split",
    "measure_hsc_noise",
    "simulate_batch",
]
