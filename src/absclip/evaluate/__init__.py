"""Benchmark evaluation, split by job:

- :mod:`.planning`: which distinct views a set of methods needs, and which samples to evaluate;
- :mod:`.shards`: the shard runner (view cache, decode workers, extraction);
- :mod:`.evaluator`: methods × seeds (text sides, scoring, torchrun orchestration);
- :mod:`.metrics`: top-1 / top-5 / mean per-class recall;
- :mod:`.records`: ``results.jsonl``, ``summary.json`` and ``results.md``;
- :mod:`.predictions`: ``predictions.jsonl``, one line per method × seed × image.
"""

from .evaluator import EvalResult, Evaluator, MethodRun, at_seed, score_views
from .metrics import METRICS, compute_metrics, restrict_logits
from .planning import normalise_view_config, plan_views, select_subset
from .predictions import PREDICTIONS_FILE, prediction_records, write_predictions
from .records import make_records, render_markdown, summarise, write_outputs
from .shards import ShardRunner, ShardViews, cache_identity

__all__ = [
    "METRICS",
    "PREDICTIONS_FILE",
    "EvalResult",
    "Evaluator",
    "MethodRun",
    "ShardRunner",
    "ShardViews",
    "at_seed",
    "cache_identity",
    "compute_metrics",
    "make_records",
    "normalise_view_config",
    "plan_views",
    "prediction_records",
    "render_markdown",
    "restrict_logits",
    "score_views",
    "select_subset",
    "summarise",
    "write_outputs",
    "write_predictions",
]
