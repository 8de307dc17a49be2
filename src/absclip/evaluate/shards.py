"""The shard runner: a dataset's views for several extractors, shard by shard, from the view cache
where complete, else decoded (DataLoader workers ahead of the encoder), extracted and stored.

Completeness is decided from the manifests alone (no shard file is read ahead, so memory holds one
shard's views at a time). A cached shard whose file turns out unreadable or damaged is decoded in this
process instead, out of turn. The caches know each image by its file identity (path, size,
modification time; :func:`absclip.cache.keys_digest`) and each extractor by its saliency weights too,
so replacing an image or the weights behind ``dino:DIR`` recomputes the views instead of reusing
stale ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..backbones import Backbone
from ..cache import CachedShard, ViewCache, cache_key, saliency_fingerprint
from ..data import LabelledImages
from ..parallel import Decoded, decode_groups
from ..text.embed import model_fingerprint
from ..views import ViewExtractor, ViewSet


def cache_identity(backbone: Backbone) -> dict[str, Any]:
    """The backbone facts that change view embeddings. The device *type* matters (CPU and CUDA kernels
    differ in the last bits) but not its index: under torchrun, rank r runs on cuda:r and every rank
    must address the same cache."""
    identity = backbone.describe()
    identity["device"] = backbone.device.type
    return identity


@dataclass
class ShardViews:
    """The views of one shard for every extractor; ``ok`` / ``failed`` are positions in the shard."""

    shard: int
    start: int
    block: list[tuple[Path, int]]
    views: list[ViewSet]
    ok: list[int]
    failed: dict[int, str]


@dataclass
class ShardRunner:
    """Shards of ``shard_size`` samples of ``dataset``; ``view_cache`` None disables caching.

    ``batch_size`` images go through an extractor per call; ``workers`` DataLoader processes decode
    (0: in this process); ``rank`` (torchrun) makes stores go to that rank's own manifest.
    """

    backbone: Backbone
    dataset: LabelledImages
    view_cache: Path | None = None
    shard_size: int = 64
    batch_size: int = 8
    workers: int = 0

    def __post_init__(self) -> None:
        self._fingerprint: str | None = None
        # saliency weights hashed once per source object (the pool keeps each source alive meanwhile)
        self._saliency_fingerprints: dict[int, str | None] = {}

    @property
    def n_shards(self) -> int:
        return -(-len(self.dataset.samples) // self.shard_size)

    def block(self, shard: int) -> tuple[int, list[tuple[Path, int]]]:
        start = shard * self.shard_size
        return start, self.dataset.samples[start : start + self.shard_size]

    def caches(self, extractors: Sequence[ViewExtractor], rank: int | None = None) -> list[ViewCache | None]:
        """One cache per extractor, keyed by every setting that changes its views."""
        if self.view_cache is None:
            return [None] * len(extractors)
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.backbone)
        identity = cache_identity(self.backbone)
        return [ViewCache(self.view_cache, cache_key(dataset=self.dataset.name, root=self.dataset.root or "",
                                                     model_fingerprint=self._fingerprint, model=identity,
                                                     config=e.config,
                                                     saliency_fingerprint=self._saliency_fingerprint(e)),
                          self.shard_size, rank=rank)
                for e in extractors]

    def _saliency_fingerprint(self, extractor: ViewExtractor) -> str | None:
        source = extractor.saliency if extractor.config.uses_saliency else None
        if source is None:
            return None
        if id(source) not in self._saliency_fingerprints:
            self._saliency_fingerprints[id(source)] = saliency_fingerprint(source)
        return self._saliency_fingerprints[id(source)]

    def run(self, shards: Sequence[int], extractors: Sequence[ViewExtractor],
            caches: Sequence[ViewCache | None]) -> Iterator[ShardViews]:
        """Views of ``shards`` in order, one :class:`ShardViews` per shard."""
        keys_of = {s: [str(path) for path, _ in self.block(s)[1]] for s in shards}

        def complete(shard: int) -> bool:
            entries = [c.entry(shard, keys_of[shard]) if c is not None else None for c in caches]
            return all(e is not None for e in entries) and len({json.dumps(e["failed"]) for e in entries}) == 1

        cached = {s: complete(s) for s in shards}
        paths = [path for path, _ in self.dataset.samples]
        decoded = decode_groups(paths, [self._span(s) for s in shards if not cached[s]], self.workers,
                                self.batch_size)
        try:
            for shard in shards:
                start, block = self.block(shard)
                # each listed cache file is read (and verified) once; the hits go on to the extraction
                hits = [c.load(shard, keys_of[shard]) if c is not None else None for c in caches]
                first = hits[0] if hits else None
                if cached[shard] and first is not None and all(h is not None and h.ok == first.ok for h in hits):
                    yield ShardViews(shard, start, block, [h.views for h in hits if h is not None], first.ok,
                                     first.failed)
                    continue
                if cached[shard]:  # listed, but a file is missing or damaged: decode it here, out of turn
                    [items] = list(decode_groups(paths, [self._span(shard)]))
                else:
                    items = next(decoded)
                yield self._extract_shard(shard, start, block, keys_of[shard], items, extractors, caches, hits)
        finally:
            decoded.close()

    def _span(self, shard: int) -> range:
        start, block = self.block(shard)
        return range(start, start + len(block))

    def _extract_shard(self, shard: int, start: int, block: list[tuple[Path, int]], keys: list[str],
                       items: list[Decoded], extractors: Sequence[ViewExtractor],
                       caches: Sequence[ViewCache | None], hits: Sequence[CachedShard | None]) -> ShardViews:
        """Views of one decoded shard for every extractor (reusing an extractor's cached views if they fit)."""
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
        for extractor, cache, hit in zip(extractors, caches, hits, strict=True):
            if hit is not None and hit.ok == ok:
                out.append(hit.views)
                continue
            views = self._extract(extractor, images, [keys[p] for p in ok])
            if cache is not None:
                cache.store(shard, start, keys, CachedShard(views, ok, failed))
            out.append(views)
        return ShardViews(shard, start, block, out, ok, failed)

    def _extract(self, extractor: ViewExtractor, images: list[torch.Tensor], keys: list[str]) -> ViewSet:
        """Views of ``images`` in batches of ``batch_size``, concatenated on the CPU."""
        if not images:
            return ViewSet.empty(self.backbone)
        parts = [extractor(images[i : i + self.batch_size], keys[i : i + self.batch_size])[0]
                 for i in range(0, len(images), self.batch_size)]

        def cat(name: str) -> torch.Tensor | None:
            tensors = [getattr(v, name) for v in parts]
            return None if tensors[0] is None else torch.cat([t.float().cpu() for t in tensors])

        full = cat("full")
        assert full is not None
        return ViewSet(full=full, raw=cat("raw"), feature=cat("feature"))
