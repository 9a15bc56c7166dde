"""galprism: separate overlapping sources in astronomical images.

Diffusion-model priors learned per source from noisy, masked, PSF-blurred survey cutouts
by expectation-maximisation (DDPRISM), joint posterior sampling (MMPS), and the fast
adversarial-SVD separation.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("galprism")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
