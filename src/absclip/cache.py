"""A resumable on-disk cache of per-image view embeddings (full / raw crops / feature crops).

Why: ABS and WCA views cost tens of encoder passes per image, while scoring them costs almost
nothing, so an evaluation that tries several methods, temperatures or description files should
extract views once and score many times. Evaluations are also long, so an interrupted run must
resume where it stopped and must never leave a half-written cache that a later run trusts.

Layout: one directory per cache key (a hash of every setting that changes the embeddings, see
:func:`cache_key`), holding ``shard-NNNNN.safetensors`` files (one per block of ``shard_size``
samples) and ``manifest.json`` listing the completed shards. Every file is written to a temporary
name and renamed into place, and the manifest is rewritten (atomically) only after its shard file
is complete: a crash leaves either the old manifest or the new one, and a shard not in the
manifest is simply recomputed. Each manifest entry stores a hash of its samples' keys, so a shard
computed for a different sample list (another ``--limit``, a changed dataset) is not reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .io import atomic_open, write_json
from .views import ViewConfig, ViewSet

log = logging.getLogger(__name__)

CACHE_VERSION = 1
MANIFEST = "manifest.json"


def cache_key(
    *,
    dataset: str,
    root: str | os.PathLike[str],
    model_fingerprint: str,
    model: dict[str, Any],
    saliency: str | None,
    config: ViewConfig,
    seed: int,
) -> dict[str, Any]:
    """Every setting that changes the stored embeddings, as JSON-able data (hashed by :func:`key_digest`).

    ``micro_batch`` is dropped (it only changes how crops are grouped for the encoder), and so is the
    saliency spec for views that do not use it, so that e.g. WCA's views are shared between runs that
    differ only in ABS's saliency source.
    """
    cfg = dataclasses.asdict(config)
    cfg.pop("micro_batch", None)
    return {
        "version": CACHE_VERSION,
        "dataset": dataset,
        "root": str(Path(root).expanduser().resolve()),
        "model_fingerprint": model_fingerprint,
        "model": model,
        "saliency": saliency if config.crops == "abs" else None,
        "config": cfg,
        "seed": seed,
    }


def key_digest(key: dict[str, Any]) -> str:
    """A short stable hash of a :func:`cache_key` (the cache directory's name)."""
    text = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def keys_digest(sample_keys: list[str]) -> str:
    """Hash of the image keys a shard holds: a shard is reused only for exactly these images."""
    return hashlib.sha256("\n".join(sample_keys).encode()).hexdigest()[:24]


@dataclass
class CachedShard:
    """Views of the readable images of one shard.

    ``ok`` are positions within the shard (0-based) of the images the views belong to, in order;
    ``failed`` maps the positions of unreadable images to the reason they were skipped.
    """

    views: ViewSet
    ok: list[int]
    failed: dict[int, str]


class ViewCache:
    """Sharded view-embedding cache for one key; see the module docstring for the format."""

    def __init__(self, root: str | os.PathLike[str], key: dict[str, Any], shard_size: int = 64) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be positive, got {shard_size}")
        self.key = key
        self.shard_size = shard_size
        self.directory = Path(root) / key_digest(key)
        self._manifest = self._read_manifest()

    # ---- manifest -------------------------------------------------------------------------------
    def _read_manifest(self) -> dict[str, Any]:
        path = self.directory / MANIFEST
        fresh = {"version": CACHE_VERSION, "key": self.key, "shard_size": self.shard_size, "shards": {}}
        if not path.is_file():
            return fresh
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:  # cannot happen with atomic writes, but never trust it
            log.warning("view cache %s: unreadable manifest (%s); starting afresh", self.directory, exc)
            return fresh
        if data.get("version") != CACHE_VERSION or data.get("shard_size") != self.shard_size:
            return fresh  # another shard layout: its ranges do not line up with ours
        return data

    @property
    def completed(self) -> list[int]:
        """Indices of the shards listed in the manifest."""
        return sorted(int(s) for s in self._manifest["shards"])

    # ---- shards ---------------------------------------------------------------------------------
    def load(self, shard: int, sample_keys: list[str]) -> CachedShard | None:
        """The cached views of ``shard`` if it was completed for exactly ``sample_keys``, else None."""
        entry = self._manifest["shards"].get(str(shard))
        if entry is None or entry.get("keys") != keys_digest(sample_keys) or entry.get("count") != len(sample_keys):
            return None
        path = self.directory / entry["file"]
        try:
            from safetensors.torch import load_file

            tensors = load_file(str(path))
        except Exception as exc:  # a deleted or damaged file: recompute rather than fail the run
            log.warning("view cache: cannot read %s (%s); recomputing that shard", path, exc)
            return None
        views = ViewSet(full=tensors["full"], raw=tensors.get("raw"), feature=tensors.get("feature"))
        failed = {int(pos): reason for pos, reason in entry.get("failed", [])}
        return CachedShard(views, tensors["ok"].tolist(), failed)

    def store(self, shard: int, start: int, sample_keys: list[str], data: CachedShard) -> None:
        """Write the shard file, then record it in the manifest (both atomically, in that order)."""
        from safetensors.torch import save

        tensors = {"full": data.views.full, "ok": torch.tensor(data.ok, dtype=torch.int64)}
        if data.views.raw is not None:
            tensors["raw"] = data.views.raw
        if data.views.feature is not None:
            tensors["feature"] = data.views.feature
        name = f"shard-{shard:05d}.safetensors"
        self.directory.mkdir(parents=True, exist_ok=True)
        blob = save({k: v.detach().float().cpu().contiguous() if k != "ok" else v for k, v in tensors.items()})
        with atomic_open(self.directory / name, "wb") as handle:
            handle.write(blob)
        self._manifest["shards"][str(shard)] = {
            "file": name,
            "start": start,
            "stop": start + len(sample_keys),
            "count": len(sample_keys),
            "keys": keys_digest(sample_keys),
            "failed": sorted([pos, reason] for pos, reason in data.failed.items()),
        }
        write_json(self.directory / MANIFEST, self._manifest)
