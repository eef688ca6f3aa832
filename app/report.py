"""Run outputs: the `outputs/<timestamp>/` layout, JSON metrics and charts.

Every JSON file is written atomically, so a reader (or a crash) never sees half of one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path

from app.checkpoint import write_json_atomic

__all__ = ["new_run_dir", "write_json_atomic", "line_chart"]


def new_run_dir(base: Path) -> Path:
    """A fresh `base/<YYYY-MM-DD_HH-MM-SS>` directory (suffixed if two runs start in the same second)."""
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    base.mkdir(parents=True, exist_ok=True)
    for n in range(1000):
        candidate = base / (stamp if n == 0 else f"{stamp}_{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a run directory under {base}")


def line_chart(
    path: Path,
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    title: str,
    xlabel: str,
    ylabel: str,
) -> Path:
    """One PNG line chart of named (x, y) series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for name, (xs, ys) in series.items():
        if xs:
            ax.plot(list(xs), list(ys), marker="o", markersize=3, label=name, linewidth=2 if name == "server" else 1.2)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path
