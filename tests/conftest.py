"""Shared test settings: thread pools, the paper's reference problems, and the real data.

* Small thread pools keep CI on 2 cores predictable.
* ``benchmarks/paper`` (the manifold and grassy-digits problems, PCPCA) is not part of the
  installed package; the ``benchmarks`` folder goes on ``sys.path`` so tests import it as
  ``paper``.
* The real data folder (``cosmos/``, ``hsc/``, ``multiview/``, ``images/``) is
  ``$GALPRISM_DATA_DIR`` or else ``shared/data`` beside the repository (the product never
  looks there; the tests may know the layout). When found, ``$GALPRISM_DATA_DIR`` is set to
  it for the run, as a user would, so library calls without a ``data_dir`` see it. Tests
  that need it take the ``shared_data`` fixture or carry the ``needs_data`` marker; both
  skip with :data:`NO_DATA_REASON` when it is absent.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.append(str(ROOT / "benchmarks"))

torch.set_num_threads(1)

DATA_ENV = "GALPRISM_DATA_DIR"
#: a file every complete data folder holds
_MARKER = Path("cosmos") / "real_galaxy_catalog_dev.fits"
NO_DATA_REASON = "real data folder (cosmos/, hsc/, multiview/, images/) not found in "
NO_DATA_REASON += f"${DATA_ENV} or ../shared/data beside the repository"


def _find_shared_data() -> Path | None:
    candidates = [Path(os.environ[DATA_ENV])] if os.environ.get(DATA_ENV) else []
    candidates.append(ROOT.parent / "shared" / "data")
    return next((c.resolve() for c in candidates if (c / _MARKER).is_file()), None)


SHARED_DATA = _find_shared_data()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"needs_data: skipped without the {DATA_ENV} folder")
    if SHARED_DATA is not None:
        os.environ[DATA_ENV] = str(SHARED_DATA)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if SHARED_DATA is not None:
        return
    skip = pytest.mark.skip(reason=NO_DATA_REASON)
    for item in items:
        if "needs_data" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder; skips the test when it is absent."""
    if SHARED_DATA is None:
        pytest.skip(NO_DATA_REASON)
    return SHARED_DATA
