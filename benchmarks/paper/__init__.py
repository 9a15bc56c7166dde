"""The paper's reference problems and baseline, for the benchmarks and the tests.

Not part of the installed package: the benchmark scripts import it as ``paper`` (their
folder is on ``sys.path`` when they run), the tests through ``tests/conftest.py``.

* :mod:`paper.manifold`: the random 1-D manifold problem (contrastive and mixed views);
* :mod:`paper.grassy`: grassy digits, the contrastive image problem;
* :mod:`paper.pcpca`: probabilistic contrastive PCA, the Grassy MNIST baseline.
"""
