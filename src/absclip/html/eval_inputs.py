"""Reading an eval output directory for its report: per-seed records, the summary, unreadable images
and per-sample predictions (the formats are in :mod:`absclip.html.evaluation`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputFileError

PREDICTIONS_FILE = "predictions.jsonl"
CLASSES_FILE = "classes.json"


@dataclass
class Prediction:
    method: str
    seed: int
    path: str
    target: int
    pred: int
    top_k: list[int] = field(default_factory=list)


@dataclass
class DatasetRuns:
    """Everything known about one dataset: per-seed records, per-sample predictions, class names."""

    name: str
    records: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    predictions: list[Prediction] = field(default_factory=list)
    labels: dict[int, str] = field(default_factory=dict)

    def methods(self) -> list[str]:
        seen: dict[str, None] = {}
        for r in self.records:
            seen.setdefault(r["method"], None)
        if self.summary:
            for m in self.summary.get("methods", {}):
                seen.setdefault(m, None)
        for p in self.predictions:
            seen.setdefault(p.method, None)
        return list(seen)

    def label(self, index: int) -> str:
        return self.labels.get(index, f"class {index}")


@dataclass
class EvalInputs:
    directory: Path
    datasets: list[DatasetRuns]
    failed: list[tuple[str, str]]
    predictions_file: Path | None


def _read_jsonl(path: Path) -> list[tuple[int, Any]]:
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append((n, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise InputFileError(f"{path}:{n}: not valid JSON ({exc})") from exc
    return out


def eval_directory(source: str | os.PathLike[str]) -> Path:
    """The eval output directory for a directory, its ``results.jsonl`` or its ``summary.json``."""
    source = Path(source)
    if source.is_dir():
        if not (source / "results.jsonl").is_file() and not (source / "summary.json").is_file():
            raise InputFileError(f"{source}: no results.jsonl or summary.json (is it an `absclip eval` output?)")
        return source
    if source.is_file():
        return source.parent
    raise InputFileError(f"eval results not found: {source}")


def read_eval_outputs(source: str | os.PathLike[str], predictions: str | os.PathLike[str] | None = None) -> EvalInputs:
    directory = eval_directory(source)
    source = Path(source)
    results = source if source.is_file() and source.suffix == ".jsonl" else directory / "results.jsonl"
    by_name: dict[str, DatasetRuns] = {}
    if results.is_file():
        for n, rec in _read_jsonl(results):
            if not isinstance(rec, dict) or not {"method", "seed", "metrics"} <= rec.keys():
                raise InputFileError(f"{results}:{n}: not an eval record (needs method, seed and metrics)")
            name = str(rec.get("dataset") or "")
            by_name.setdefault(name, DatasetRuns(name)).records.append(rec)
    else:
        summary_path = directory / "summary.json"
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputFileError(f"{summary_path}: cannot read ({exc})") from exc
        if not isinstance(summary, dict) or not isinstance(summary.get("methods"), dict):
            raise InputFileError(f"{summary_path}: not an eval summary (no 'methods' object)")
        name = str(summary.get("dataset") or "")
        by_name[name] = DatasetRuns(name, summary=summary)
    failed = []
    if (directory / "failed.jsonl").is_file():
        failed = [(str(r.get("path")), str(r.get("reason"))) for _, r in _read_jsonl(directory / "failed.jsonl")
                  if isinstance(r, dict)]
    pred_path = Path(predictions) if predictions is not None else directory / PREDICTIONS_FILE
    if predictions is not None and not pred_path.is_file():
        raise InputFileError(f"predictions file not found: {pred_path}")
    if pred_path.is_file():
        _read_predictions(pred_path, by_name)
    else:
        pred_path = None
    classes_path = directory / CLASSES_FILE
    if classes_path.is_file():
        names = json.loads(classes_path.read_text(encoding="utf-8"))
        if isinstance(names, list):
            for ds in by_name.values():
                for i, label in enumerate(names):
                    ds.labels.setdefault(i, str(label))
    return EvalInputs(directory, list(by_name.values()), failed, pred_path)


def _read_predictions(path: Path, by_name: dict[str, DatasetRuns]) -> None:
    only = next(iter(by_name)) if len(by_name) == 1 else None
    for n, rec in _read_jsonl(path):
        where = f"{path}:{n}"
        if not isinstance(rec, dict):
            raise InputFileError(f"{where}: a prediction must be a JSON object")
        try:
            p = Prediction(str(rec["method"]), int(rec["seed"]), str(rec["path"]), int(rec["target"]),
                           int(rec["pred"]), [int(i) for i in rec.get("top_k") or []])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputFileError(f"{where}: a prediction needs method, seed, path, target and pred ({exc})") from exc
        name = str(rec.get("dataset") or only or "")
        ds = by_name.setdefault(name, DatasetRuns(name))
        ds.predictions.append(p)
        if isinstance(rec.get("target_label"), str):
            ds.labels.setdefault(p.target, rec["target_label"])
        if isinstance(rec.get("pred_label"), str):
            ds.labels.setdefault(p.pred, rec["pred_label"])
