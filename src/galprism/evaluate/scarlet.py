"""scarlet2 as an optional method, run in its own Python environment.

scarlet2 (JAX) does not need to install beside galprism (torch): the cutouts and the
photutils detections go to :mod:`galprism.evaluate.scarlet_worker`, executed by the
Python interpreter given as ``python``, through an ``.npz`` file, and the central
source's model comes back the same way. Set up such an environment with::

    python -m venv scarlet-venv && scarlet-venv/bin/pip install scarlet2

scarlet2's model frame has its own (Gaussian, 0.7 px) model PSF, not galprism's truth
kernel, so only its PSF-convolved rendering is compared (like photutils).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError, GalprismError
from .methods import Estimate, PhotutilsMethod, Progress
from .testset import EvalCutout

__all__ = ["Scarlet2Method", "WORKER"]

WORKER = Path(__file__).with_name("scarlet_worker.py")


def _peaks(smooth_data: np.ndarray, labels: np.ndarray) -> list[tuple[int, float, float]]:
    """(label, y, x) of the brightest pixel of each segment."""
    out = []
    for lab in np.unique(labels[labels > 0]):
        yy, xx = np.nonzero(labels == lab)
        k = int(np.argmax(smooth_data[yy, xx]))
        out.append((int(lab), float(yy[k]), float(xx[k])))
    return out


def run_worker(
    python: str, worker: Path, inputs: dict[str, np.ndarray], timeout: float, what: str
) -> dict[str, np.ndarray]:
    """Run a scarlet2 worker script with another environment's ``python`` on ``inputs``.

    The worker reads ``inputs`` from an ``.npz`` file and writes its outputs to another;
    JAX runs on one CPU thread.

    Returns
    -------
    dict
        The worker's output arrays.

    Raises
    ------
    GalprismError
        Naming ``what``, if the worker runs past ``timeout`` seconds, fails or writes
        nothing.
    """
    with tempfile.TemporaryDirectory(prefix="galprism-scarlet2-") as tmp:
        inp, out = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(inp, **inputs)
        env = {
            **os.environ,
            "JAX_PLATFORMS": "cpu",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
        }
        try:
            proc = subprocess.run(
                [python, str(worker), str(inp), str(out)],
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise GalprismError(f"scarlet2: {what}: worker exceeded {timeout:.0f} s") from exc
        if proc.returncode != 0 or not out.is_file():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise GalprismError(f"scarlet2: {what}: worker failed (exit {proc.returncode}): {last}")
        with np.load(out, allow_pickle=False) as res:
            return {k: np.asarray(res[k]) for k in res.files}


class Scarlet2Method:
    """scarlet2 through :mod:`galprism.evaluate.scarlet_worker` in another environment.

    Parameters
    ----------
    python
        The scarlet2 environment's Python executable.
    max_iter
        Adam iterations per cutout.
    limit
        Run only the first ``limit`` cutouts (scarlet2 costs seconds per cutout).
    timeout
        Seconds allowed for the whole worker run.
    """

    probabilistic = False
    intrinsic = False

    def __init__(
        self,
        python: str | os.PathLike[str],
        *,
        max_iter: int = 200,
        limit: int | None = None,
        timeout: float = 3600.0,
        name: str = "scarlet2",
        label: str = "scarlet2",
    ) -> None:
        self.python = str(python)
        if not Path(self.python).is_file():
            raise ConfigError(f"scarlet2 Python {self.python}: not found")
        self.max_iter = int(max_iter)
        self.limit = limit
        self.timeout = float(timeout)
        self.name = name
        self.label = label
        self.detector = PhotutilsMethod()
        self.version = "unknown"

    def settings(self) -> dict[str, object]:
        return {
            "python": self.python,
            "max_iter": self.max_iter,
            "limit": self.limit,
            "scarlet2": self.version,
            "detection": self.detector.settings(),
        }

    def estimate(
        self, cutouts: Sequence[EvalCutout], progress: Progress | None = None
    ) -> list[Estimate]:
        cuts = list(cutouts)[: self.limit] if self.limit else list(cutouts)
        centers, central = [], []
        for i, c in enumerate(cuts):
            obs = c.observation
            data, labels = self.detector.segment(obs.image[0], obs.variance[0], obs.valid[0])
            chosen = self.detector.central_label(labels)
            peaks = _peaks(data, labels)
            central.append(-1)
            for lab, y, x in peaks:
                if lab == chosen:
                    central[-1] = len(centers)
                centers.append((i, y, x))
        res = run_worker(
            self.python,
            WORKER,
            {
                "images": np.stack([c.observation.image[0] for c in cuts]),
                "variances": np.stack([c.observation.variance[0] for c in cuts]),
                "valid": np.stack([c.observation.valid[0] for c in cuts]),
                "psfs": np.stack([c.observation.psf[0] for c in cuts]),
                "centers": np.array(centers, dtype=np.float64).reshape(-1, 3),
                "central": np.array(central, dtype=np.int64),
                "max_iter": np.array(self.max_iter),
            },
            self.timeout,
            f"{len(cuts)} cutouts",
        )
        conv, seconds, status = res["galaxy_conv"], res["seconds"], [str(v) for v in res["status"]]
        self.version = str(res["version"])
        if progress is not None:
            progress(len(cuts))
        return [
            Estimate(
                galaxy_conv=np.asarray(conv[i], dtype=np.float64),
                seconds=float(seconds[i]),
                note="" if status[i] == "ok" else status[i],
            )
            for i in range(len(cuts))
        ]
