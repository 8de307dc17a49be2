"""The paper-style report of a preset run, built from its records: ``results.md`` (ours, published,
delta), ``published_comparison.json``, and plots for sweeps and timings."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io import atomic_open, write_json, write_jsonl
from .planning import NOT_EXPRESSIBLE, READY, PlannedRun, ReproduceConfig, fmt_overrides
from .presets import REFERENCE_OVERRIDES, Preset
from .published import Published
from .timing import render_timing


@dataclass
class ReproduceReport:
    """What a preset run produced (also written to ``output_dir``)."""

    records: list[dict[str, Any]]
    grid: list[PlannedRun]
    comparison: dict[str, Any]
    markdown: str
    paths: dict[str, Path]
    timing: dict[str, Any] | None = None


def _minus(text: str) -> str:
    return text.replace("-", "−")


def format_cell(ours: float, published: float | None, std: float | None = None, signed: bool = False) -> str:
    """``71.10 (71.92, −0.82)``: ours (percent, two decimals) then the published number and ours − it.

    The delta is taken from the rounded numbers shown, so the three figures in a cell always agree.
    """
    shown = round(ours, 2)
    text = f"{shown:+.2f}" if signed else f"{shown:.2f}"
    if std is not None:
        text += f" ± {std:.2f}"
    if published is not None:
        delta = round(shown - published, 2)
        pub = f"{published:+.2f}" if signed else f"{published:.2f}"
        text += f" ({pub}, {delta:+.2f})"
    return _minus(text) if signed or published is not None else text


def _scores(records: Sequence[dict[str, Any]]) -> dict[tuple[str, str], list[float]]:
    """(row, dataset key) -> top-1 in percent, one value per seed."""
    out: dict[tuple[str, str], list[float]] = {}
    for r in records:
        acc = r["metrics"]["acc1"]
        if acc is not None and not math.isnan(acc):
            out.setdefault((r["row"], r["dataset_key"]), []).append(100.0 * acc)
    return out


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def build_comparison(preset: Preset, cfg: ReproduceConfig, grid: Sequence[PlannedRun],
                     records: Sequence[dict[str, Any]], published: Published) -> dict[str, Any]:
    """Our numbers beside the published ones, cell by cell (and the Avg column where the paper has one)."""
    backbone = cfg.backbone_name()
    scores = _scores(records)
    specs = [d for d in preset.datasets if cfg.datasets is None or d.key in cfg.datasets]
    cells = []
    for row in preset.rows:
        for spec in specs:
            values = scores.get((row.label, spec.key))
            pub = published.entry(preset.table_of(row), backbone, spec.key, row.published)
            mean, std = _mean_std(values) if values else (None, None)
            cells.append({
                "row": row.label, "method": row.method, "dataset": spec.key, "column": spec.column,
                "ours": mean, "ours_std": std, "seeds": len(values or []),
                "published": None if pub is None else pub["value"],
                "delta": None if (pub is None or mean is None) else round(round(mean, 2) - pub["value"], 2),
                "source": None if pub is None else pub["source"],
            })
    averages = []
    if preset.average is not None:
        all_keys = [d.key for d in preset.datasets]
        means = {(c["row"], c["dataset"]): c["ours"] for c in cells}
        base = preset.average.partition(":")[2] if preset.average.startswith("gain:") else None
        pub_key = "avg-gain" if base else "average"
        for row in preset.rows:
            values = [means.get((row.label, k)) for k in all_keys]
            ref = [means.get((base, k)) for k in all_keys] if base else [0.0] * len(all_keys)
            diffs = [v - r for v, r in zip(values, ref, strict=True) if v is not None and r is not None]
            # only over all of the paper's datasets: an average of a subset would not compare
            ours = statistics.fmean(diffs) if len(diffs) == len(all_keys) else None
            pub = published.entry(preset.table_of(row), backbone, pub_key, row.published,
                                  "top1_gain_vs_cupl" if base else "top1")
            averages.append({
                "row": row.label, "kind": "gain over " + base if base else "mean", "ours": ours,
                "published": None if pub is None else pub["value"],
                "delta": None if (pub is None or ours is None) else round(round(ours, 2) - pub["value"], 2),
                "source": None if pub is None else pub["source"],
            })
    skipped = [{"dataset": r.dataset, "row": r.row, "status": r.status, "reason": r.reason}
               for r in grid if r.status != READY]
    return {
        "preset": preset.name, "title": preset.title, "table": preset.table, "source": preset.source,
        "model": cfg.model, "pretrained": cfg.pretrained, "published_backbone": backbone,
        "seeds": list(cfg.seeds), "limit": cfg.limit, "cells": cells, "average": averages, "skipped": skipped,
    }


def render_markdown(preset: Preset, cfg: ReproduceConfig, comparison: Mapping[str, Any],
                    records: Sequence[dict[str, Any]], timing: Mapping[str, Any] | None = None) -> str:
    """The preset as the paper lays it out: rows = methods/settings, columns = datasets (+ Avg)."""
    specs = [d for d in preset.datasets if cfg.datasets is None or d.key in cfg.datasets]
    backbone = comparison["published_backbone"]
    n_samples: dict[str, int] = {}
    for r in records:
        n_samples[r["dataset_key"]] = r["n_samples"]
    lines = [f"# {preset.title} — reproduction", ""]
    lines.append(f"Model `{cfg.model}` (pretrained `{cfg.pretrained}`), seeds {', '.join(map(str, cfg.seeds))}"
                 + (f", at most {cfg.limit} images per dataset" if cfg.limit else "") + ".")
    if backbone and preset.table:
        lines.append(f"Cells: our top-1 (%){' ± std over seeds' if len(cfg.seeds) > 1 else ''} "
                     f"(published {backbone} number of {preset.source}, ours − published).")
    else:
        lines.append("Cells: our top-1 (%). No published comparison"
                     + (" (the model is not one of the paper's OpenAI CLIP backbones; see --published-backbone)."
                        if preset.table else " (the paper only plots these values)."))
    others = sorted({c["source"] for c in comparison["cells"]
                     if c["source"] is not None and c["source"] != preset.source})
    if others:
        lines.append("Rows of other papers compare with their own tables: " + "; ".join(others) + ".")
    lines.append("")
    avg_head = []
    if preset.average is not None:
        avg_head = ["Avg. gain over " + preset.average.partition(":")[2]] if preset.average.startswith("gain:") \
            else ["Avg"]
    cells = {(c["row"], c["dataset"]): c for c in comparison["cells"]}
    averages = {a["row"]: a for a in comparison["average"]}
    status = {(r["row"], r["dataset"]): r["status"] for r in comparison["skipped"]}

    def cell(row: str, dataset: str) -> str:
        c = cells[(row, dataset)]
        if c["ours"] is not None:
            return format_cell(c["ours"], c["published"], c["ours_std"])
        missing = "n/a" if status.get((row, dataset)) == NOT_EXPRESSIBLE else "—"
        return missing + ("" if c["published"] is None else f" ({c['published']:.2f})")

    if preset.methods_as_columns:  # Tables 8 and 10: methods across, one line per dataset under the model
        header = [f"Base model: {backbone or cfg.model}", *[row.label for row in preset.rows]]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|---|" + "---:|" * (len(header) - 1))
        for spec in specs:
            lines.append("| " + " | ".join([spec.column, *[cell(row.label, spec.key) for row in preset.rows]]) + " |")
    else:
        header = ["Method", *[d.column for d in specs], *avg_head]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|---|" + "---:|" * (len(header) - 1))
    for row in () if preset.methods_as_columns else preset.rows:
        out = [row.label, *[cell(row.label, spec.key) for spec in specs]]
        if avg_head:
            a = averages[row.label]
            signed = preset.average is not None and preset.average.startswith("gain:")
            if a["ours"] is not None:
                out.append(format_cell(a["ours"], a["published"], signed=signed))
            else:
                pub = a["published"]
                out.append("—" + ("" if pub is None else " (" + (_minus(f"{pub:+.2f}") if signed else f"{pub:.2f}")
                                  + ")"))
        lines.append("| " + " | ".join(out) + " |")
    if n_samples:
        lines += ["", "Images per dataset: " + ", ".join(f"{k} {v}" for k, v in n_samples.items()) + "."]
    lines += ["", f"Every row runs with {fmt_overrides({**REFERENCE_OVERRIDES, **cfg.overrides})} under its own "
                  "overrides."]
    notes = [f"- {row.label}: {row.note}" for row in preset.rows if row.note]
    if preset.note or notes:
        lines += ["", "## Notes", ""]
        if preset.note:
            lines.append(f"- {preset.note}")
        lines += notes
    skipped = comparison["skipped"]
    if skipped:
        lines += ["", "## Not run", ""]
        seen = set()
        for s in skipped:
            key = (s["dataset"], s["status"], s["reason"]) if s["status"] != NOT_EXPRESSIBLE else (s["row"],)
            if key in seen:
                continue
            seen.add(key)
            if s["status"] == NOT_EXPRESSIBLE:
                lines.append(f"- row {s['row']}: not expressible with the current options")
            else:
                lines.append(f"- {s['dataset']}: {s['status']}: {s['reason']}")
    if timing is not None:
        lines += ["", render_timing(timing)]
    return "\n".join(lines) + "\n"


def write_report(preset: Preset, cfg: ReproduceConfig, grid: Sequence[PlannedRun], records: list[dict[str, Any]],
                 published: Published, timing: dict[str, Any] | None = None) -> ReproduceReport:
    """Write results.jsonl, published_comparison.json, results.md (and plots) to ``cfg.output_dir``."""
    from . import plots

    out = Path(cfg.output_dir)
    comparison = build_comparison(preset, cfg, grid, records, published)
    if timing is not None:
        comparison["timing"] = timing
    markdown = render_markdown(preset, cfg, comparison, records, timing)
    paths = {"results": out / "results.jsonl", "comparison": out / "published_comparison.json",
             "markdown": out / "results.md"}
    write_jsonl(paths["results"], records)
    write_json(paths["comparison"], comparison)
    with atomic_open(paths["markdown"], "w", encoding="utf-8") as handle:
        handle.write(markdown)
    if preset.kind == "sweep" and records:
        paths["plot"] = plots.plot_sweeps(sweep_panels(preset, comparison), out / f"{preset.name}.png",
                                          f"{preset.title} — {cfg.model}")
    if timing is not None:
        paths["plot"] = plots.plot_timing(timing, out / f"{preset.name}.png", f"{preset.title} — {cfg.model}")
        write_json(out / "timing.json", timing)
        paths["timing"] = out / "timing.json"
    return ReproduceReport(records, list(grid), comparison, markdown, paths, timing)


def sweep_panels(preset: Preset, comparison: Mapping[str, Any]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """group -> dataset column -> [(x, top-1)] for the rows of a sweep that produced a number."""
    rows = {r.label: r for r in preset.rows}
    panels: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for c in comparison["cells"]:
        row = rows[c["row"]]
        if row.group is None or row.x is None or c["ours"] is None:
            continue
        panels.setdefault(row.group, {}).setdefault(c["column"], []).append((float(row.x), float(c["ours"])))
    for series in panels.values():
        for points in series.values():
            points.sort()
    return panels
