"""Baseline separation methods the paper compares DDPRISM with.

* :class:`~galprism.baselines.pcpca.PCPCA`: probabilistic contrastive PCA (Li, Jones &
  Engelhardt 2020), the Grassy MNIST baseline.
"""

from .pcpca import PCPCA

__all__ = ["PCPCA"]
