"""Self-contained HTML reports of classify and eval results: open one file and look.

* :func:`write_classify_report`: a grid of the images with their top-k labels and score bars, a filter
  by predicted label, a search by file name, sorting by confidence or by the margin between the top two
  labels, pages of cards, the unreadable images with their errors and, given the crop plans, the raw
  boxes and feature windows ABS chose drawn over each image.
* :func:`write_eval_report`: the methods side by side (mean ± std over seeds) with plots and, from
  ``predictions.jsonl``, per-class accuracy, the most confused class pairs and the images two methods
  label differently.
* :func:`write_report`: either, chosen from what the input is.

Pages fetch nothing: styles, scripts, plots and (by default) thumbnails are inside the file, and a
Content-Security-Policy holds the browser to that.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from ..errors import InputFileError
from .classify import ClassifyRecord, read_classify_results, write_classify_report
from .eval_inputs import PREDICTIONS_FILE, read_eval_outputs
from .evaluation import write_eval_report
from .thumbs import DEFAULT_THUMB_SIZE, make_thumbnail

ReportKind = Literal["classify", "eval"]


def detect_kind(source: str | os.PathLike[str]) -> ReportKind:
    """``eval`` for an eval output directory, its ``results.jsonl`` or ``summary.json``; ``classify`` for a
    classify ``.jsonl`` / ``.csv``. A ``.jsonl`` is told apart by its first record."""
    path = Path(source)
    if path.is_dir() or path.name == "summary.json":
        return "eval"
    if not path.is_file():
        raise InputFileError(f"results not found: {path}")
    if path.suffix.lower() == ".csv":
        return "classify"
    if path.suffix.lower() != ".jsonl":
        raise InputFileError(f"{path}: expected classify results (.jsonl, .csv) or an eval output "
                             "(its directory, results.jsonl or summary.json)")
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                first = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputFileError(f"{path}: the first record is not valid JSON ({exc})") from exc
            if isinstance(first, dict) and "metrics" in first and "method" in first:
                return "eval"
            if isinstance(first, dict) and "path" in first:
                return "classify"
            break
    raise InputFileError(f"{path}: neither classify results (records with 'path') nor eval results "
                         "(records with 'method' and 'metrics')")


def write_report(source: str | os.PathLike[str], output: str | os.PathLike[str], *,
                 kind: ReportKind | None = None, report: Callable[[str], None] | None = None,
                 **options: Any) -> tuple[ReportKind, Path]:
    """Write the report that fits ``source`` (see :func:`detect_kind`); ``options`` go to
    :func:`write_classify_report` or :func:`write_eval_report`."""
    kind = kind or detect_kind(source)
    if kind == "classify":
        return kind, write_classify_report(source, output, report=report, **options)
    return kind, write_eval_report(source, output, report=report, **options)


__all__ = [
    "DEFAULT_THUMB_SIZE",
    "PREDICTIONS_FILE",
    "ClassifyRecord",
    "ReportKind",
    "detect_kind",
    "make_thumbnail",
    "read_classify_results",
    "read_eval_outputs",
    "write_classify_report",
    "write_eval_report",
    "write_report",
]
