"""Realistic survey cutouts made from real HST COSMOS galaxies (``galprism simulate``).

Python entry points:

* :class:`SimulationConfig` describes a batch; :class:`Simulator` prepares it once and
  makes any cutout with :meth:`Simulator.cutout` (in memory, e.g. for EM training);
* :func:`simulate_batch` writes a batch as FITS (``galprism separate``'s input convention,
  truth in separate files) and HDF5;
* :class:`ScenesConfig`, :class:`SceneSimulator` and :func:`simulate_scenes` do the same
  for fields of several galaxies and stars with per-source truth (``--view scenes``);
* :class:`CosmosCatalog` opens any GalSim ``RealGalaxyCatalog`` with its train/test
  split (drawn from a seed, or :func:`read_split_file`); :func:`measure_hsc_noise` gives
  the noise of the real HSC images.
* ``bands=("g", "r", "i", "z", "y")`` in either configuration simulates several HSC bands at
  once (catalogue colours, per-band real PSFs and noise; :mod:`galprism.simulate.bands`).

See ``docs/simulate.md`` for the model and its numbers.
"""

from .batch import BatchResult, simulate_batch
from .cosmos import CosmosCatalog, read_split_file
from .fields import SceneField, ScenesConfig, SceneSimulator
from .fields_batch import simulate_scenes
from .noise import measure_hsc_noise
from .scene import SceneConfig
from .simulator import Cutout, SimulationConfig, Simulator

__all__ = [
    "BatchResult",
    "CosmosCatalog",
    "Cutout",
    "SceneConfig",
    "SceneField",
    "SceneSimulator",
    "ScenesConfig",
    "SimulationConfig",
    "Simulator",
    "measure_hsc_noise",
    "read_split_file",
    "simulate_batch",
    "simulate_scenes",
]
