"""Redraw docs/figures/bench_*.png from the benchmark JSON outputs in docs/results/.

    python scripts/plot_benchmarks.py

Sampler speed: for every ``sampler_speed_*.json``, the measured seconds per batch next to
the prediction from the network evaluations alone (forwards x forward cost + VJPs x VJP
cost), per number of CG iterations; equal bars mean the sampler adds no overhead.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
FIGURES = ROOT / "docs" / "figures"


def sampler_speed() -> Path | None:
    """Bar chart of measured vs predicted time per batch for every sampler-speed run."""
    files = sorted(RESULTS.glob("sampler_speed_*.json"))
    if not files:
        return None
    fig, axes = plt.subplots(1, len(files), figsize=(4.2 * len(files), 3.6), squeeze=False)
    for ax, f in zip(axes[0], files, strict=True):
        r = json.loads(f.read_text())
        cgs = sorted(r["runs"], key=int)
        measured = [r["runs"][c]["seconds_per_batch"] for c in cgs]
        predicted = [r["runs"][c]["predicted_seconds_per_batch"] for c in cgs]
        x = range(len(cgs))
        ax.bar([i - 0.2 for i in x], predicted, 0.4, label="network evaluations alone")
        ax.bar([i + 0.2 for i in x], measured, 0.4, label="whole sampler (measured)")
        for i, c in enumerate(cgs):
            ax.text(
                i + 0.2,
                measured[i],
                f"x{r['runs'][c]['overhead']:.2f}",
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_xticks(list(x), [f"{c} CG it." for c in cgs])
        ax.set_ylabel("seconds per batch")
        ax.set_title(
            f"{r['device']}\nbatch {r['batch_size']}, {r['steps']} {r['sampler']} steps", fontsize=9
        )
    axes[0][0].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    out = FIGURES / "bench_sampler_speed.png"
    FIGURES.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


if __name__ == "__main__":
    for path in (sampler_speed(),):
        if path is not None:
            print(path.relative_to(ROOT))
