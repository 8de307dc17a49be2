"""Plan a preset run from the file system alone: the grid of dataset folder × row, each with its
inputs and whether it can run (no model is loaded and no dataset is listed)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import DataFiles, train_split_datasets
from ..errors import InputFileError
from ..methods import METHODS, MethodOptions
from ..methods.llm import unreachable_reason
from .overrides import apply_overrides
from .presets import DATASETS, REFERENCE_OVERRIDES, DatasetSpec, Preset, Row
from .published import Published, load_published, published_backbone

READY = "ready"
MISSING_DATA = "missing data"
MISSING_DESCRIPTIONS = "missing descriptions"
MISSING_SUPPORT = "missing support"
MISSING_LLM = "missing LLM"
NOT_EXPRESSIBLE = "not expressible"


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

    def files(self, spec: DatasetSpec) -> DataFiles:
        """The shared-data files of ``spec``'s dataset under ``data_dir``."""
        return DataFiles(spec.loader, self.data_dir)

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


def description_source(spec: DatasetSpec, method: str, cfg: ReproduceConfig) -> Path | None:
    """The description file ``method`` reads on ``spec``: ``--descriptions KEY=FILE``, else the data
    dir's file of the method's description kind (ImageNet's CuPL falls back to ``cupl-base.json``)."""
    kind = METHODS.get(method).description_kind
    if kind is None:
        return None
    if spec.key in cfg.descriptions:
        return Path(cfg.descriptions[spec.key])
    return cfg.files(spec).descriptions(kind)


def llm_problem(method: str, options: MethodOptions) -> str | None:
    """Why a row that asks an LLM while it scores (FuDD) cannot reach one, with the fix; None when it can."""
    if not METHODS.get(method).needs_llm:
        return None
    reason = unreachable_reason(options.llm)
    return None if reason is None else f"{method}: {reason}"


def support_problem(spec: DatasetSpec, method: str, options: MethodOptions, cfg: ReproduceConfig) -> str | None:
    """Why a few-shot row cannot get its support set on ``spec``, with the fix; None when it can (or needs none).

    Checked from the options and the file system alone, so ``--dry-run`` shows it and a real run stops
    before any model loads: ``adapt.support`` must be a folder, or ``adapt.support_split=train`` a split
    the dataset's loader can list."""
    if not getattr(METHODS.get(method), "needs_support", False):
        return None
    adapt = options.adapt
    fix = "--set adapt.support=DIR (an ImageFolder of labelled images, one folder per class)"
    if spec.imagenet_labels:  # ABS Table 3: ImageNet's train split is the support of all five columns
        fix = (f"--set adapt.support={_imagenet_train(cfg) or 'IMAGENET_ROOT/train'} (ImageNet's train split, the "
               "support of every ImageNet column)")
    if adapt.support_split is not None:
        if spec.loader in train_split_datasets():
            return None
        return f"{method}: {spec.loader} has no train split for adapt.support_split={adapt.support_split}; pass {fix}"
    if adapt.support is None:
        split = " or --set adapt.support_split=train" if spec.loader in train_split_datasets() else ""
        return f"{method} is few-shot and has no support set: pass {fix}{split}"
    if not Path(adapt.support).expanduser().is_dir():
        return f"{method}: adapt.support={adapt.support} is not a directory; pass {fix}"
    return None


def _imagenet_train(cfg: ReproduceConfig) -> Path | None:
    """ImageNet's train folder where the ImageNet column's folder holds one, for the fix a dry run prints."""
    root = resolve_root(DATASETS["imagenet"], cfg)
    if root is None:
        return None
    train = root / "train" if (root / "train").is_dir() else root.parent / "train"
    return train if train.is_dir() else None


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
            options = apply_overrides(MethodOptions(), merged)  # unknown keys fail here, before anything runs
            needs = METHODS.get(row.method).needs_descriptions
            desc = description_source(spec, row.method, cfg)
            support = support_problem(spec, row.method, options, cfg) if row.expressible else None
            if not row.expressible:
                status, reason = NOT_EXPRESSIBLE, row.note
            elif root is None:
                where = (cfg.roots[spec.key] if spec.key in cfg.roots
                         else " or ".join(str(Path(cfg.data_root) / s) for s in spec.subdirs))
                status, reason = MISSING_DATA, f"no folder {where}"
            elif support is not None:
                status, reason = MISSING_SUPPORT, support
            elif row.expressible and (llm := llm_problem(row.method, options)) is not None:
                status, reason = MISSING_LLM, llm
            elif needs and desc is None:
                status, reason = MISSING_DESCRIPTIONS, (
                    f"{row.method} needs descriptions: pass --data-dir holding the dataset's descriptions "
                    f"or --descriptions {spec.key}=FILE")
            else:
                status, reason = READY, ""
            grid.append(PlannedRun(
                preset=preset.name, dataset=spec.key, column=spec.column, loader=spec.loader, root=root,
                row=row.label, method=row.method, overrides=dict(row.overrides), options=merged, status=status,
                reason=reason, descriptions=None if desc is None else str(desc),
                published=published.value(preset.table_of(row), backbone, spec.key, row.published),
            ))
    return grid


def fmt_overrides(overrides: Mapping[str, Any]) -> str:
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
             f"  every row: {fmt_overrides({**REFERENCE_OVERRIDES, **cfg.overrides})}"]
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
        if run.status in (MISSING_DESCRIPTIONS, MISSING_SUPPORT):
            status = f"  [{run.status}: {run.reason}]"
        lines.append(f"    {run.row:<{width}}  {run.method:<7} {fmt_overrides(run.overrides)}{pub}{status}")
    for row in preset.rows:
        if not row.expressible:
            lines.append(f"  not expressible: {row.label}: {row.note}")
    if preset.timing is not None:
        lines.append(f"  timing: clip and abs at N in {', '.join(map(str, preset.timing.crops))} on "
                     f"{timing_image_count(preset, cfg)} {preset.timing.dataset} images")
    if preset.note:
        lines.append(f"  note: {preset.note}")
    return "\n".join(lines)


def dry_run(preset: Preset, cfg: ReproduceConfig, out: Callable[[str], None] | None = print) -> list[dict[str, Any]]:
    """Print and return the grid ``preset`` would launch, without loading models or data."""
    grid = plan_preset(preset, cfg)
    if out is not None:
        out(format_grid(preset, cfg, grid))
    return [r.to_dict() for r in grid]


def timing_image_count(preset: Preset, cfg: ReproduceConfig) -> int:
    assert preset.timing is not None
    n = cfg.timing_images or preset.timing.images
    return min(n, cfg.limit) if cfg.limit else n
