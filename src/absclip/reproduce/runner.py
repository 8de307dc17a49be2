"""Run a preset (a paper table as data) and report it next to the paper's numbers.

The jobs live in their own modules: :mod:`.planning` (the grid, from the file system alone),
:mod:`.overrides` (``--set``), :mod:`.published` (the paper's numbers), :mod:`.report` (the paper-style
tables) and :mod:`.timing` (Table 9). This module runs the grid.

Why it is built this way:

* **Plan first, then load, then run.** The grid (dataset folder × row) is resolved from the file
  system alone, so ``--dry-run`` never loads a model or lists a dataset, a missing dataset folder is
  reported and skipped before anything expensive starts, and layout errors in the folders that do
  exist surface at once, not after hours of ImageNet.
* **One evaluator per dataset and class-name list.** Rows are labelled variants of registered methods
  (Table 4 runs ``abs`` seven ways), so the runner gives :class:`~absclip.evaluate.Evaluator` one
  method per row label. All rows of a dataset that share a class-name list go through one evaluator:
  one view pass per seed per distinct view config, full-image methods reuse those views, and the view
  cache makes reruns cheap.
* **Records are the truth, reports are built from them.** ``results.jsonl`` holds one record per
  dataset / row / seed; ``results.md`` (laid out like the paper, published number and delta beside
  ours) and ``published_comparison.json`` are computed from those records.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..adapt import SupportPool, match_support
from ..attention import SaliencyPool
from ..backbones import Backbone
from ..data import LabelledImages, create_dataset
from ..errors import InputFileError
from ..evaluate import Evaluator, make_records, select_subset
from ..methods import METHODS, Method, MethodOptions, create_method
from ..text import Descriptions, load_classes, load_descriptions
from .overrides import apply_overrides
from .planning import (
    MISSING_DATA,
    MISSING_DESCRIPTIONS,
    MISSING_LLM,
    MISSING_SUPPORT,
    NOT_EXPRESSIBLE,
    READY,
    PlannedRun,
    ReproduceConfig,
    dry_run,
    plan_preset,
)
from .presets import REFERENCE_OVERRIDES, DatasetSpec, Preset, Row
from .published import Published, load_published
from .report import ReproduceReport, write_report
from .timing import run_timing

__all__ = ["ReproduceConfig", "ReproduceReport", "dry_run", "row_method", "run_preset"]


def _stderr(msg: str) -> None:
    print(f"absclip: {msg}", file=sys.stderr)


def row_method(spec: DatasetSpec, row: Row, cfg: ReproduceConfig) -> Method:
    """The row's method on ``spec``: reference settings, then what the method takes from the dataset's
    shared files (DESIGN.md §1), then the user's ``--set``, then the row's own overrides."""
    derived = METHODS.get(row.method).dataset_options(cfg.files(spec), spec.imagenet_labels)
    merged = {**REFERENCE_OVERRIDES, **derived, **cfg.overrides, **row.overrides}
    return create_method(row.method, apply_overrides(MethodOptions(), merged))


def _class_names(spec: DatasetSpec, method: str, cfg: ReproduceConfig) -> Path | None:
    """The ImageNet class-name list ``method`` uses when it is not the dataset's default one."""
    kind = METHODS.get(method).imagenet_classnames
    if not spec.imagenet_labels or kind == "classnames":
        return None
    return cfg.files(spec).find(kind)


def run_preset(preset: Preset, cfg: ReproduceConfig, backbone_factory: Callable[[], Backbone],
               published: Published | None = None, log: Callable[[str], None] = _stderr) -> ReproduceReport:
    """Run every ready cell of ``preset``, write results.jsonl, results.md and published_comparison.json.

    Missing dataset folders and description files are reported and skipped unless ``cfg.strict``; a few-shot
    row without a usable support set stops the run at once (before any model loads), naming the fix.
    """
    published = published or load_published()
    grid = plan_preset(preset, cfg, published)
    unsupported = [r for r in grid if r.status == MISSING_SUPPORT]
    if unsupported:
        cells = ", ".join(dict.fromkeys(f"{r.row} on {r.dataset}" for r in unsupported))
        raise InputFileError(f"{preset.name}: {len(unsupported)} few-shot runs have no support set ({cells}): "
                             f"{unsupported[0].reason}")
    problems = [r for r in grid if r.status in (MISSING_DATA, MISSING_DESCRIPTIONS, MISSING_LLM)]
    for dataset in dict.fromkeys(r.dataset for r in problems):
        reasons = sorted({f"{r.status}: {r.reason}" for r in problems if r.dataset == dataset})
        log(f"{preset.name}: skipping on {dataset}: " + "; ".join(reasons))
    if cfg.strict and problems:
        raise InputFileError(f"{preset.name}: {len(problems)} runs cannot start (--strict): "
                             f"{problems[0].dataset}: {problems[0].reason}")
    for r in grid:
        if r.status == NOT_EXPRESSIBLE and r.dataset == grid[0].dataset:
            log(f"{preset.name}: row {r.row!r} not run: {r.reason}")

    specs = {d.key: d for d in preset.datasets}
    rows = {r.label: r for r in preset.rows}
    ready = [r for r in grid if r.status == READY]
    # list every dataset first: layout errors surface before any model work
    groups: dict[tuple[str, Path | None], list[PlannedRun]] = {}
    datasets: dict[tuple[str, Path | None], LabelledImages] = {}
    pools: dict[tuple[str, Path | None], dict[str, SupportPool]] = {}
    for run in ready:
        spec = specs[run.dataset]
        key = (run.dataset, _class_names(spec, run.method, cfg))
        groups.setdefault(key, []).append(run)
        if key not in datasets:
            classes = None if key[1] is None else load_classes(key[1])
            assert run.root is not None
            datasets[key] = select_subset(create_dataset(spec.loader, run.root, class_names=classes,
                                                         data_dir=cfg.data_dir), cfg.limit)
            if not len(datasets[key]):
                raise InputFileError(f"{spec.key}: no images under {run.root}")
        # support folders (or train splits) are matched to the classes now, so a bad one fails before the model
        if getattr(METHODS.get(run.method), "needs_support", False):
            support = row_method(spec, rows[run.row], cfg).options.adapt.support
            group_pools = pools.setdefault(key, {})
            if support is not None and support not in group_pools:
                group_pools[support] = match_support(support, datasets[key], log)

    records: list[dict[str, Any]] = []
    timing = None
    timed = preset.timing is not None and (cfg.datasets is None or preset.timing.dataset in cfg.datasets)
    if ready or timed:
        backbone = backbone_factory()
        pool = SaliencyPool(backbone)
        for (dataset_key, names), group in groups.items():
            records.extend(_run_group(preset, specs[dataset_key], group, rows, cfg, backbone, datasets[
                (dataset_key, names)], names, pool, log, pools.get((dataset_key, names), {})))
        if timed:
            timing = run_timing(preset, cfg, backbone, specs, pool, published, log)
    return write_report(preset, cfg, grid, records, published, timing)


def _run_group(preset: Preset, spec: DatasetSpec, group: list[PlannedRun], rows: Mapping[str, Row],
               cfg: ReproduceConfig, backbone: Backbone, dataset: LabelledImages, names: Path | None,
               pool: SaliencyPool, log: Callable[[str], None],
               support_pools: Mapping[str, SupportPool]) -> list[dict[str, Any]]:
    """Run one evaluator over ``group`` (rows of one dataset sharing a class-name list); its records."""
    methods: dict[str, Method] = {}
    descriptions: dict[str, Descriptions | None] = {}
    loaded: dict[str, Descriptions] = {}
    for run in group:
        methods[run.row] = row_method(spec, rows[run.row], cfg)
        if run.descriptions is None:
            descriptions[run.row] = None
            continue
        if run.descriptions not in loaded:
            loaded[run.descriptions] = load_descriptions(dataset.classes, run.descriptions)
        descriptions[run.row] = loaded[run.descriptions]
    log(f"{preset.name}: {spec.key}: {len(dataset)} images, rows {', '.join(methods)}")

    def progress(seed: int, done: int, total: int) -> None:
        log(f"{preset.name}: {spec.key}: seed {seed}: {done}/{total} images")

    evaluator = Evaluator(
        backbone=backbone, dataset=dataset, methods=methods, seeds=list(cfg.seeds), descriptions=descriptions,
        view_cache=cfg.view_cache, shard_size=cfg.shard_size, batch_size=cfg.batch_size,
        text_cache=cfg.text_cache, progress=progress if cfg.verbose else None, saliency=pool,
        support_pools=support_pools, warn=log,
    )
    result = evaluator.run()
    assert result is not None  # a single process: never a non-zero torchrun rank
    by_label = {run.row: run for run in group}
    out = []
    for rec in make_records(result, cfg.model, cfg.pretrained, {"limit": cfg.limit}):
        run = by_label[rec["method"]]
        rec["settings"].update(descriptions=run.descriptions, classnames=None if names is None else str(names))
        rec.update(preset=preset.name, row=run.row, method=run.method, dataset_key=spec.key, column=spec.column,
                   overrides=run.options)
        out.append(rec)
    return out
