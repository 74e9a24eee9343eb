"""``profile --plot``: the latency distribution of each stage, one box per backend.

Drawn with matplotlib (the ``plot`` extra, for this alone): axes, a log scale, box plots and a
legend are what it is for, and drawing them by hand with OpenCV would be code of ours that
has nothing to do with restoration. It is imported only here, so ``restore`` on a device
never loads it, and it uses the Agg canvas (no display, no pyplot global state).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import atomic_file
from .errors import EdgeRestoreError
from .optional import require

PURPOSE = "profile --plot"

_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def plot_latency(path: Path, title: str, runs: list[tuple[str, dict[str, np.ndarray]]]) -> None:
    """``runs``: (label, stage -> per-frame ms) per backend; stages in the first run's order,
    end-to-end on top."""
    Figure = require("matplotlib.figure", PURPOSE).Figure
    from matplotlib.patches import Patch

    suffix = path.suffix.lower().lstrip(".")
    if suffix not in ("png", "svg", "pdf"):
        raise EdgeRestoreError(f"--plot '{path}': use a .png, .svg or .pdf file name")
    stages = list(runs[0][1])
    height = 1.0 + 0.32 * len(stages) * max(1, len(runs))
    figure = Figure(figsize=(9, height), layout="constrained")
    axes = figure.add_subplot()
    width = 0.8 / len(runs)
    for k, (label, per_frame) in enumerate(runs):
        color = _COLORS[k % len(_COLORS)]
        # Reversed so the first stage (end-to-end) is at the top.
        positions = [len(stages) - 1 - i + (k - (len(runs) - 1) / 2) * width for i in range(len(stages))]
        data = [np.maximum(per_frame.get(name, np.zeros(1)), 1e-3) for name in stages]  # log axis: no zeros
        axes.boxplot(data, positions=positions, widths=width * 0.85, orientation="horizontal", whis=(1, 99),
                     patch_artist=True, manage_ticks=False, showfliers=True,
                     boxprops={"facecolor": color, "alpha": 0.6}, medianprops={"color": "black"},
                     flierprops={"markersize": 2, "markeredgecolor": color})
    axes.set_yticks(range(len(stages)), list(reversed(stages)))
    axes.set_xscale("log")
    axes.set_xlabel("ms per frame (box: p25-p75, line: median, whiskers: p1-p99)")
    axes.set_title(title)
    axes.grid(axis="x", which="both", alpha=0.3)
    axes.legend(handles=[Patch(color=_COLORS[k % len(_COLORS)], alpha=0.6, label=label)
                         for k, (label, _) in enumerate(runs)], loc="lower right")
    with atomic_file(path) as tmp:
        figure.savefig(tmp, format=suffix, dpi=120)
