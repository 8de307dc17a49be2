"""Benchmark evaluation: many methods × seeds on one labelled dataset, from one view pass per seed.

Why the structure: view extraction (DINO saliency, dozens of crop encodings per image) is where
all the time goes, while scoring is cheap and several methods need the same views (WCA and MCE
both score the random crops; CLIP, CuPL & co. only the full image). So per seed the methods'
:class:`~absclip.views.ViewConfig` are grouped (:func:`~absclip.evaluate.planning.plan_views`), one
:class:`~absclip.views.ViewExtractor` runs per distinct config, full-image-only methods take the full
view of any of them, and every method scores its views. Views are cached per shard
(:mod:`absclip.cache`, through :class:`~absclip.evaluate.shards.ShardRunner`) so reruns and interrupted
runs cost nothing for what was already computed.

Scale (:mod:`absclip.parallel`): images are decoded by DataLoader workers ahead of the encoder,
and under ``torchrun`` every rank extracts the views of its own shards (shard ``i`` to rank
``i % world``) into the cache; rank 0 then merges the per-rank manifests and scores every shard
from the cache, exactly as a single-process rerun over a complete cache would. Sharing views
through the cache (rather than gathering tensors) keeps the scoring code single-process and
makes a distributed run resumable by any later run, distributed or not.

Beyond zero-shot (:mod:`absclip.adapt`): a few-shot method is fitted at each seed on that seed's K-shot
support draw, whose views come from a second shard runner over the drawn images (so they are cached like
the test views); a streaming (test-time) method observes each image in the one view pass — its
per-image inputs do not depend on its state — and is then run over the seed's stream order.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..adapt import (
    LabelledViews,
    SupportDraw,
    SupportPool,
    check_counts,
    draw_support,
    match_support,
    stream_order,
    stream_record,
    support_record,
)
from ..attention import SaliencyPool
from ..backbones import Backbone
from ..cache import ViewCache
from ..data import LabelledImages
from ..errors import ConfigError, UnsupportedError
from ..methods import Method, MethodOptions, TextInputs
from ..parallel import DistributedContext
from ..text import Descriptions, TextEmbedder
from ..views import ViewExtractor, ViewSet
from .metrics import compute_metrics, restrict_logits
from .planning import normalise_view_config, plan_views
from .shards import ShardRunner


@dataclass
class MethodRun:
    """Logits and metrics of one method at one seed (logits [n_ok, C] on CPU, rows in sample order;
    ``paths[r]`` is the image of row r, for per-sample predictions)."""

    method: str
    seed: int
    logits: torch.Tensor
    targets: torch.Tensor
    metrics: dict[str, float]
    options: MethodOptions
    adaptation: dict[str, Any] | None = None  # few-shot / test-time: the support draw or stream, as used
    paths: list[str] = field(default_factory=list)


@dataclass
class AdaptationDetail:
    """What a record summarises, in full: a support draw's images or a stream's order (``adaptation.jsonl``)."""

    seed: int
    kind: str  # "support" or "stream"
    data: dict[str, Any]


@dataclass
class EvalResult:
    """Everything an evaluation produced; ``failed`` lists unreadable images as (path, reason), ``classes``
    names the logits' columns."""

    dataset: str
    n_samples: int
    classes: list[str] = field(default_factory=list)
    runs: list[MethodRun] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    details: list[AdaptationDetail] = field(default_factory=list)


def at_seed(method: Method, seed: int) -> Method:
    """A fresh, unprepared copy of ``method`` whose views are drawn with ``seed``."""
    return type(method)(dataclasses.replace(method.options, seed=seed))


@torch.inference_mode()
def score_views(method: Method, views: ViewSet, batch_size: int, device: torch.device) -> torch.Tensor:
    """Logits [n, C] in batches of ``batch_size`` (soft matching over all crops × descriptions is
    memory-hungry); a full-image method sees only the full view, whatever else was extracted."""
    if not method.view_config().has_crops:
        views = ViewSet(full=views.full)
    out = []
    for i in range(0, len(views.full), batch_size):
        sl = slice(i, i + batch_size)
        batch = ViewSet(full=views.full[sl].to(device),
                        raw=None if views.raw is None else views.raw[sl].to(device),
                        feature=None if views.feature is None else views.feature[sl].to(device))
        out.append(method.score(batch).float().cpu())
    return torch.cat(out)


@torch.inference_mode()
def observe_views(method: Method, views: ViewSet, batch_size: int, device: torch.device) -> Any:
    """A streaming method's per-image inputs (stateless, so computed in the view pass in any order), in
    batches like :func:`score_views`; concatenated with the observations' own ``cat``."""
    parts = []
    for i in range(0, len(views.full), batch_size):
        sl = slice(i, i + batch_size)
        parts.append(method.observe(ViewSet(  # type: ignore[attr-defined]
            full=views.full[sl].to(device), raw=None if views.raw is None else views.raw[sl].to(device),
            feature=None if views.feature is None else views.feature[sl].to(device))))
    return type(parts[0]).cat(parts)


def _draw_detail(draw: SupportDraw) -> dict[str, Any]:
    """The full draw: every drawn image with its class, for ``adaptation.jsonl``."""
    def listing(images: LabelledImages | None) -> list[list[Any]] | None:
        return None if images is None else [[str(p), label] for p, label in images.samples]

    return {"root": str(draw.pool.root), "shots": draw.requested, "draw": draw.digest,
            "images": listing(draw.shots), "validation": listing(draw.validation)}


@dataclass
class Evaluator:
    """Evaluate ``methods`` × ``seeds`` on ``dataset`` with ``backbone``.

    Args:
        methods: label -> method with its options (the seed is replaced per seed). Labels name rows in
            the results, so several variants of one method (ablation rows) can run side by side.
        descriptions: label -> resolved descriptions (or None) for that method.
        view_cache: root directory of the view cache, or None to disable it.
        shard_size: images per cache shard (and per decode/score block).
        batch_size: images per view-extraction call.
        text_cache: text-embedding cache directory (None = default, "" = disabled).
        progress: called with (seed, images done, images total) after every shard (under torchrun,
            during extraction, with this rank's own counts).
        workers: DataLoader worker processes decoding images (0 = decode in this process).
        saliency: saliency sources by spec, shared across evaluators so a model loads once.
        distributed: this process's rank under torchrun (see :mod:`absclip.parallel`), or None.
            Ranks extract the views of their own shards into the view cache, then rank 0 merges the
            cache manifests and scores everything; :meth:`run` returns None on the other ranks. The
            default process group must be up (:func:`absclip.parallel.process_group`): it is only
            used for one barrier.
        support_pools: support folders already matched to the dataset's classes, by ``adapt.support``
            (the CLI matches them before loading the model, so a bad folder fails at once); others are
            matched when first needed.

    Few-shot methods (``needs_support``) are fitted at each seed on that seed's K-shot draw from their
    ``options.adapt.support``; the support views go through the view cache like the test views. Streaming
    methods (``streaming``) observe every image in the view pass and are then run over the seed's stream
    order (:func:`absclip.adapt.stream_order`); records state the draw or the stream, and
    :attr:`EvalResult.details` holds them in full.
    """

    backbone: Backbone
    dataset: LabelledImages
    methods: Mapping[str, Method]
    seeds: Sequence[int]
    descriptions: Mapping[str, Descriptions | None] = field(default_factory=dict)
    view_cache: Path | None = None
    shard_size: int = 64
    batch_size: int = 8
    text_cache: str | None = None
    progress: Callable[[int, int, int], None] | None = None
    warn: Callable[[str], None] = field(default=lambda msg: print(f"absclip: {msg}", file=sys.stderr))
    workers: int = 0
    saliency: SaliencyPool | None = None
    distributed: DistributedContext | None = None
    support_pools: Mapping[str, SupportPool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._embedder = TextEmbedder(self.backbone, self.text_cache)
        self._prepared: dict[str, Method] = {}
        self._pool = self.saliency or SaliencyPool(self.backbone)
        self._shards = ShardRunner(self.backbone, self.dataset, self.view_cache, self.shard_size, self.batch_size,
                                   self.workers)
        self._pools: dict[str, SupportPool] = dict(self.support_pools)  # matched early by the CLI
        self._support_failed: set[str] = set()
        self._details: list[AdaptationDetail] = []

    def _scorer(self, label: str, seed: int) -> Method:
        """The method with its text side prepared: once per label, or once per seed when the text
        depends on the seed (Waffle). Its scores never depend on the seed."""
        method = self.methods[label]
        memo = f"{label}@{seed}" if method.seed_dependent_text else label
        if memo not in self._prepared:
            prepared = at_seed(method, seed)
            prepared.prepare(TextInputs(self.backbone, self._embedder, self.dataset.classes,
                                        self.descriptions.get(label)))
            self._prepared[memo] = prepared
        return self._prepared[memo]

    def _extractors(self, planned: Sequence[Method]) -> tuple[list[ViewExtractor], list[int]]:
        """One extractor per distinct view config of ``planned``, and the config each method scores."""
        _, assignment, sources = plan_views(planned)
        extractors = [ViewExtractor.for_method(planned[i], self.backbone, self._pool) for i in sources]
        return extractors, assignment

    def run(self) -> EvalResult | None:
        """Evaluate every method at every seed; None on torchrun ranks other than 0 (nothing to report)."""
        dist = self.distributed
        if dist is not None:
            if self.view_cache is None:
                raise UnsupportedError("a distributed (torchrun) evaluation needs a view cache: ranks hand "
                                       "their views to rank 0 through it; drop --view-cache ''")
            caches: dict[Path, ViewCache] = {}
            for seed in self.seeds:
                for cache in self._extract_seed(seed, dist):
                    caches.setdefault(cache.directory, cache)
            dist.barrier()  # every rank has stored (and recorded) all of its shards
            if not dist.is_main:
                return None
            for cache in caches.values():
                cache.merge()
        result = EvalResult(self.dataset.name, len(self.dataset), list(self.dataset.classes))
        failed_seen: dict[str, str] = {}
        for seed in self.seeds:
            result.runs.extend(self._run_seed(seed, failed_seen))
        result.failed = list(failed_seen.items())
        result.details = list(self._details)
        return result

    def _run_seed(self, seed: int, failed_seen: dict[str, str]) -> list[MethodRun]:
        labels = list(self.methods)
        planned = [at_seed(self.methods[label], seed) for label in labels]
        extractors, assignment = self._extractors(planned)
        caches = self._shards.caches(extractors)
        scorers = [self._scorer(label, seed) for label in labels]
        # few-shot methods are fitted on this seed's support draw before any test image is scored, and
        # streaming methods start an empty state: both are shared across seeds, never their state
        adaptation = self._fit_support(scorers, planned, seed)
        for scorer in scorers:
            if getattr(scorer, "streaming", False):
                scorer.reset()  # type: ignore[attr-defined]
        logits: list[list[torch.Tensor]] = [[] for _ in labels]
        observed: list[list[Any]] = [[] for _ in labels]
        targets: list[int] = []
        rows: list[int] = []  # dataset index of each scored row
        n = len(self.dataset.samples)
        for item in self._shards.run(range(self._shards.n_shards), extractors, caches):
            for pos, reason in item.failed.items():
                key = str(item.block[pos][0])
                if key not in failed_seen:
                    failed_seen[key] = reason
                    self.warn(f"skipped {key}: {reason}")
            targets.extend(item.block[pos][1] for pos in item.ok)
            rows.extend(item.start + pos for pos in item.ok)
            if item.ok:
                for i, scorer in enumerate(scorers):
                    views = item.views[assignment[i]]
                    if getattr(scorer, "streaming", False):  # stateless per-image inputs, streamed below
                        observed[i].append(observe_views(scorer, views, self.batch_size, self.backbone.device))
                    else:
                        logits[i].append(score_views(scorer, views, self.batch_size, self.backbone.device))
            if self.progress is not None:
                self.progress(seed, item.start + len(item.block), n)
        if any(getattr(s, "streaming", False) for s in scorers):
            order, summary = self._stream(seed, rows)
            for i, scorer in enumerate(scorers):
                if getattr(scorer, "streaming", False) and observed[i]:
                    obs = type(observed[i][0]).cat(observed[i])
                    logits[i] = [scorer.run_stream(obs, order)]  # type: ignore[attr-defined]
                    adaptation[labels[i]] = {"setting": scorer.setting,  # type: ignore[attr-defined]
                                             "stream": summary, **scorer.stream_record()}  # type: ignore[attr-defined]
        target = torch.tensor(targets, dtype=torch.int64)
        paths = [str(self.dataset.samples[r][0]) for r in rows]  # one list, shared by this seed's runs
        runs = []
        for label, method, parts in zip(labels, planned, logits, strict=True):
            full = torch.cat(parts) if parts else torch.zeros(0, len(self.dataset.classes))
            full = restrict_logits(full, self.dataset.imagenet_indices, len(self.dataset.classes))
            runs.append(MethodRun(label, seed, full, target, compute_metrics(full, target), method.options,
                                  adaptation.get(label), paths))
        return runs

    def _stream(self, seed: int, rows: list[int]) -> tuple[list[int], dict[str, Any]]:
        """The stream of this seed as positions into ``rows`` (a permutation of the whole split drawn from
        the seed, less the unreadable images) and its record summary; kept in full in the details."""
        order = stream_order(len(self.dataset.samples), seed)
        position = {index: r for r, index in enumerate(rows)}
        kept = [index for index in order if index in position]
        self._details.append(AdaptationDetail(seed, "stream", {
            "order": kept, "paths": [str(self.dataset.samples[i][0]) for i in kept]}))
        return [position[index] for index in kept], stream_record(kept, seed)

    # ---- few-shot support sets -----------------------------------------------------------------
    def _fit_support(self, scorers: Sequence[Method], planned: Sequence[Method], seed: int) -> dict[str, Any]:
        """Fit every few-shot scorer on this seed's draw; the record summary of each, by label."""
        out: dict[str, Any] = {}
        draws: dict[tuple[str, int, int], SupportDraw] = {}
        views: dict[tuple[str, Any], tuple[LabelledViews, list[int]]] = {}
        for label, scorer, method in zip(self.methods, scorers, planned, strict=True):
            if not getattr(scorer, "needs_support", False):
                continue
            a = scorer.options.adapt
            if a.support is None:
                raise ConfigError(f"method {label!r} needs a support set: pass --support DIR --shots K "
                                  "(absclip eval) or --set adapt.support=DIR (absclip reproduce)")
            val = a.shots_for_validation if scorer.wants_validation() else 0  # type: ignore[attr-defined]
            key = (a.support, a.shots, val)
            if key not in draws:
                draws[key] = draw_support(self._pool_of(a.support), self.dataset, a.shots, seed, val)
                self._details.append(AdaptationDetail(seed, "support", _draw_detail(draws[key])))
            draw = draws[key]
            parts = []
            for ds, what in ((draw.shots, "support"), (draw.validation, "validation")):
                if ds is None:
                    parts.append(None)
                    continue
                vkey = (ds.name, normalise_view_config(method.view_config()))
                if vkey not in views:
                    got = self._labelled_views(ds, method)
                    views[vkey] = (got, check_counts(got, draw, what))
                parts.append(views[vkey])
            support, val_views = parts
            assert support is not None
            info = scorer.fit(support[0], None if val_views is None else val_views[0])  # type: ignore[attr-defined]
            out[label] = {"setting": "few-shot", "support": support_record(
                draw, support[1], None if val_views is None else val_views[1]), **info}
        return out

    def _pool_of(self, root: str) -> SupportPool:
        """The support folder matched to the evaluated classes, once per folder (its warnings once too)."""
        if root not in self._pools:
            self._pools[root] = match_support(root, self.dataset, self.warn)
        return self._pools[root]

    def _labelled_views(self, images: LabelledImages, method: Method) -> LabelledViews:
        """The views of support images through their own shard runner: cached like the test views (the
        draw's digest is in the dataset name, so each draw has its cache entry and a rerun reuses it)."""
        extractor = ViewExtractor.for_method(method, self.backbone, self._pool)
        runner = ShardRunner(self.backbone, images, self.view_cache, self.shard_size, self.batch_size, self.workers)
        parts: list[ViewSet] = []
        labels: list[int] = []
        paths: list[str] = []
        for item in runner.run(range(runner.n_shards), [extractor], runner.caches([extractor])):
            for pos, reason in item.failed.items():
                path, label = item.block[pos]
                if str(path) not in self._support_failed:
                    self._support_failed.add(str(path))
                    self.warn(f"support image {path} (class {images.classes[label]!r}) is unreadable ({reason}); "
                              "its class uses one shot fewer")
            labels.extend(item.block[pos][1] for pos in item.ok)
            paths.extend(str(item.block[pos][0]) for pos in item.ok)
            if item.ok:
                parts.append(item.views[0])

        def cat(name: str) -> torch.Tensor | None:
            tensors = [getattr(v, name) for v in parts]
            return None if not tensors or tensors[0] is None else torch.cat(tensors)

        full = cat("full")
        views = ViewSet(full=full if full is not None else ViewSet.empty(self.backbone).full,
                        raw=cat("raw"), feature=cat("feature"))
        return LabelledViews(views, torch.tensor(labels, dtype=torch.int64), paths)

    def _extract_seed(self, seed: int, dist: DistributedContext) -> list[ViewCache]:
        """This rank's share of a seed: the views of the shards it owns, stored in the cache (no scoring,
        so extraction ranks never embed text)."""
        extractors, _ = self._extractors([at_seed(m, seed) for m in self.methods.values()])
        caches = self._shards.caches(extractors, rank=dist.rank)
        owned = [s for s in range(self._shards.n_shards) if dist.owns(s)]
        total = sum(len(self._shards.block(s)[1]) for s in owned)
        done = 0
        for item in self._shards.run(owned, extractors, caches):
            done += len(item.block)
            if self.progress is not None:
                self.progress(seed, done, total)
        return [c for c in caches if c is not None]
