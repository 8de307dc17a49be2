"""PNG plots of the sweeps (Fig. 4, Table 7) and of Table 9's time per stage.

Why :class:`matplotlib.figure.Figure` and not pyplot: pyplot keeps global state and picks a GUI
backend from the environment; a bare Figure renders with Agg whatever the machine, so plotting works
headless and in tests. Files are written atomically (a reader never sees half a PNG).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..io import atomic_open


def _save(fig: Figure, path: str | Path) -> Path:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    target = Path(path)
    with atomic_open(target, "wb") as handle:
        handle.write(buffer.getvalue())
    return target


def plot_sweeps(panels: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]], path: str | Path,
                title: str) -> Path:
    """One panel per sweep (e.g. crop ratio, N, top-k), x = the swept value, y = top-1 (%), one line per dataset."""
    names = list(panels) or ["(no results)"]
    fig = Figure(figsize=(4.2 * len(names), 3.6), layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names, strict=True):
        for label, points in panels.get(name, {}).items():
            xs, ys = zip(*points, strict=True) if points else ((), ())
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(name.split(" ", 1)[-1] if name.startswith("(") else name)
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.3)
        if panels.get(name):
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def plot_timing(timing: Mapping[str, Any], path: str | Path, title: str) -> Path:
    """Seconds per image against N for ABS's two stages and their total, CLIP's total as a dashed line."""
    times = timing["seconds_per_image"]
    crops = [int(m.split("=", 1)[1]) for m in times if m.startswith("abs:N=")]
    fig = Figure(figsize=(5.5, 3.8), layout="constrained")
    ax = fig.subplots()
    for stage, style in (("crop+preprocess", "s-"), ("encoding", "^-"), ("total", "o-")):
        ax.plot(crops, [times[f"abs:N={n}"][stage] for n in crops], style, label=f"ABS {stage}")
    if "clip" in times:
        ax.axhline(times["clip"]["total"], linestyle="--", color="grey", label="CLIP total")
    ax.set_xlabel("N (crops per image)")
    ax.set_ylabel(f"seconds per image ({timing.get('device', '')})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)
