"""Per-sample predictions of an evaluation (``predictions.jsonl``): what each method said about each image.

Metrics alone cannot say which classes a method gets wrong, which it confuses, or where two methods part
ways; the report (:mod:`absclip.html.evaluation`) builds those from these records. One JSON line per
method × seed × image, in run order and, within a run, in dataset order::

    {"dataset": "cub", "method": "abs", "seed": 0, "path": "/data/cub/images/001.jpg",
     "target": 12, "target_label": "Laysan Albatross", "pred": 40, "pred_label": "Sooty Albatross",
     "top_k": [40, 12, 7, 3, 99], "top_k_scores": [31.2, 30.9, 28.4, 27.0, 26.5]}

``top_k`` are class indices, best first (k = 5, or C when there are fewer classes); ``top_k_scores`` are the
method's logits for them: the very numbers the metrics rank, so a record's ``pred`` is ``top_k[0]``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..io import atomic_open

if TYPE_CHECKING:
    from .evaluator import EvalResult

PREDICTIONS_FILE = "predictions.jsonl"
TOP_K = 5


def top_k_rows(logits: torch.Tensor, k: int = TOP_K) -> tuple[list[list[int]], list[list[float]]]:
    """(indices, logits) of the k best classes of each row, best first; logits [n, C] -> two [n, min(k, C)]
    lists. ``topk`` as :func:`~absclip.evaluate.metrics.compute_metrics` calls it, so ``pred`` is the
    class the metrics counted, ties included."""
    k = min(k, logits.shape[1])
    if logits.shape[0] == 0 or k == 0:
        return [[] for _ in range(logits.shape[0])], [[] for _ in range(logits.shape[0])]
    scores, order = logits.float().topk(k, dim=1)  # [n, k] each
    return order.tolist(), scores.tolist()


def prediction_records(result: EvalResult, classes: Sequence[str] | None = None,
                       k: int = TOP_K) -> Iterator[dict[str, Any]]:
    """One record per method × seed × scored image (see the module docstring), generated lazily: a
    50,000-image ImageNet run with several methods and seeds never holds them all in memory."""
    names = list(classes if classes is not None else result.classes)

    def label(index: int) -> str | None:
        return names[index] if 0 <= index < len(names) else None

    for run in result.runs:
        if len(run.paths) != run.logits.shape[0]:
            raise ValueError(f"{run.method} seed {run.seed}: {run.logits.shape[0]} logit rows but "
                             f"{len(run.paths)} image paths")
        indices, scores = top_k_rows(run.logits, k)
        for path, target, top, top_scores in zip(run.paths, run.targets.tolist(), indices, scores, strict=True):
            pred = top[0] if top else -1
            yield {"dataset": result.dataset, "method": run.method, "seed": run.seed, "path": path,
                   "target": target, "target_label": label(target), "pred": pred, "pred_label": label(pred),
                   "top_k": top, "top_k_scores": [float(f"{s:.7g}") for s in top_scores]}  # float32's digits


def write_predictions(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Write ``records`` as JSON lines, atomically (a crash leaves the previous file or none, never half
    of one, like ``results.jsonl``); returns how many were written. Records stream to the file."""
    n = 0
    with atomic_open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n
