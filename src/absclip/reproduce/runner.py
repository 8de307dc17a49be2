"""Run a preset (a paper table as data) and report it next to the paper's numbers.

Why it is built this way:

* **Plan first, then load, then run.** The grid (dataset folder × row) is resolved from the file
  system alone, so ``--dry-run`` never loads a model or lists a dataset, a missing dataset folder is
  reported and skipped before anything expensive starts, and layout errors in the folders that do
  exist surface at once, not after hours of ImageNet.
* **One evaluator per dataset and view group.** Rows are labelled variants of registered methods
  (Table 4 runs ``abs`` seven ways), so the runner gives :class:`~absclip.evaluate.Evaluator` row
  labels as method names and maps each to its method and options. All rows of a dataset that share a
  saliency source and class-name list go through one evaluator: one view pass per seed per distinct
  view config, full-image methods reuse those views, and the view cache makes reruns cheap.
* **Records are the truth, reports are built from them.** ``results.jsonl`` holds one record per
  dataset / row / seed; ``results.md`` (laid out like the paper, published number and delta beside
  ours) and ``published_comparison.json`` are computed from those records.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..attention import SaliencySource, create_saliency
from ..backbones import Backbone
from ..data import LabelledImages, create_dataset, dataset_info
from ..errors import AbsclipError, InputFileError, UnsupportedError
from ..evaluate import Evaluator, make_records, select_subset
from ..images import image_to_tensor, iter_loaded
from ..io import atomic_open, write_json, write_jsonl
from ..methods import METHODS, MethodOptions, create_method
from ..text import Descriptions, load_classes, load_descriptions
from ..views import ViewConfig, ViewExtractor
from ..views.extract import default_micro_batch
from ..views.features import zoom_windows
from ..views.resample import crop_resize, preprocess_images
from .presets import REFERENCE_OVERRIDES, DatasetSpec, Preset, Row

PUBLISHED_FILE = "published.json"

READY = "ready"
MISSING_DATA = "missing data"
MISSING_DESCRIPTIONS = "missing descriptions"
NOT_EXPRESSIBLE = "not expressible"

DESCRIPTION_KIND = {"clip-d": "clip-d", "waffle": "clip-d"}
"""Description file each method reads (default: CuPL sentences), as ``absclip eval`` does."""
OPENAI_NAMES_METHODS = frozenset({"clip-d", "waffle"})
"""Methods the reference runs with OpenAI's curated ImageNet class names (DESIGN.md §4)."""


# ---- published numbers ---------------------------------------------------------------------------
@dataclass
class Published:
    """The paper's numbers (``resources/published.json``): a lookup by table, backbone, dataset, row."""

    entries: list[dict[str, Any]]

    def entry(self, table: str | None, backbone: str | None, dataset: str, method: str | None,
              metric: str = "top1") -> dict[str, Any] | None:
        if table is None or backbone is None or method is None:
            return None
        for e in self.entries:
            if (e["table"], e["backbone"], e["dataset"], e["method"], e.get("metric", "top1")) == (
                    table, backbone, dataset, method, metric):
                return e
        return None

    def value(self, table: str | None, backbone: str | None, dataset: str, method: str | None,
              metric: str = "top1") -> float | None:
        e = self.entry(table, backbone, dataset, method, metric)
        return None if e is None else float(e["value"])


def load_published(path: str | Path | None = None) -> Published:
    """The packaged published numbers, or those of ``path`` (same schema)."""
    if path is None:
        text = resources.files("absclip").joinpath("resources").joinpath(PUBLISHED_FILE).read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    return Published(list(json.loads(text)["entries"]))


_VIT = re.compile(r"vit-?([bl])[-/]?(\d+)(?![\d-])", re.IGNORECASE)
_HF_VIT = re.compile(r"openai/clip-vit-(base|large)-patch(\d+)$", re.IGNORECASE)


def published_backbone(model: str, pretrained: str | None) -> str | None:
    """The paper's backbone name ("ViT-B/16") for OpenAI CLIP weights, else None (no comparison).

    The published numbers are for OpenAI's CLIP weights only: an open_clip architecture with other
    pretrained weights, or a hub model not from ``openai/``, gets no published column.
    """
    prefix, _, rest = model.partition(":")
    if not rest:
        prefix, rest = "openai", model
    prefix = prefix.lower()
    if prefix == "open_clip" and (pretrained or "").lower() != "openai":
        return None
    if prefix == "hf":
        m = _HF_VIT.search(rest)
        return None if m is None else f"ViT-{m.group(1)[0].upper()}/{m.group(2)}"
    if prefix not in ("open_clip", "openai"):
        return None
    m = _VIT.search(Path(rest).name if prefix == "openai" else rest)
    return None if m is None else f"ViT-{m.group(1).upper()}/{m.group(2)}"


# ---- option overrides ----------------------------------------------------------------------------
def parse_assignments(items: Iterable[str], what: str) -> dict[str, str]:
    """``["a=1", "b.c=x"]`` -> ``{"a": "1", "b.c": "x"}`` (the CLI's repeatable KEY=VALUE options)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputFileError(f"{what} expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _coerce(key: str, value: Any, current: Any) -> Any:
    """A CLI string converted to the type of the option it replaces (typed values pass through)."""
    if not isinstance(value, str) or isinstance(current, str):
        return tuple(value) if isinstance(current, tuple) and isinstance(value, list) else value
    text = value.strip()
    if text.lower() in ("none", "null"):
        return None
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, tuple):
            return tuple(float(v) for v in text.strip("()[]").split(","))
        if isinstance(current, list):
            return json.loads(text)
    except (ValueError, json.JSONDecodeError):
        raise InputFileError(f"--set {key}: cannot read {value!r} as {type(current).__name__}") from None
    if current is None:  # options that default to None (max_descriptions, waffle_words ...)
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


def apply_overrides(options: Any, overrides: Mapping[str, Any]) -> Any:
    """A copy of the dataclass ``options`` with ``overrides`` applied; dotted keys reach nested configs."""
    for key, value in overrides.items():
        options = _set(options, key.split("."), value, key)
    return options


def _set(obj: Any, path: list[str], value: Any, key: str) -> Any:
    names = {f.name for f in dataclasses.fields(obj)}
    if path[0] not in names:
        raise InputFileError(f"unknown option {key!r}; {type(obj).__name__} has: {', '.join(sorted(names))}")
    current = getattr(obj, path[0])
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise InputFileError(f"option {key!r}: {path[0]} has no sub-options")
        return dataclasses.replace(obj, **{path[0]: _set(current, path[1:], value, key)})
    return dataclasses.replace(obj, **{path[0]: _coerce(key, value, current)})


# ---- configuration and planning ------------------------------------------------------------------
@dataclass
class ReproduceConfig:
    """Everything a preset run needs besides the preset (the CLI fills it from its arguments).

    Attributes:
        overrides: the user's ``--set`` MethodOptions overrides, applied to every row under the row's own.
        roots: ``--root KEY=DIR``: a dataset folder given explicitly instead of under ``data_root``.
        descriptions: ``--descriptions KEY=FILE``: one description file for every method on that dataset.
        datasets: only these dataset keys (None: all of the preset's).
        published_backbone: "auto" (from the model), a backbone name ("ViT-B/16"), or None (no comparison).
    """

    data_root: Path
    data_dir: Path | None = None
    model: str = "open_clip:ViT-B-16"
    pretrained: str | None = "openai"
    seeds: tuple[int, ...] = (0,)
    output_dir: Path = Path("reproduce-results")
    limit: int | None = None
    strict: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)
    roots: dict[str, Path] = field(default_factory=dict)
    descriptions: dict[str, Path] = field(default_factory=dict)
    datasets: tuple[str, ...] | None = None
    published_backbone: str | None = "auto"
    batch_size: int = 8
    shard_size: int = 64
    view_cache: Path | None = None
    text_cache: str | None = None
    timing_images: int | None = None
    verbose: bool = False

    def backbone_name(self) -> str | None:
        if self.published_backbone == "auto":
            return published_backbone(self.model, self.pretrained)
        return self.published_backbone


@dataclass
class PlannedRun:
    """One cell of the grid: a row on a dataset, with where its inputs are and whether it can run."""

    preset: str
    dataset: str
    column: str
    loader: str
    root: Path | None
    row: str
    method: str
    overrides: dict[str, Any]
    options: dict[str, Any]
    status: str
    reason: str = ""
    descriptions: str | None = None
    published: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["root"] = None if self.root is None else str(self.root)
        return d


def resolve_root(spec: DatasetSpec, cfg: ReproduceConfig) -> Path | None:
    """The dataset's folder: ``--root KEY=DIR`` if given, else the first existing DATA_ROOT/<subdir>."""
    if spec.key in cfg.roots:
        root = Path(cfg.roots[spec.key]).expanduser()
        return root if root.is_dir() else None
    for sub in spec.subdirs:
        candidate = Path(cfg.data_root).expanduser() / sub
        if candidate.is_dir():
            return candidate
    return None


def _declared(spec: DatasetSpec, data_dir: Path | None, kind: str) -> Path | None:
    """A shared-data file the dataset declares, if ``data_dir`` holds it."""
    if data_dir is None:
        return None
    try:
        rel = dataset_info(spec.loader).resources().get(kind)
    except AbsclipError:
        return None
    path = Path(data_dir) / rel if rel else None
    return path if path is not None and path.is_file() else None


def description_source(spec: DatasetSpec, method: str, cfg: ReproduceConfig) -> Path | None:
    """The description file ``method`` reads on ``spec``: ``--descriptions KEY=FILE``, else the data
    dir's CuPL file (ImageNet: ``cupl.json`` if present, else the ``cupl-base.json`` sentences) or CLIP-D file."""
    if spec.key in cfg.descriptions:
        return Path(cfg.descriptions[spec.key])
    kind = DESCRIPTION_KIND.get(method, "cupl")
    for k in (kind, "cupl-base") if kind == "cupl" else (kind,):
        found = _declared(spec, cfg.data_dir, k)
        if found is not None:
            return found
    return None


def _needs_descriptions(method: str) -> bool:
    return bool(getattr(METHODS.get(method), "needs_descriptions", False))


def row_overrides(row: Row, cfg: ReproduceConfig) -> dict[str, Any]:
    """Reference settings, then the user's ``--set``, then the row's own: what the row runs with."""
    return {**REFERENCE_OVERRIDES, **cfg.overrides, **row.overrides}


def plan_preset(preset: Preset, cfg: ReproduceConfig, published: Published | None = None) -> list[PlannedRun]:
    """The grid of runs ``preset`` would launch, from the file system alone (no model, no image listing)."""
    published = published or load_published()
    backbone = cfg.backbone_name()
    specs = [d for d in preset.datasets if cfg.datasets is None or d.key in cfg.datasets]
    if cfg.datasets is not None:
        unknown = sorted(set(cfg.datasets) - {d.key for d in preset.datasets})
        if unknown:
            raise InputFileError(f"{preset.name} has no dataset {', '.join(unknown)}; it has: "
                                 f"{', '.join(d.key for d in preset.datasets)}")
    grid = []
    for spec in specs:
        root = resolve_root(spec, cfg)
        for row in preset.rows:
            merged = row_overrides(row, cfg)
            apply_overrides(MethodOptions(), merged)  # unknown keys fail here, before anything runs
            desc = description_source(spec, row.method, cfg) if _needs_descriptions(row.method) else None
            if not row.expressible:
                status, reason = NOT_EXPRESSIBLE, row.note
            elif root is None:
                where = (cfg.roots[spec.key] if spec.key in cfg.roots
                         else " or ".join(str(Path(cfg.data_root) / s) for s in spec.subdirs))
                status, reason = MISSING_DATA, f"no folder {where}"
            elif _needs_descriptions(row.method) and desc is None:
                status, reason = MISSING_DESCRIPTIONS, (
                    f"{row.method} needs descriptions: pass --data-dir holding the dataset's descriptions "
                    f"or --descriptions {spec.key}=FILE")
            else:
                status, reason = READY, ""
            grid.append(PlannedRun(
                preset=preset.name, dataset=spec.key, column=spec.column, loader=spec.loader, root=root,
                row=row.label, method=row.method, overrides=dict(row.overrides), options=merged, status=status,
                reason=reason, descriptions=None if desc is None else str(desc),
                published=published.value(preset.table, backbone, spec.key, row.published),
            ))
    return grid


def _fmt_overrides(overrides: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in overrides.items()) or "(defaults)"


def format_grid(preset: Preset, cfg: ReproduceConfig, grid: Sequence[PlannedRun]) -> str:
    """The dry-run listing: per dataset its folder and each row's method, overrides and status."""
    counts: dict[str, int] = {}
    for run in grid:
        counts[run.status] = counts.get(run.status, 0) + 1
    lines = [f"{preset.name}: {preset.title} — {len(grid)} runs ("
             + ", ".join(f"{n} {s}" for s, n in counts.items()) + ")",
             f"  model {cfg.model} ({cfg.pretrained}), seeds {','.join(map(str, cfg.seeds))}, limit {cfg.limit}; "
             f"published column: {cfg.backbone_name() or 'none'} of {preset.table or 'nothing'}",
             f"  every row: {_fmt_overrides({**REFERENCE_OVERRIDES, **cfg.overrides})}"]
    width = max((len(r.row) for r in grid), default=10)
    current = None
    for run in grid:
        if run.dataset != current:
            current = run.dataset
            missing = next((r.reason for r in grid if r.dataset == run.dataset and r.status == MISSING_DATA), None)
            where = f"MISSING ({missing}): skipped" if missing else str(run.root)
            lines.append(f"  {run.dataset} [{run.loader}] <- {where}")
        pub = "" if run.published is None else f"  published {run.published:.2f}"
        status = {READY: "", MISSING_DATA: "  [skipped]"}.get(run.status, f"  [{run.status}]")
        if run.status == MISSING_DESCRIPTIONS:
            status = f"  [{run.status}: {run.reason}]"
        lines.append(f"    {run.row:<{width}}  {run.method:<7} {_fmt_overrides(run.overrides)}{pub}{status}")
    for row in preset.rows:
        if not row.expressible:
            lines.append(f"  not expressible: {row.label}: {row.note}")
    if preset.timing is not None:
        lines.append(f"  timing: clip and abs at N in {', '.join(map(str, preset.timing.crops))} on "
                     f"{_timing_images(preset, cfg)} {preset.timing.dataset} images")
    if preset.note:
        lines.append(f"  note: {preset.note}")
    return "\n".join(lines)


def dry_run(preset: Preset, cfg: ReproduceConfig, out: Callable[[str], None] | None = print) -> list[dict[str, Any]]:
    """Print and return the grid ``preset`` would launch, without loading models or data."""
    grid = plan_preset(preset, cfg)
    if out is not None:
        out(format_grid(preset, cfg, grid))
    return [r.to_dict() for r in grid]


# ---- running -------------------------------------------------------------------------------------
@dataclass
@dataclass
class ReproduceReport:
    """What a preset run produced (also written to ``output_dir``)."""

    records: list[dict[str, Any]]
    grid: list[PlannedRun]
    comparison: dict[str, Any]
    markdown: str
    paths: dict[str, Path]
    timing: dict[str, Any] | None = None


def _stderr(msg: str) -> None:
    print(f"absclip: {msg}", file=sys.stderr)


def _dataset_options(spec: DatasetSpec, method: str, cfg: ReproduceConfig) -> dict[str, Any]:
    """Per-dataset inputs of the text side that the reference varies by dataset (DESIGN.md §1)."""
    out: dict[str, Any] = {}
    if method == "clip-e" and not spec.imagenet_labels:
        templates = _declared(spec, cfg.data_dir, "clip-e")
        if templates is not None:
            out["templates"] = str(templates)
    if method == "waffle" and cfg.data_dir is not None and (Path(cfg.data_dir) / "waffle_word_list.json").is_file():
        out["waffle_words"] = json.loads((Path(cfg.data_dir) / "waffle_word_list.json").read_text(encoding="utf-8"))
        out["_waffle_words_file"] = str(Path(cfg.data_dir) / "waffle_word_list.json")
    return out


def _options_for(spec: DatasetSpec, row: Row, cfg: ReproduceConfig) -> tuple[MethodOptions, dict[str, Any]]:
    """The row's MethodOptions on ``spec``, and bookkeeping (keys starting with '_') for its records."""
    derived = _dataset_options(spec, row.method, cfg)
    info = {k: derived.pop(k) for k in list(derived) if k.startswith("_")}
    merged = {**REFERENCE_OVERRIDES, **derived, **cfg.overrides, **row.overrides}
    return apply_overrides(MethodOptions(), merged), info


def _saliency_of(method: str, options: MethodOptions) -> str | None:
    return options.saliency if create_method(method, options).view_config().crops == "abs" else None


def _openai_names(spec: DatasetSpec, method: str, cfg: ReproduceConfig) -> Path | None:
    if not (spec.imagenet_labels and method in OPENAI_NAMES_METHODS):
        return None
    return _declared(spec, cfg.data_dir, "classnames-openai")


def run_preset(preset: Preset, cfg: ReproduceConfig, backbone_factory: Callable[[], Backbone],
               published: Published | None = None, log: Callable[[str], None] = _stderr) -> ReproduceReport:
    """Run every ready cell of ``preset``, write results.jsonl, results.md and published_comparison.json.

    Missing dataset folders and description files are reported and skipped unless ``cfg.strict``.
    """
    published = published or load_published()
    grid = plan_preset(preset, cfg, published)
    problems = [r for r in grid if r.status in (MISSING_DATA, MISSING_DESCRIPTIONS)]
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
    datasets: dict[tuple[str, str | None], LabelledImages] = {}
    for run in ready:
        spec = specs[run.dataset]
        names = _openai_names(spec, run.method, cfg)
        key = (run.dataset, None if names is None else str(names))
        if key not in datasets:
            classes = None if names is None else load_classes(names)
            assert run.root is not None
            datasets[key] = select_subset(create_dataset(spec.loader, run.root, class_names=classes,
                                                         data_dir=cfg.data_dir), cfg.limit)
            if not len(datasets[key]):
                raise InputFileError(f"{spec.key}: no images under {run.root}")

    records: list[dict[str, Any]] = []
    timing = None
    timed = preset.timing is not None and (cfg.datasets is None or preset.timing.dataset in cfg.datasets)
    if ready or timed:
        backbone = backbone_factory()
        pool: dict[str, SaliencySource] = {}
        for dataset_key in dict.fromkeys(r.dataset for r in ready):
            spec = specs[dataset_key]
            runs = [r for r in ready if r.dataset == dataset_key]
            for group in _groups(spec, runs, rows, cfg):
                records.extend(_run_group(preset, spec, group, rows, cfg, backbone, datasets, pool, log))
        if timed:
            timing = _run_timing(preset, cfg, backbone, specs, pool, published, log)
    return write_report(preset, cfg, grid, records, published, timing)


def _groups(spec: DatasetSpec, runs: list[PlannedRun], rows: Mapping[str, Row],
            cfg: ReproduceConfig) -> list[list[PlannedRun]]:
    """Runs of one dataset grouped by (class-name list, saliency source): one evaluator each.

    Full-image methods (no saliency) join the first group with the same class names.
    """
    keyed: list[tuple[tuple[str | None, str | None], PlannedRun]] = []
    for run in runs:
        opts, _ = _options_for(spec, rows[run.row], cfg)
        names = _openai_names(spec, run.method, cfg)
        keyed.append(((None if names is None else str(names), _saliency_of(run.method, opts)), run))
    groups: dict[tuple[str | None, str | None], list[PlannedRun]] = {}
    for key, run in keyed:
        if key[1] is not None:
            groups.setdefault(key, []).append(run)
    for key, run in keyed:
        if key[1] is None:
            target = next((k for k in groups if k[0] == key[0]), key)
            groups.setdefault(target, []).append(run)
    return list(groups.values())


def _run_group(preset: Preset, spec: DatasetSpec, group: list[PlannedRun], rows: Mapping[str, Row],
               cfg: ReproduceConfig, backbone: Backbone, datasets: Mapping[tuple[str, str | None], LabelledImages],
               pool: dict[str, SaliencySource], log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Run one evaluator over ``group`` (rows sharing class names and saliency) and return its records."""
    names = _openai_names(spec, group[0].method, cfg)
    dataset = datasets[(spec.key, None if names is None else str(names))]
    options: dict[str, MethodOptions] = {}
    info: dict[str, dict[str, Any]] = {}
    descriptions: dict[str, Descriptions | None] = {}
    loaded: dict[str, Descriptions] = {}
    for run in group:
        options[run.row], info[run.row] = _options_for(spec, rows[run.row], cfg)
        if run.descriptions is None:
            descriptions[run.row] = None
            continue
        if run.descriptions not in loaded:
            loaded[run.descriptions] = load_descriptions(dataset.classes, run.descriptions)
        descriptions[run.row] = loaded[run.descriptions]
    labels = [run.row for run in group]
    log(f"{preset.name}: {spec.key}: {len(dataset)} images, rows {', '.join(labels)}")

    def progress(seed: int, done: int, total: int) -> None:
        log(f"{preset.name}: {spec.key}: seed {seed}: {done}/{total} images")

    evaluator = Evaluator(
        backbone=backbone, dataset=dataset, methods=labels, seeds=list(cfg.seeds), options=options,
        descriptions=descriptions, view_cache=cfg.view_cache, shard_size=cfg.shard_size,
        batch_size=cfg.batch_size, text_cache=cfg.text_cache, progress=progress if cfg.verbose else None,
        method_names={run.row: run.method for run in group}, saliency_pool=pool,
    )
    result = evaluator.run()
    by_label = {run.row: run for run in group}
    out = []
    for rec in make_records(result, cfg.model, cfg.pretrained, {"limit": cfg.limit}):
        run = by_label[rec["method"]]
        settings = rec["settings"]
        if settings.get("waffle_words") is not None:  # thousands of words: keep the file name instead
            settings["waffle_words"] = info[run.row].get("_waffle_words_file", f"{len(settings['waffle_words'])} words")
        settings["descriptions"] = run.descriptions
        settings["classnames"] = None if names is None else str(names)
        rec.update(preset=preset.name, row=run.row, method=run.method, dataset_key=spec.key, column=spec.column,
                   overrides=run.options)
        out.append(rec)
    return out


# ---- the report ----------------------------------------------------------------------------------
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
            pub = published.entry(preset.table, backbone, spec.key, row.published)
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
            pub = published.entry(preset.table, backbone, pub_key, row.published,
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
    lines.append("")
    avg_head = []
    if preset.average is not None:
        avg_head = ["Avg. gain over " + preset.average.partition(":")[2]] if preset.average.startswith("gain:") \
            else ["Avg"]
    header = ["Method", *[d.column for d in specs], *avg_head]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|---|" + "---:|" * (len(header) - 1))
    cells = {(c["row"], c["dataset"]): c for c in comparison["cells"]}
    averages = {a["row"]: a for a in comparison["average"]}
    status = {(r["row"], r["dataset"]): r["status"] for r in comparison["skipped"]}
    for row in preset.rows:
        out = [row.label]
        for spec in specs:
            c = cells[(row.label, spec.key)]
            if c["ours"] is not None:
                out.append(format_cell(c["ours"], c["published"], c["ours_std"]))
            elif status.get((row.label, spec.key)) == NOT_EXPRESSIBLE:
                out.append("n/a" + ("" if c["published"] is None else f" ({c['published']:.2f})"))
            else:
                out.append("—" + ("" if c["published"] is None else f" ({c['published']:.2f})"))
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
    lines += ["", f"Every row runs with {_fmt_overrides({**REFERENCE_OVERRIDES, **cfg.overrides})} under its own "
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


# ---- Table 9: time per stage ---------------------------------------------------------------------
def _timing_images(preset: Preset, cfg: ReproduceConfig) -> int:
    assert preset.timing is not None
    n = cfg.timing_images or preset.timing.images
    return min(n, cfg.limit) if cfg.limit else n


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_stage_times(backbone: Backbone, images: Sequence[torch.Tensor], crops: Sequence[int],
                        options: MethodOptions, saliency: SaliencySource,
                        batch_size: int = 8) -> dict[str, dict[str, float]]:
    """Seconds per image of 'crop+preprocess' and 'encoding' for CLIP and for ABS at each N.

    As the paper splits them: crop+preprocess = the full image's preprocessing, plus for ABS the
    saliency pass, crop sampling and the batched crop+resize of all N boxes (raw-space selection);
    encoding = every encoder call, for ABS the raw crops and the feature windows (feature selection).
    Stages are timed around the same library calls the evaluator's view extraction makes, with a
    device synchronisation at each boundary; one untimed warm-up batch runs first.
    """
    bb = backbone
    dev = bb.device
    step = options.micro_batch or default_micro_batch(dev)

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        return torch.cat([bb.encode_image(pixels[i: i + step]) for i in range(0, len(pixels), step)])

    def clip_pass(batch: Sequence[torch.Tensor]) -> tuple[float, float]:
        t0 = time.perf_counter()
        pixels = preprocess_images(batch, bb.preprocess)
        _sync(dev)
        t1 = time.perf_counter()
        encode(pixels)
        _sync(dev)
        return t1 - t0, time.perf_counter() - t1

    def abs_pass(extractor: ViewExtractor, batch: Sequence[torch.Tensor], keys: Sequence[str]) -> tuple[float, float]:
        cfg = extractor.config
        t0 = time.perf_counter()
        plans = extractor.make_plans(batch, keys)
        pixels = preprocess_images(batch, bb.preprocess)
        crop_pixels = (torch.cat([crop_resize(im, torch.tensor(p.boxes), bb.preprocess)
                                  for im, p in zip(batch, plans, strict=True)]) if cfg.raw else None)
        _sync(dev)
        t1 = time.perf_counter()
        if cfg.feature:
            tokens = bb.tokens_before_block(pixels, extractor.layer)
            bb.finish_from_block(tokens, extractor.layer)
            n = len(plans[0].windows)
            windows = torch.tensor([w for p in plans for w in p.windows], device=tokens.device)
            owner = torch.arange(len(plans), device=tokens.device).repeat_interleave(n)
            for i in range(0, len(windows), step):
                bb.finish_from_block(zoom_windows(tokens, owner[i: i + step], windows[i: i + step]), extractor.layer)
        else:
            encode(pixels)
        if crop_pixels is not None:
            encode(crop_pixels)
        _sync(dev)
        return t1 - t0, time.perf_counter() - t1

    images = [im.to(dev) for im in images]
    batches = [images[i: i + batch_size] for i in range(0, len(images), batch_size)]
    keys = [[f"timing-{i + j}" for j in range(len(b))] for i, b in zip(range(0, len(images), batch_size), batches,
                                                                      strict=True)]
    n_images = len(images)

    def config(n: int) -> ViewConfig:
        o = options
        return ViewConfig(crops="abs", raw=o.raw, feature=o.feature, feature_layer=o.feature_layer,
                          raw_augment=o.raw_augment, feature_augment=o.feature_augment,
                          abs=dataclasses.replace(o.abs_sampler, crops=n), seed=o.seed, micro_batch=o.micro_batch)

    clip_pass(batches[0][:1])  # warm-up: allocator, kernels, lazy init
    abs_pass(ViewExtractor(bb, config(min(crops)), saliency), batches[0][:1], keys[0][:1])
    out: dict[str, dict[str, float]] = {}
    pre = enc = 0.0
    for batch in batches:
        a, b = clip_pass(batch)
        pre, enc = pre + a, enc + b
    out["clip"] = {"crop+preprocess": pre / n_images, "encoding": enc / n_images, "total": (pre + enc) / n_images}
    for n in crops:
        extractor = ViewExtractor(bb, config(n), saliency)
        pre = enc = 0.0
        for batch, k in zip(batches, keys, strict=True):
            a, b = abs_pass(extractor, batch, k)
            pre, enc = pre + a, enc + b
        out[f"abs:N={n}"] = {"crop+preprocess": pre / n_images, "encoding": enc / n_images,
                             "total": (pre + enc) / n_images}
    return out


TIMING_STAGES = ("crop+preprocess", "encoding", "total")


def _run_timing(preset: Preset, cfg: ReproduceConfig, backbone: Backbone, specs: Mapping[str, DatasetSpec],
                pool: dict[str, SaliencySource], published: Published,
                log: Callable[[str], None]) -> dict[str, Any] | None:
    timing = preset.timing
    assert timing is not None
    spec = specs[timing.dataset]
    root = resolve_root(spec, cfg)
    if root is None:
        if cfg.strict:
            raise InputFileError(f"{preset.name}: timing needs {spec.key} images; no folder under {cfg.data_root}")
        log(f"{preset.name}: timing skipped: no {spec.key} folder")
        return None
    n = _timing_images(preset, cfg)
    dataset = select_subset(create_dataset(spec.loader, root, data_dir=cfg.data_dir), n)
    images = [image_to_tensor(im) for _, im, err in iter_loaded([p for p, _ in dataset.samples])
              if err is None and im is not None]
    if not images:
        raise InputFileError(f"{spec.key}: no readable image to time under {root}")
    abs_row = next((r for r in preset.rows if r.method == "abs"), Row("ABS", "abs"))
    options = apply_overrides(MethodOptions(), {**REFERENCE_OVERRIDES, **cfg.overrides,
                                                **{k: v for k, v in abs_row.overrides.items()
                                                   if k != "abs_sampler.crops"}})
    if options.saliency not in pool:
        pool[options.saliency] = create_saliency(options.saliency, backbone)
    log(f"{preset.name}: timing clip and abs (N = {', '.join(map(str, timing.crops))}) on {len(images)} images")
    times = measure_stage_times(backbone, images, timing.crops, options, pool[options.saliency], cfg.batch_size)
    backbone_name = cfg.backbone_name()
    pub = {m: {s: published.value(preset.table, backbone_name, spec.key, m, f"seconds_per_image:{s}")
               for s in TIMING_STAGES} for m in times}
    return {"dataset": spec.key, "images": len(images), "device": str(backbone.device), "batch_size": cfg.batch_size,
            "crops": list(timing.crops), "seconds_per_image": times, "published": pub,
            "published_note": "published times: NVIDIA RTX 4090 (the paper's GPU); not comparable across machines"}


def render_timing(timing: Mapping[str, Any]) -> str:
    """Table 9's layout: stages × (CLIP, N = ...), seconds per image, the paper's time in parentheses."""
    methods = list(timing["seconds_per_image"])
    head = ["Process step", *["CLIP" if m == "clip" else m.split(":", 1)[1] for m in methods]]
    lines = [f"## Time per image ({timing['images']} {timing['dataset']} images on {timing['device']}, "
             f"batch {timing['batch_size']})", "",
             "Seconds per image; in parentheses the paper's (RTX 4090; hardware differs, so no delta).", "",
             "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for stage in TIMING_STAGES:
        cells = []
        for m in methods:
            ours = timing["seconds_per_image"][m][stage]
            pub = timing["published"].get(m, {}).get(stage)
            cells.append(f"{ours:.4f}" + ("" if pub is None else f" ({pub:.4f})"))
        lines.append(f"| {stage[0].upper() + stage[1:]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def check_row_options(preset: Preset) -> None:
    """Raise if a row's overrides name an unknown option (the tests run this over every preset)."""
    for row in preset.rows:
        try:
            apply_overrides(MethodOptions(), row.overrides)
        except InputFileError as exc:
            raise UnsupportedError(f"{preset.name} row {row.label!r}: {exc}") from exc
