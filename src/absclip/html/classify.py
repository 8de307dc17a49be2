"""The classify report: every image with its top-k labels, filters, and the crops ABS chose.

Input is what ``absclip classify --output`` writes: JSONL records
``{"path", "label", "score", "top_k": [{"label", "index", "score"}, ...], "error"}`` or the CSV with the
columns ``path, label, score, top_k_labels, top_k_scores, error``. Crop plans (``absclip.plan`` v1, from
``--save-plans``) are matched to results by image key, which classify sets to the path it reports.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..errors import InputFileError
from ..labelling.stream import read_csv_records
from ..views.plans import CropPlan, read_plans
from ._classify_assets import CLASSIFY_CSS, CLASSIFY_JS
from .page import document, esc, write_page
from .thumbs import DEFAULT_THUMB_SIZE, Thumbnail, make_thumbnails, write_thumbnail_folder

DEFAULT_PAGE_SIZE = 100
THUMB_MODES = ("embed", "folder")
# The VLM input side feature windows are mapped back through (all of absclip's CLIP defaults use 224);
# a different side moves a window's drawn edges by under one token cell's rounding.
DEFAULT_INPUT_SIZE = 224


@dataclass
class ClassifyRecord:
    path: str
    label: str | None
    score: float | None
    top_k: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    @property
    def margin(self) -> float | None:
        """Top-1 minus top-2 probability: small means the model hesitated between two labels."""
        if not self.top_k:
            return None
        second = self.top_k[1][1] if len(self.top_k) > 1 else 0.0
        return self.top_k[0][1] - second


def read_classify_results(path: str | os.PathLike[str]) -> list[ClassifyRecord]:
    """Records of a classify ``.jsonl`` or ``.csv`` output, in file order."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"results file not found: {path}")
    if path.suffix.lower() == ".csv":
        return _read_csv(path)
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputFileError(f"{path}:{n}: not valid JSON ({exc})") from exc
        records.append(_record(raw, f"{path}:{n}"))
    return records


def _record(raw: Any, where: str) -> ClassifyRecord:
    if not isinstance(raw, dict) or not isinstance(raw.get("path"), str):
        raise InputFileError(f"{where}: not a classify result (a JSON object with a 'path' string)")
    top = []
    for entry in raw.get("top_k") or []:
        if not isinstance(entry, dict) or "label" not in entry or not isinstance(entry.get("score"), (int, float)):
            raise InputFileError(f"{where}: each top_k entry needs a 'label' and a numeric 'score'")
        top.append((str(entry["label"]), float(entry["score"])))
    score = raw.get("score")
    if score is not None and not isinstance(score, (int, float)):
        raise InputFileError(f"{where}: 'score' must be a number or null")
    label = raw.get("label")
    error = raw.get("error")
    return ClassifyRecord(raw["path"], None if label is None else str(label),
                          None if score is None else float(score), top, None if error is None else str(error))


def _read_csv(path: Path) -> list[ClassifyRecord]:
    return [_record(raw, f"{path}") for raw in read_csv_records(path)]


def resolve_image(path: str, results_dir: Path, root: Path | None) -> Path:
    """Where an image named in the results is now: under ``root`` if given, else as written (relative
    to the current directory, as classify saw it), else beside the results file."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    if root is not None:
        return root / p
    if p.exists():
        return p
    return results_dir / p


def plan_overlay(plan: CropPlan, input_size: int = DEFAULT_INPUT_SIZE) -> dict[str, Any]:
    """A plan in original pixels for drawing: raw boxes as they are, feature windows mapped back from
    the token grid through the VLM's resize-shortest-side and centre crop, and that crop's extent."""
    from ..pixels.geometry import crop_extents
    from ..pixels.spec import PreprocessSpec

    out: dict[str, Any] = {"width": plan.width, "height": plan.height, "grid": plan.grid, "seed": plan.seed,
                           "sampler": plan.sampler, "boxes": [list(b) for b in plan.boxes],
                           "cells": [list(w) for w in plan.windows], "windows": [], "gridArea": None}
    if plan.grid and plan.windows:
        x0, y0, x1, y1 = crop_extents([(plan.width, plan.height)], PreprocessSpec(size=input_size))[0].tolist()
        cw, ch = (x1 - x0) / plan.grid, (y1 - y0) / plan.grid
        out["gridArea"] = [round(v, 2) for v in (x0, y0, x1, y1)]
        out["windows"] = [[round(x0 + c0 * cw, 2), round(y0 + r0 * ch, 2), round(x0 + c1 * cw, 2),
                           round(y0 + r1 * ch, 2)] for r0, c0, r1, c1 in plan.windows]
    return out


def _match_plans(records: Sequence[ClassifyRecord], plans: Mapping[str, CropPlan]) -> tuple[list[CropPlan | None], int]:
    """The plan of each record (by exact key, then by normalised path) and how many plans matched none."""
    by_norm = {os.path.normpath(k): p for k, p in plans.items()}
    matched: list[CropPlan | None] = []
    used: set[int] = set()
    for r in records:
        plan = plans.get(r.path) or by_norm.get(os.path.normpath(r.path))
        matched.append(plan)
        if plan is not None:
            used.add(id(plan))
    return matched, len({id(p) for p in plans.values()} - used)


def _href(image: Path, html_dir: Path) -> str:
    """A relative link from the page to the original image (works while both stay where they are)."""
    try:
        rel = os.path.relpath(image.resolve(), html_dir.resolve())
    except ValueError:  # another drive on Windows
        return image.resolve().as_uri()
    return quote(Path(rel).as_posix())


def build_classify_data(records: Sequence[ClassifyRecord], thumbs: Sequence[Thumbnail | None],
                        sources: Sequence[str | None], plans: Sequence[CropPlan | None],
                        hrefs: Sequence[str | None], *, title: str, results_name: str,
                        page_size: int = DEFAULT_PAGE_SIZE, input_size: int = DEFAULT_INPUT_SIZE,
                        unmatched_plans: int = 0) -> dict[str, Any]:
    """What the page's script renders: one item per classified image, the unreadable ones apart."""
    items, errors = [], []
    for i, (r, thumb, src, plan, href) in enumerate(zip(records, thumbs, sources, plans, hrefs, strict=True)):
        if r.error is not None or not r.top_k:
            errors.append({"path": r.path, "error": r.error or "no labels in the results"})
            continue
        item: dict[str, Any] = {
            "i": i, "path": r.path, "name": Path(r.path).name, "label": r.label or r.top_k[0][0],
            "score": r.score if r.score is not None else r.top_k[0][1], "margin": r.margin,
            "topk": [[lab, s] for lab, s in r.top_k], "thumb": src, "href": href,
            "thumbError": None if thumb is None else thumb.error,
            "size": None if thumb is None or thumb.jpeg is None else [thumb.width, thumb.height],
        }
        if plan is not None:
            item["plan"] = plan_overlay(plan, input_size)
        items.append(item)
    counts = Counter(it["label"] for it in items)
    return {
        "kind": "classify", "title": title, "results": results_name, "pageSize": page_size,
        "items": items, "errors": errors,
        "labels": sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])),
        "withPlans": sum(1 for it in items if "plan" in it), "unmatchedPlans": unmatched_plans,
    }


def render_classify_page(data: dict[str, Any]) -> str:
    title = data["title"]
    body = f"""<header>
<h1>{esc(title)}</h1>
<p class="muted" id="summary"></p>
<noscript><p>This report draws its grid with JavaScript; enable it to see the images.</p></noscript>
</header>
<nav id="controls" aria-label="filter and sort">
<label>Predicted label <select id="label-filter"></select></label>
<label>File name <input id="search" type="search" placeholder="part of the path" autocomplete="off"></label>
<label>Sort <select id="sort">
<option value="file">file order</option>
<option value="confidence-desc">confidence, highest first</option>
<option value="confidence-asc">confidence, lowest first</option>
<option value="margin-asc">margin between top two, smallest first</option>
<option value="margin-desc">margin between top two, largest first</option>
</select></label>
<label>Per page <select id="page-size"><option>50</option><option>100</option><option>200</option>
<option>500</option></select></label>
<span class="pager"><button type="button" id="prev">&#8592; previous</button>
<span id="page-info"></span><button type="button" id="next">next &#8594;</button></span>
<span id="count" class="muted"></span>
</nav>
<main id="grid" aria-live="polite"></main>
<section id="errors"></section>
<dialog id="detail" aria-label="image detail">
<form method="dialog"><button class="close" aria-label="close">&#10005;</button></form>
<div id="detail-body"></div>
</dialog>"""
    return document(title, body, CLASSIFY_CSS, CLASSIFY_JS, data)


PlansArg = str | os.PathLike[str] | Mapping[str, CropPlan] | Sequence[CropPlan] | None


def write_classify_report(results: str | os.PathLike[str] | Sequence[Mapping[str, Any]],
                          output: str | os.PathLike[str], plans: PlansArg = None, *,
                          title: str | None = None, root: str | os.PathLike[str] | None = None,
                          thumb_size: int = DEFAULT_THUMB_SIZE, thumbs: str = "embed",
                          page_size: int = DEFAULT_PAGE_SIZE, input_size: int = DEFAULT_INPUT_SIZE,
                          workers: int | None = None, report: Callable[[str], None] | None = None) -> Path:
    """Write one HTML page that shows a classify run.

    ``results`` is its ``.jsonl`` / ``.csv`` output, or the records themselves (dicts as classify writes
    them, for a caller that still holds them). ``plans`` is the plans file it saved, or the plans (a
    list, or a dict by image key). ``thumbs="embed"`` puts the thumbnails in the page; ``"folder"``
    writes them to ``OUTPUT_STEM_files/`` beside it, for a smaller page. Images are looked up under
    ``root`` when given, else as the results name them (relative to the current directory), else beside
    the results file. ``report`` receives notes (plans that match no image, images that could not be
    shown). Returns the page's path; the page is written atomically."""
    if thumbs not in THUMB_MODES:
        raise InputFileError(f"thumbs must be one of {', '.join(THUMB_MODES)}, got {thumbs!r}")
    if thumb_size < 16 or page_size < 1:
        raise InputFileError("thumb_size must be at least 16 and page_size at least 1")
    output = Path(output)
    source = None
    if isinstance(results, (str, os.PathLike)):
        source = Path(results)
        records, results_dir, name = read_classify_results(source), source.parent, source.name
    else:
        records = [_record(r, f"record {n}") for n, r in enumerate(results, 1)]
        results_dir, name = Path.cwd(), "the results"
    if isinstance(plans, (str, os.PathLike)):
        plan_map: Mapping[str, CropPlan] = read_plans(plans)
    elif isinstance(plans, Mapping):
        plan_map = plans
    else:
        plan_map = {p.image: p for p in plans or ()}
    matched, unmatched = _match_plans(records, plan_map)
    base = Path(root).expanduser() if root is not None else None
    images = [resolve_image(r.path, results_dir, base) if r.error is None and r.top_k else None for r in records]
    made = make_thumbnails(images, thumb_size, workers)
    if thumbs == "folder":
        sources = write_thumbnail_folder(output.parent / f"{output.stem}_files", made)
    else:
        sources = [None if t is None else t.data_uri() for t in made]
    hrefs = [None if p is None else _href(p, output.parent) for p in images]
    title = title or f"absclip: {source.name if source else output.stem}"
    data = build_classify_data(records, made, sources, matched, hrefs, title=title, results_name=name,
                               page_size=page_size, input_size=input_size, unmatched_plans=unmatched)
    if report is not None:
        if unmatched:
            report(f"{unmatched} crop plan(s) name no image in {name}")
        missing = sum(1 for t in made if t is not None and t.error is not None)
        if missing:
            report(f"{missing} classified image(s) could not be read now; their cards say why")
    return write_page(output, render_classify_page(data))
