"""Reports built from evaluation records: one CLIP_benchmark-like JSON record per dataset / method /
seed, the mean ± std summary over seeds and a Markdown table, and the per-sample predictions (see
:mod:`.predictions`), all written atomically."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..io import atomic_open, write_json, write_jsonl
from .metrics import METRICS
from .predictions import PREDICTIONS_FILE, write_predictions

if TYPE_CHECKING:
    from .evaluator import EvalResult


def make_records(result: EvalResult, model: str, pretrained: str | None,
                 extra_settings: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One CLIP_benchmark-like record per method and seed.

    A few-shot or test-time run's record carries ``adaptation``, the summary of what it adapted on (the
    support draw: root, seed, digest, shots used per class; or the stream: seed, length, order digest),
    so every writer of records (``absclip eval``, ``absclip reproduce``) states it; zero-shot records
    have no such key."""
    records = []
    n_failed = len(result.failed)
    for run in result.runs:
        settings = dataclasses.asdict(run.options)
        settings.update(extra_settings or {})
        records.append({
            "dataset": result.dataset,
            "model": model,
            "pretrained": pretrained,
            "method": run.method,
            "seed": run.seed,
            "settings": settings,
            "metrics": dict(run.metrics),
            "n_samples": int(run.targets.numel()),
            "n_failed": n_failed,
        })
        if run.adaptation is not None:
            records[-1]["adaptation"] = run.adaptation
    return records


def summarise(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample standard deviation (0 for one seed) of each metric per method, in run order."""
    by_method: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_method.setdefault(r["method"], []).append(r)
    summary: dict[str, Any] = {"methods": {}}
    for method, rs in by_method.items():
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in rs], "n_samples": rs[0]["n_samples"]}
        for m in METRICS:
            values = [float(r["metrics"][m]) for r in rs]
            entry[m] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
        summary["methods"][method] = entry
    if records:
        summary.update(dataset=records[0]["dataset"], model=records[0]["model"], pretrained=records[0]["pretrained"])
    return summary


def render_markdown(summary: dict[str, Any]) -> str:
    """A methods × metrics table in percent, mean ± std over seeds."""
    head = f"# {summary.get('dataset', '')} — {summary.get('model', '')} ({summary.get('pretrained', '')})\n\n"
    lines = ["| method | seeds | top-1 (%) | top-5 (%) | mean per-class recall (%) |",
             "|---|---|---|---|---|"]
    for method, e in summary["methods"].items():
        cells = [f"{100 * e[m]['mean']:.2f} ± {100 * e[m]['std']:.2f}" for m in METRICS]
        lines.append(f"| {method} | {len(e['seeds'])} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def write_outputs(output_dir: str | Path, records: list[dict[str, Any]],
                  failed: Sequence[tuple[str, str]] = (),
                  predictions: Iterable[dict[str, Any]] | None = None) -> dict[str, Path]:
    """Write results.jsonl, summary.json and results.md (and failed.jsonl if any image failed; and
    predictions.jsonl given the per-sample ``predictions``, e.g. :func:`.predictions.prediction_records`).

    Each file is replaced atomically; the predictions go first, so a ``results.jsonl`` beside them is
    never older than they are. Without ``predictions`` (or without failures) an earlier run's
    predictions.jsonl (failed.jsonl) is removed, so a report never pairs these records with another run's."""
    out = Path(output_dir)
    paths = {"results": out / "results.jsonl", "summary": out / "summary.json", "markdown": out / "results.md"}
    if predictions is not None:
        paths["predictions"] = out / PREDICTIONS_FILE
        write_predictions(paths["predictions"], predictions)
    else:
        (out / PREDICTIONS_FILE).unlink(missing_ok=True)
    summary = summarise(records)
    write_jsonl(paths["results"], records)
    write_json(paths["summary"], summary)
    with atomic_open(paths["markdown"], "w", encoding="utf-8") as handle:
        handle.write(render_markdown(summary))
    if failed:
        paths["failed"] = out / "failed.jsonl"
        write_jsonl(paths["failed"], [{"path": p, "reason": r} for p, r in failed])
    else:  # an earlier run's unreadable images are not this run's
        (out / "failed.jsonl").unlink(missing_ok=True)
    return paths
