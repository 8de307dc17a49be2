"""Benchmark evaluation: many methods × seeds on one labelled dataset, from one view pass per seed.

Why the structure: view extraction (DINO saliency, dozens of crop encodings per image) is where
all the time goes, while scoring is cheap and several methods need the same views (WCA and MCE
both score the random crops; CLIP, CuPL & co. only the full image). So per seed the methods'
:class:`~absclip.views.ViewConfig` are grouped, one :class:`~absclip.views.ViewExtractor` runs per
distinct config, full-image-only methods take the full view of any of them, and every method
scores its views. Views are cached per shard (:mod:`absclip.cache`) so reruns and interrupted
runs cost nothing for what was already computed.

Scale (:mod:`absclip.parallel`): images are decoded by DataLoader workers ahead of the encoder,
and under ``torchrun`` every rank extracts the views of its own shards (shard ``i`` to rank
``i % world``) into the cache; rank 0 then merges the per-rank manifests and scores every shard
from the cache, exactly as a single-process rerun over a complete cache would. Sharing views
through the cache (rather than gathering tensors) keeps the scoring code single-process and
makes a distributed run resumable by any later run, distributed or not.

Outputs (all written atomically): ``results.jsonl`` (one CLIP_benchmark-like record per dataset /
method / model / seed), ``summary.json`` (mean ± std over seeds per method) and ``results.md``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import statistics
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .attention import SaliencySource, create_saliency
from .backbones import Backbone
from .cache import CachedShard, ViewCache, cache_key
from .data import LabelledImages
from .errors import UnsupportedError
from .io import atomic_open, write_json, write_jsonl
from .methods import Method, MethodOptions, TextInputs, create_method
from .parallel import Decoded, DistributedContext, decode_groups
from .text import Descriptions, TextEmbedder
from .text.embed import model_fingerprint
from .views import ViewConfig, ViewExtractor, ViewSet

log = logging.getLogger(__name__)

METRICS = ("acc1", "acc5", "mean_per_class_recall")
SEED_DEPENDENT_TEXT = frozenset({"waffle"})
"""Methods whose text side depends on the seed (Waffle draws random descriptors): prepared per seed."""


# ---- view planning ------------------------------------------------------------------------------
def normalise_view_config(config: ViewConfig) -> ViewConfig:
    """Drop settings that do not change the views, so equal views get equal configs.

    The full view does not depend on the seed; ``micro_batch`` only groups encoder calls.
    """
    config = dataclasses.replace(config, micro_batch=ViewConfig().micro_batch)
    if config.crops is None:
        config = ViewConfig()
    return config


def plan_views(methods: Sequence[Method]) -> tuple[list[ViewConfig], list[int]]:
    """Distinct view configs to extract and, for each method, the index of the config it scores.

    Full-image-only methods reuse the full view of a crop config when there is one (preferring a
    config without feature views, whose full view comes from the plain encoder pass), so a run of
    clip+abs extracts views once, not twice.
    """
    wanted = [normalise_view_config(m.view_config()) for m in methods]
    configs: list[ViewConfig] = []
    for cfg in wanted:
        if cfg.crops is not None and cfg not in configs:
            configs.append(cfg)
    if not configs:
        configs.append(ViewConfig())
    full_source = next((i for i, c in enumerate(configs) if not c.feature), 0)
    assignment = [configs.index(cfg) if cfg.crops is not None else full_source for cfg in wanted]
    return configs, assignment


# ---- metrics ------------------------------------------------------------------------------------
def cache_identity(backbone: Backbone) -> dict[str, Any]:
    """The backbone facts that change view embeddings. The device *type* matters (CPU and CUDA kernels
    differ in the last bits) but not its index: under torchrun, rank r runs on cuda:r and every rank
    must address the same cache."""
    identity = backbone.describe()
    identity["device"] = backbone.device.type
    return identity


def restrict_logits(logits: torch.Tensor, imagenet_indices: Sequence[int] | None, num_classes: int) -> torch.Tensor:
    """ImageNet-R/-A: keep the 200 subset columns when the logits cover all 1000 ImageNet classes.

    Published numbers predict among the subset only; when the text side already holds the subset's
    names (the dataset loader's default) the logits are returned unchanged.
    """
    if logits.shape[1] == num_classes:
        return logits
    if imagenet_indices is None or len(imagenet_indices) != num_classes:
        raise ValueError(f"logits have {logits.shape[1]} classes, the dataset {num_classes}, and no subset indices")
    return logits[:, list(imagenet_indices)]


def compute_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Top-1, top-5 (top-C when C < 5) accuracy and the mean recall over the classes present.

    Mean per-class recall averages over classes with at least one sample (as sklearn's
    ``balanced_accuracy_score`` and CLIP_benchmark do), so a subset run is not penalised for absent
    classes. Returns NaN metrics for an empty split rather than raising.
    """
    n = int(targets.numel())
    if n == 0:
        return {m: math.nan for m in METRICS}
    k = min(5, logits.shape[1])
    topk = logits.topk(k, dim=1).indices
    correct1 = topk[:, 0] == targets
    correct5 = (topk == targets[:, None]).any(dim=1)
    recalls = [correct1[targets == c].float().mean().item() for c in targets.unique().tolist()]
    return {
        "acc1": correct1.float().mean().item(),
        "acc5": correct5.float().mean().item(),
        "mean_per_class_recall": sum(recalls) / len(recalls),
    }


# ---- the evaluation -----------------------------------------------------------------------------
@dataclass
class MethodRun:
    """Logits and metrics of one method at one seed (logits [n_ok, C] on CPU, rows in sample order)."""

    method: str
    seed: int
    logits: torch.Tensor
    targets: torch.Tensor
    metrics: dict[str, float]
    options: MethodOptions


@dataclass
class EvalResult:
    """Everything an evaluation produced; ``failed`` lists unreadable images as (path, reason)."""

    dataset: str
    n_samples: int
    runs: list[MethodRun] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class _ShardViews:
    """The views of one shard for every view config; ``ok`` / ``failed`` are positions in the shard."""

    shard: int
    start: int
    block: list[tuple[Path, int]]
    views: list[ViewSet]
    ok: list[int]
    failed: dict[int, str]


@dataclass
class Evaluator:
    """Evaluate ``methods`` × ``seeds`` on ``dataset`` with ``backbone``.

    Args:
        descriptions: method name -> resolved descriptions (or None) for that method.
        options: per-method base options; the seed is overridden per seed.
        view_cache: root directory of the view cache, or None to disable it.
        shard_size: images per cache shard (and per decode/score block).
        batch_size: images per view-extraction call.
        text_cache: text-embedding cache directory (None = default, "" = disabled).
        progress: called with (seed, images done, images total) after every shard (under torchrun,
            during extraction, with this rank's own counts).
        workers: DataLoader worker processes decoding images (0 = decode in this process).
        method_names: label -> registered method, so several variants of one method (ablation rows)
            can run side by side under their own labels; a label missing here is the method's name.
        saliency_pool: saliency sources by spec, shared across evaluators so a model loads once.
        distributed: this process's rank under torchrun (see :mod:`absclip.parallel`), or None.
            Ranks extract the views of their own shards into the view cache, then rank 0 merges the
            cache manifests and scores everything; :meth:`run` returns None on the other ranks. The
            default process group must be up (:func:`absclip.parallel.process_group`): it is only
            used for one barrier.
    """

    backbone: Backbone
    dataset: LabelledImages
    methods: Sequence[str]
    seeds: Sequence[int]
    options: dict[str, MethodOptions]
    descriptions: dict[str, Descriptions | None]
    view_cache: Path | None = None
    shard_size: int = 64
    batch_size: int = 8
    text_cache: str | None = None
    progress: Callable[[int, int, int], None] | None = None
    warn: Callable[[str], None] = field(default=lambda msg: print(f"absclip: {msg}", file=sys.stderr))
    workers: int = 0
    method_names: dict[str, str] = field(default_factory=dict)
    saliency_pool: dict[str, SaliencySource] = field(default_factory=dict)
    distributed: DistributedContext | None = None

    def __post_init__(self) -> None:
        self._embedder = TextEmbedder(self.backbone, self.text_cache)
        self._prepared: dict[str, Method] = {}
        self._fingerprint: str | None = None

    # the text side is prepared once per method (per seed only for seed-dependent text)
    def _method(self, name: str, seed: int) -> Method:
        opts = dataclasses.replace(self.options[name], seed=seed)
        registered = self.method_names.get(name, name)
        memo = f"{name}@{seed}" if registered in SEED_DEPENDENT_TEXT else name
        method = self._prepared.get(memo)
        if method is None:
            method = create_method(registered, opts)
            method.prepare(TextInputs(self.backbone, self._embedder, self.dataset.classes, self.descriptions.get(name)))
            self._prepared[memo] = method
        method.options = opts  # view_config() reads the seed from here; scores never do
        return method

    def _unprepared(self, name: str, seed: int) -> Method:
        """A method for view planning only: extraction ranks never embed text (only rank 0 scores)."""
        return create_method(self.method_names.get(name, name), dataclasses.replace(self.options[name], seed=seed))

    def _saliency_for(self, spec: str) -> SaliencySource:
        if spec not in self.saliency_pool:
            self.saliency_pool[spec] = create_saliency(spec, self.backbone)
        return self.saliency_pool[spec]

    def _saliency_spec(self, methods: Sequence[Method]) -> str | None:
        specs = {m.saliency_spec for m in methods if m.view_config().crops == "abs"}
        if len(specs) > 1:
            raise ValueError(f"one saliency source per evaluation, got {sorted(map(str, specs))}")
        return specs.pop() if specs else None

    def run(self) -> EvalResult | None:
        """Evaluate every method at every seed; None on torchrun ranks other than 0 (nothing to report)."""
        dist = self.distributed
        if dist is not None:
            if self.view_cache is None:
                raise UnsupportedError("a distributed (torchrun) evaluation needs a view cache: ranks hand "
                                       "their views to rank 0 through it; drop --view-cache ''")
            caches: dict[Path, ViewCache] = {}
            for seed in self.seeds:
                methods = [self._unprepared(name, seed) for name in self.methods]
                for cache in self._extract_seed(seed, methods, dist):
                    caches.setdefault(cache.directory, cache)
            dist.barrier()  # every rank has stored (and recorded) all of its shards
            if not dist.is_main:
                return None
            for cache in caches.values():
                cache.merge()
        result = EvalResult(self.dataset.name, len(self.dataset))
        failed_seen: dict[str, str] = {}
        for seed in self.seeds:
            methods = [self._method(name, seed) for name in self.methods]
            runs = self._run_seed(seed, methods, failed_seen)
            result.runs.extend(runs)
        result.failed = list(failed_seen.items())
        return result

    def _setup(self, seed: int, methods: list[Method], rank: int | None = None,
               ) -> tuple[list[ViewExtractor], list[ViewCache | None], list[int]]:
        """Extractors and caches of the distinct view configs of ``methods``, and each method's config."""
        configs, assignment = plan_views(methods)
        spec = self._saliency_spec(methods)
        extractors = [ViewExtractor(self.backbone, cfg, self._saliency_for(spec) if cfg.crops == "abs" and spec
                                    else None) for cfg in configs]
        caches = [self._cache(cfg, spec, rank) for cfg in configs]
        return extractors, caches, assignment

    def _run_seed(self, seed: int, methods: list[Method], failed_seen: dict[str, str]) -> list[MethodRun]:
        extractors, caches, assignment = self._setup(seed, methods)
        logits: list[list[torch.Tensor]] = [[] for _ in methods]
        targets: list[int] = []
        n = len(self.dataset.samples)
        for item in self._iter_shards(range(self._n_shards()), extractors, caches):
            for pos, reason in item.failed.items():
                key = str(item.block[pos][0])
                if key not in failed_seen:
                    failed_seen[key] = reason
                    self.warn(f"skipped {key}: {reason}")
            targets.extend(item.block[pos][1] for pos in item.ok)
            if item.ok:
                for i, method in enumerate(methods):
                    logits[i].append(self._score(method, item.views[assignment[i]]))
            if self.progress is not None:
                self.progress(seed, item.start + len(item.block), n)
        target = torch.tensor(targets, dtype=torch.int64)
        runs = []
        for name, method, parts in zip(self.methods, methods, logits, strict=True):
            full = torch.cat(parts) if parts else torch.zeros(0, len(self.dataset.classes))
            full = restrict_logits(full, self.dataset.imagenet_indices, len(self.dataset.classes))
            runs.append(MethodRun(name, seed, full, target, compute_metrics(full, target), method.options))
        return runs

    def _extract_seed(self, seed: int, methods: list[Method], dist: DistributedContext) -> list[ViewCache]:
        """This rank's share of a seed: the views of the shards it owns, stored in the cache (no scoring)."""
        extractors, caches, _ = self._setup(seed, methods, rank=dist.rank)
        owned = [s for s in range(self._n_shards()) if dist.owns(s)]
        total = sum(len(self._block(s)[1]) for s in owned)
        done = 0
        for item in self._iter_shards(owned, extractors, caches):
            done += len(item.block)
            if self.progress is not None:
                self.progress(seed, done, total)
        return [c for c in caches if c is not None]

    def _n_shards(self) -> int:
        return math.ceil(len(self.dataset.samples) / self.shard_size)

    def _block(self, shard: int) -> tuple[int, list[tuple[Path, int]]]:
        start = shard * self.shard_size
        return start, self.dataset.samples[start : start + self.shard_size]

    def _cache(self, cfg: ViewConfig, spec: str | None, rank: int | None = None) -> ViewCache | None:
        if self.view_cache is None:
            return None
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.backbone)
        key = cache_key(dataset=self.dataset.name, root=self.dataset.root or "", model_fingerprint=self._fingerprint,
                        model=cache_identity(self.backbone), saliency=spec, config=cfg, seed=cfg.seed)
        return ViewCache(self.view_cache, key, self.shard_size, rank=rank)

    def _iter_shards(self, shards: Sequence[int], extractors: list[ViewExtractor], caches: list[ViewCache | None],
                     ) -> Iterator[_ShardViews]:
        """Views of ``shards`` in order: from the cache where complete, else decoded, extracted and stored.

        Completeness is decided from the manifests alone (no shard file is read ahead, so memory
        holds one shard's views at a time). Images of the incomplete shards are decoded by one
        DataLoader, ``workers`` processes ahead of the extraction; a cached shard whose file turns
        out unreadable is decoded in this process instead.
        """
        keys_of = {s: [str(path) for path, _ in self._block(s)[1]] for s in shards}

        def complete(shard: int) -> bool:
            entries = [c.entry(shard, keys_of[shard]) if c is not None else None for c in caches]
            return all(e is not None for e in entries) and len({json.dumps(e["failed"]) for e in entries}) == 1

        cached = {s: complete(s) for s in shards}
        paths = [path for path, _ in self.dataset.samples]
        groups = [range(*self._span(s)) for s in shards if not cached[s]]
        decoded = decode_groups(paths, groups, self.workers, self.batch_size)
        try:
            for shard in shards:
                start, block = self._block(shard)
                keys = keys_of[shard]
                hits = [c.load(shard, keys) if c is not None else None for c in caches] if cached[shard] else []
                first = hits[0] if hits else None
                if first is not None and all(h is not None and h.ok == first.ok for h in hits):
                    yield _ShardViews(shard, start, block, [h.views for h in hits if h is not None], first.ok,
                                      first.failed)
                    continue
                if cached[shard]:  # listed, but a file is missing or damaged: decode it here, out of turn
                    [items] = list(decode_groups(paths, [range(*self._span(shard))]))
                else:
                    items = next(decoded)
                yield self._extract_shard(shard, start, block, keys, items, extractors, caches)
        finally:
            decoded.close()

    def _span(self, shard: int) -> tuple[int, int]:
        start, block = self._block(shard)
        return start, start + len(block)

    def _extract_shard(self, shard: int, start: int, block: list[tuple[Path, int]], keys: list[str],
                       items: list[Decoded], extractors: list[ViewExtractor], caches: list[ViewCache | None],
                       ) -> _ShardViews:
        """Views of one decoded shard for every config (reusing a config's cached views if they fit)."""
        images: list[torch.Tensor] = []
        ok: list[int] = []
        failed: dict[int, str] = {}
        for index, image, error in items:
            pos = index - start
            if image is None:
                failed[pos] = error or "unreadable"
                continue
            images.append(image)
            ok.append(pos)
        out: list[ViewSet] = []
        for extractor, cache in zip(extractors, caches, strict=True):
            hit = cache.load(shard, keys) if cache is not None else None
            if hit is not None and hit.ok == ok:
                out.append(hit.views)
                continue
            views = self._extract(extractor, images, [keys[p] for p in ok])
            if cache is not None:
                cache.store(shard, start, keys, CachedShard(views, ok, failed))
            out.append(views)
        return _ShardViews(shard, start, block, out, ok, failed)

    def _extract(self, extractor: ViewExtractor, images: list[torch.Tensor], keys: list[str]) -> ViewSet:
        """Views of ``images`` in batches of ``batch_size``, concatenated on the CPU."""
        if not images:
            dim = self.backbone.embed_dim
            return ViewSet(full=torch.zeros(0, dim))
        parts = []
        for i in range(0, len(images), self.batch_size):
            views, _ = extractor(images[i : i + self.batch_size], keys[i : i + self.batch_size])
            parts.append(views)

        def cat(name: str) -> torch.Tensor | None:
            tensors = [getattr(v, name) for v in parts]
            return None if tensors[0] is None else torch.cat([t.float().cpu() for t in tensors])

        full = cat("full")
        assert full is not None
        return ViewSet(full=full, raw=cat("raw"), feature=cat("feature"))

    @torch.inference_mode()
    def _score(self, method: Method, views: ViewSet) -> torch.Tensor:
        """Logits in batches of ``batch_size`` (soft matching over all crops × descriptions is memory-hungry)."""
        dev = self.backbone.device
        if method.view_config().crops is None:
            views = ViewSet(full=views.full)
        out = []
        for i in range(0, len(views.full), self.batch_size):
            sl = slice(i, i + self.batch_size)
            batch = ViewSet(full=views.full[sl].to(dev),
                            raw=None if views.raw is None else views.raw[sl].to(dev),
                            feature=None if views.feature is None else views.feature[sl].to(dev))
            out.append(method.score(batch).float().cpu())
        return torch.cat(out)


# ---- reports ------------------------------------------------------------------------------------
def make_records(result: EvalResult, model: str, pretrained: str | None,
                 extra_settings: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One CLIP_benchmark-like record per method and seed."""
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
                  failed: Sequence[tuple[str, str]] = ()) -> dict[str, Path]:
    """Write results.jsonl, summary.json and results.md (and failed.jsonl if any image failed)."""
    out = Path(output_dir)
    paths = {"results": out / "results.jsonl", "summary": out / "summary.json", "markdown": out / "results.md"}
    summary = summarise(records)
    write_jsonl(paths["results"], records)
    write_json(paths["summary"], summary)
    with atomic_open(paths["markdown"], "w", encoding="utf-8") as handle:
        handle.write(render_markdown(summary))
    if failed:
        paths["failed"] = out / "failed.jsonl"
        write_jsonl(paths["failed"], [{"path": p, "reason": r} for p, r in failed])
    return paths


def select_subset(dataset: LabelledImages, limit: int | None) -> LabelledImages:
    """``limit`` samples spread evenly over the split (a prefix would hold only the first classes)."""
    if limit is None or limit >= len(dataset):
        return dataset
    n = len(dataset)
    picked = sorted({(i * n) // limit for i in range(limit)})
    return LabelledImages(dataset.name, [dataset.samples[i] for i in picked], dataset.classes, root=dataset.root,
                          imagenet_indices=dataset.imagenet_indices)
