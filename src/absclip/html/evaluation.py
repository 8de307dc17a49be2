"""The eval report: methods side by side (mean ± std over seeds), plots, and, from per-sample
predictions, per-class accuracy, the most confused class pairs and the images two methods disagree on.

It reads what ``absclip eval`` (and ``absclip reproduce``) write into their output directory:

* ``results.jsonl``: one record per dataset / method / seed, with ``metrics`` (acc1, acc5,
  mean_per_class_recall), ``n_samples`` and ``n_failed``;
* ``summary.json``: mean ± std per method (used when ``results.jsonl`` is absent);
* ``failed.jsonl``: ``{"path", "reason"}`` per unreadable image;
* ``predictions.jsonl`` (:data:`PREDICTIONS_FILE`, written by ``absclip eval``: see
  :mod:`absclip.evaluate.predictions`), one record per method × seed × image::

      {"dataset": "cub", "method": "abs", "seed": 0, "path": "/data/cub/images/001.jpg",
       "target": 12, "pred": 40, "top_k": [40, 12, 7, 3, 99], "top_k_scores": [31.2, 30.9, ...],
       "target_label": "Laysan Albatross", "pred_label": "Sooty Albatross"}

  ``dataset`` may be left out when the directory holds one dataset, ``top_k`` (class indices, best
  first) and the two labels are optional: without labels, class names come from ``classes.json`` (a
  JSON list of names in class-index order) beside it, else ``class N``.
"""

from __future__ import annotations

import os
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import InputFileError
from ..views.plans import CropPlan, read_plans
from ._eval_assets import EVAL_CSS, EVAL_JS
from .classify import DEFAULT_INPUT_SIZE, plan_overlay, resolve_image
from .eval_inputs import PREDICTIONS_FILE, DatasetRuns, Prediction, read_eval_outputs
from .page import document, esc, figure_png, pyplot, write_page
from .thumbs import DEFAULT_THUMB_SIZE, make_thumbnails

METRIC_NAMES = {"acc1": "top-1", "acc5": "top-5", "mean_per_class_recall": "mean per-class recall"}
DEFAULT_COMPARE = ("clip", "abs")
DEFAULT_MAX_IMAGES = 60
TOP_CONFUSIONS = 15


def summary_rows(ds: DatasetRuns) -> list[dict[str, Any]]:
    """Per method: seeds, samples, and mean / std (sample std, 0 for one seed) of each metric."""
    if not ds.records and ds.summary:
        rows = []
        for method, e in ds.summary["methods"].items():
            rows.append({"method": method, "seeds": list(e.get("seeds", [])), "n_samples": e.get("n_samples"),
                         **{m: (e[m]["mean"], e[m]["std"]) for m in METRIC_NAMES if m in e}})
        return rows
    by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in ds.records:
        by_method[r["method"]].append(r)
    rows = []
    for method, rs in by_method.items():
        row: dict[str, Any] = {"method": method, "seeds": [r["seed"] for r in rs], "n_samples": rs[0].get("n_samples")}
        for m in METRIC_NAMES:
            values = [float(r["metrics"][m]) for r in rs if m in r["metrics"]]
            if values:
                row[m] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
        rows.append(row)
    return rows


def per_class_accuracy(ds: DatasetRuns) -> tuple[list[int], dict[str, dict[int, float]], dict[int, int]]:
    """Classes present, accuracy per method and class (pooled over seeds: the same images at each seed, so
    this is the mean over seeds), and samples per class at one seed."""
    correct: dict[str, Counter[int]] = defaultdict(Counter)
    total: dict[str, Counter[int]] = defaultdict(Counter)
    per_seed: dict[tuple[str, int], Counter[int]] = defaultdict(Counter)
    for p in ds.predictions:
        total[p.method][p.target] += 1
        correct[p.method][p.target] += int(p.pred == p.target)
        per_seed[(p.method, p.seed)][p.target] += 1
    classes = sorted({c for t in total.values() for c in t})
    acc = {m: {c: correct[m][c] / total[m][c] for c in total[m]} for m in total}
    counts: dict[int, int] = {}
    for seed_counts in per_seed.values():
        for c, k in seed_counts.items():
            counts[c] = max(counts.get(c, 0), k)
    return classes, acc, counts


def confused_pairs(ds: DatasetRuns, method: str, top: int = TOP_CONFUSIONS) -> list[tuple[int, int, float, float]]:
    """(true class, predicted class, mistakes per seed, share of the true class's images), most first."""
    pairs: Counter[tuple[int, int]] = Counter()
    per_class: Counter[int] = Counter()
    seeds = set()
    for p in ds.predictions:
        if p.method != method:
            continue
        seeds.add(p.seed)
        per_class[p.target] += 1
        if p.pred != p.target:
            pairs[(p.target, p.pred)] += 1
    n_seeds = max(1, len(seeds))
    ranked = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return [(t, q, k / n_seeds, k / per_class[t]) for (t, q), k in ranked]


def disagreements(ds: DatasetRuns, first: str, second: str) -> tuple[int | None, list[tuple[Prediction, Prediction]]]:
    """Images that ``first`` and ``second`` label differently at their lowest common seed, the cases
    where exactly one is right first (``second`` right before ``first`` right), then both wrong."""
    seeds = {m: {p.seed for p in ds.predictions if p.method == m} for m in (first, second)}
    common = sorted(seeds[first] & seeds[second])
    if not common:
        return None, []
    seed = common[0]
    a = {p.path: p for p in ds.predictions if p.method == first and p.seed == seed}
    b = {p.path: p for p in ds.predictions if p.method == second and p.seed == seed}
    cases = [(a[k], b[k]) for k in a if k in b and a[k].pred != b[k].pred]

    def rank(case: tuple[Prediction, Prediction]) -> int:
        pa, pb = case
        return 0 if pb.pred == pb.target else 1 if pa.pred == pa.target else 2

    return seed, sorted(cases, key=rank)


def _fmt(pair: tuple[float, float] | None) -> str:
    if pair is None:
        return "–"
    mean, std = pair
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def _summary_table(ds: DatasetRuns, rows: list[dict[str, Any]]) -> str:
    best = {m: max((r[m][0] for r in rows if m in r), default=None) for m in METRIC_NAMES}
    head = "".join(f'<th class="num sortable" data-type="num">{esc(n)} (%)</th>' for n in METRIC_NAMES.values())
    body = []
    for r in rows:
        cells = []
        for m in METRIC_NAMES:
            value = r.get(m)
            mark = ' best' if value is not None and best[m] is not None and value[0] == best[m] else ""
            sort = "" if value is None else f' data-sort="{value[0]:.8f}"'
            cells.append(f'<td class="num{mark}"{sort}>{esc(_fmt(value))}</td>')
        body.append(f'<tr data-method="{esc(r["method"])}"><td>{esc(r["method"])}</td>'
                    f'<td class="num">{len(r["seeds"])}</td><td class="num">{esc(r.get("n_samples") or "–")}</td>'
                    + "".join(cells) + "</tr>")
    return (f'<table class="summary" data-dataset="{esc(ds.name)}"><thead><tr>'
            '<th class="sortable" data-type="text">method</th><th class="num">seeds</th><th class="num">images</th>'
            f"{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            '<p class="muted">mean ± sample standard deviation over seeds; bold: the best mean.</p>')


def _seed_table(ds: DatasetRuns) -> str:
    if not ds.records:
        return ""
    rows = "".join(
        f'<tr><td>{esc(r["method"])}</td><td class="num">{esc(r["seed"])}</td>'
        + "".join(f'<td class="num">{100 * float(r["metrics"].get(m, float("nan"))):.2f}</td>' for m in METRIC_NAMES)
        + "</tr>" for r in ds.records)
    head = "".join(f'<th class="num">{esc(n)} (%)</th>' for n in METRIC_NAMES.values())
    return (f'<details><summary>every seed ({len(ds.records)} runs)</summary><table class="seeds"><thead><tr>'
            f'<th>method</th><th class="num">seed</th>{head}</tr></thead><tbody>{rows}</tbody></table></details>')


def _summary_plot(ds: DatasetRuns, rows: list[dict[str, Any]]) -> str:
    plt = pyplot()
    metrics = [m for m in METRIC_NAMES if any(m in r for r in rows)]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(rows) * max(1, len(metrics)) / 2 + 2), 3.6))
    width = 0.8 / max(1, len(metrics))
    for j, m in enumerate(metrics):
        xs = [i + (j - (len(metrics) - 1) / 2) * width for i in range(len(rows))]
        means = [100 * r[m][0] if m in r else 0 for r in rows]
        stds = [100 * r[m][1] if m in r else 0 for r in rows]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=METRIC_NAMES[m])
    ax.set_xticks(range(len(rows)), [r["method"] for r in rows], rotation=20 if len(rows) > 6 else 0)
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.set_title(f"{ds.name or 'results'}: mean ± std over seeds")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return f'<img class="plot" alt="accuracy of each method" src="{figure_png(fig)}">'


def _class_section(ds: DatasetRuns, methods: list[str]) -> str:
    classes, acc, counts = per_class_accuracy(ds)
    methods = [m for m in methods if m in acc]
    if not classes or not methods:
        return ""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for m in methods:
        values = sorted(100 * acc[m].get(c, 0.0) for c in classes)
        ax.plot(range(1, len(values) + 1), values, label=m, lw=1.5)
    ax.set_xlabel("classes, from hardest to easiest")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("per-class accuracy, each method sorted on its own")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    plot = f'<img class="plot" alt="per-class accuracy curves" src="{figure_png(fig)}">'
    first = methods[0]
    order = sorted(classes, key=lambda c: (acc[first].get(c, 0.0), c))
    head = "".join(f'<th class="num sortable" data-type="num">{esc(m)} (%)</th>' for m in methods)
    body = []
    for c in order:
        cells = "".join(
            f'<td class="num" data-sort="{acc[m][c]:.8f}">{100 * acc[m][c]:.1f}</td>' if c in acc[m]
            else '<td class="num" data-sort="-1">–</td>' for m in methods)
        body.append(f'<tr data-class="{esc(ds.label(c))}"><td class="num">{c}</td><td>{esc(ds.label(c))}</td>'
                    f'<td class="num">{counts.get(c, 0)}</td>{cells}</tr>')
    table = (f'<p><label>Class <input type="search" class="class-filter" placeholder="part of a class name"></label>'
             f' <span class="muted">{len(classes)} classes; sorted by {esc(first)}, hardest first; click a column '
             'to sort</span></p><div class="scroll"><table class="per-class"><thead><tr>'
             '<th class="num sortable" data-type="num">#</th><th class="sortable" data-type="text">class</th>'
             f'<th class="num sortable" data-type="num">images</th>{head}</tr></thead>'
             f"<tbody>{''.join(body)}</tbody></table></div>")
    confusion = []
    for m in methods:
        pairs = confused_pairs(ds, m)
        if not pairs:
            confusion.append(f"<h4>{esc(m)}</h4><p class=\"muted\">no mistakes</p>")
            continue
        rows = "".join(f'<tr><td>{esc(ds.label(t))}</td><td>{esc(ds.label(q))}</td><td class="num">{k:g}</td>'
                       f'<td class="num">{100 * share:.1f}</td></tr>' for t, q, k, share in pairs)
        confusion.append(f'<div class="confusions" data-method="{esc(m)}"><h4>{esc(m)}</h4><table><thead><tr>'
                         '<th>true class</th><th>predicted as</th><th class="num">images per seed</th>'
                         f'<th class="num">% of the class</th></tr></thead><tbody>{rows}</tbody></table></div>')
    return (f"<h3>Per-class accuracy</h3>{plot}{table}<h3>Most confused class pairs</h3>"
            f'<div class="confusion-grid">{"".join(confusion)}</div>')


def _case_overlay(plan: CropPlan, input_size: int, limit: int = 20) -> str:
    o = plan_overlay(plan, input_size)
    rects = []
    if o["gridArea"]:
        x0, y0, x1, y1 = o["gridArea"]
        rects.append(f'<rect class="grid-area" x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}" '
                     'vector-effect="non-scaling-stroke"/>')
    for cls, shapes in (("window", o["windows"]), ("box", o["boxes"])):
        for x0, y0, x1, y1 in shapes[:limit]:
            rects.append(f'<rect class="{cls}" x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}" '
                         'vector-effect="non-scaling-stroke"/>')
    return (f'<svg viewBox="0 0 {o["width"]} {o["height"]}" preserveAspectRatio="none">{"".join(rects)}</svg>')


def _short(path: str) -> str:
    """The file name with its folder: datasets in class folders repeat names (``cat/0.png``, ``dog/0.png``)."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def _disagreement_section(ds: DatasetRuns, pair: tuple[str, str], max_images: int, root: Path | None,
                          plans: dict[str, CropPlan], input_size: int, directory: Path, thumb_size: int) -> str:
    first, second = pair
    seed, cases = disagreements(ds, first, second)
    if seed is None:
        return ""
    shown = cases[:max_images]
    thumbs = make_thumbnails([resolve_image(a.path, directory, root) for a, _ in shown], thumb_size)
    by_norm = {os.path.normpath(k): p for k, p in plans.items()}
    cards = []
    other_seed = 0
    for (pa, pb), thumb in zip(shown, thumbs, strict=True):
        uri = None if thumb is None else thumb.data_uri()
        plan = plans.get(pa.path) or by_norm.get(os.path.normpath(pa.path))
        if plan is not None and plan.seed != seed:  # crops are drawn per (seed, image): not the ones scored here
            plan, other_seed = None, other_seed + 1
        picture = (f'<img src="{uri}" alt="{esc(Path(pa.path).name)}">' if uri else
                   f'<div class="missing">no preview: {esc(thumb.error if thumb else "not found")}</div>')
        overlay = _case_overlay(plan, input_size) if plan is not None and uri else ""

        def verdict(p: Prediction, method: str) -> str:
            ok = p.pred == p.target
            return (f'<li class="{"right" if ok else "wrong"}">{esc(method)}: {esc(ds.label(p.pred))} '
                    f'{"✓" if ok else "✗"}</li>')

        cards.append(f'<figure class="case" data-path="{esc(pa.path)}"><div class="case-stage">{picture}{overlay}</div>'
                     f'<figcaption><div class="name" title="{esc(pa.path)}">{esc(_short(pa.path))}</div>'
                     f'<div>true: <b>{esc(ds.label(pa.target))}</b></div><ul>{verdict(pa, first)}{verdict(pb, second)}'
                     "</ul></figcaption></figure>")
    right_first = sum(1 for a, b in cases if a.pred == a.target)
    right_second = sum(1 for a, b in cases if b.pred == b.target)
    note = (f"{len(cases)} images at seed {seed}: {esc(second)} right and {esc(first)} wrong on {right_second}, "
            f"the reverse on {right_first}, both wrong on {len(cases) - right_first - right_second}"
            + (f"; the first {len(shown)} are shown" if len(shown) < len(cases) else ""))
    if plans:
        legend = " Yellow: raw boxes, dashed cyan: feature windows (first 20 of each), from the plans given."
        if other_seed:
            legend += (f" {other_seed} image(s) have a plan sampled at another seed than {seed}, not drawn: make "
                       f"them with `absclip plan ... --seed {seed}`.")
    else:
        legend = (f" To see the crops {esc(second)} chose, pass --plans from `absclip plan ROOT --method "
                  f"{esc(second)} --seed {seed}` with the eval's options.")
    return (f'<h3>Where {esc(first)} and {esc(second)} disagree</h3><p class="muted">{note}.{legend}</p>'
            f'<div class="cases">{"".join(cards)}</div>')


def write_eval_report(source: str | os.PathLike[str], output: str | os.PathLike[str], *,
                      predictions: str | os.PathLike[str] | None = None,
                      plans: str | os.PathLike[str] | dict[str, CropPlan] | None = None,
                      compare: Sequence[str] | None = None, max_images: int = DEFAULT_MAX_IMAGES,
                      root: str | os.PathLike[str] | None = None, title: str | None = None,
                      input_size: int = DEFAULT_INPUT_SIZE, thumb_size: int = DEFAULT_THUMB_SIZE,
                      report: Callable[[str], None] | None = None) -> Path:
    """Write one HTML page for an ``absclip eval`` / ``reproduce`` output: ``source`` is the directory, its
    ``results.jsonl`` or its ``summary.json``. Per-class accuracy, confused pairs and disagreements need
    ``predictions.jsonl`` (see the module docstring), found beside the results unless ``predictions`` names
    it. ``compare`` names the two methods whose disagreements are shown (default clip and abs when both
    ran); ``plans`` draws their crops on those images. Returns the page's path, written atomically."""
    if compare is not None and len(compare) != 2:
        raise InputFileError(f"compare needs two methods, got {list(compare)}")
    inputs = read_eval_outputs(source, predictions)
    plan_map = read_plans(plans) if isinstance(plans, (str, os.PathLike)) else (plans or {})
    base = Path(root).expanduser() if root is not None else None
    sections = []
    for ds in inputs.datasets:
        methods = ds.methods()
        rows = summary_rows(ds)
        parts = [f'<section class="dataset" data-dataset="{esc(ds.name)}"><h2>{esc(ds.name or "results")}</h2>']
        if rows:
            parts += [_summary_table(ds, rows), _summary_plot(ds, rows), _seed_table(ds)]
        if ds.predictions:
            parts.append(_class_section(ds, methods))
            pair = tuple(compare) if compare else DEFAULT_COMPARE
            if all(m in methods for m in pair):
                parts.append(_disagreement_section(ds, (pair[0], pair[1]), max_images, base, plan_map, input_size,
                                                   inputs.directory, thumb_size))
            elif compare:
                raise InputFileError(f"compare: {', '.join(m for m in pair if m not in methods)} not in the "
                                     f"predictions of {ds.name or 'this run'} (methods: {', '.join(methods)})")
        parts.append("</section>")
        sections.append("".join(parts))
    if inputs.predictions_file is None:
        missing = (f'<p class="muted" id="no-predictions">Per-class accuracy, confused pairs and disagreements '
                   f"need per-sample predictions: {esc(PREDICTIONS_FILE)} beside the results (not found in "
                   f"{esc(inputs.directory)}).</p>")
        sections.append(f"<section>{missing}</section>")
        if report is not None:
            report(f"no {PREDICTIONS_FILE} in {inputs.directory}: the report shows the summary only")
    if inputs.failed:
        rows = "".join(f"<tr><td>{esc(p)}</td><td>{esc(r)}</td></tr>" for p, r in inputs.failed)
        sections.append(f'<section id="errors"><h2>Unreadable images ({len(inputs.failed)})</h2><table><thead>'
                        f"<tr><th>path</th><th>error</th></tr></thead><tbody>{rows}</tbody></table></section>")
    first: dict[str, Any] = {}
    if inputs.datasets:
        head = inputs.datasets[0]
        first = head.records[0] if head.records else head.summary or {}
    model = " / ".join(str(first[k]) for k in ("model", "pretrained") if first.get(k))
    names = ", ".join(ds.name for ds in inputs.datasets if ds.name)
    heading = title or f"absclip eval: {names or inputs.directory.name}"
    body = (f"<header><h1>{esc(heading)}</h1><p class=\"muted\">{esc(model)}{' · ' if model else ''}"
            f"{esc(inputs.directory)}</p></header><main>{''.join(sections)}</main>")
    return write_page(Path(output), document(heading, body, EVAL_CSS, EVAL_JS))
