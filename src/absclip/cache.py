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
computed for a different sample list (another ``--limit``, a changed dataset) is not reused; the
shard file carries the same hash in its metadata, so an entry can never be paired with a file that
was since overwritten for other samples. The hash covers each image's file identity (path, size and
modification time, :func:`file_identity`), so an image replaced at the same path is recomputed.

Integrity: every shard file carries a SHA-256 of its tensors in its metadata (:func:`save_checked`),
verified when it is read (:func:`load_checked`, one read of the file). A shard whose checksum does not
match, or that cannot be parsed (truncated, edited), is reported in one warning line and recomputed:
a damaged cache must never change a result. The text-embedding cache (:mod:`absclip.text.embed`)
uses the same two functions.

Distributed runs (``torchrun``, :mod:`absclip.parallel`): each rank writes only the shards it owns
and records them in its own ``manifest.rank{r}.json`` (ranks never write the same file, so no
locking is needed). After all ranks are done, rank 0 folds them into ``manifest.json`` and
deletes them (:meth:`ViewCache.merge`). A cache opened while per-rank manifests are still around (an
interrupted distributed run) reads them too, so resuming works with any number of processes.
When two manifests list the same shard, the most recently written entry wins.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .io import atomic_open, write_json
from .views import ViewConfig, ViewSet

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: checksummed shards, saliency weights and file identities in the keys
MANIFEST = "manifest.json"
RANK_MANIFEST = "manifest.rank{rank}.json"
CHECKSUM = "sha256"  # the metadata field of a checked safetensors file


class CorruptCacheError(Exception):
    """A cache file that cannot be trusted: unparsable, without a checksum, or not matching it."""


def tensors_checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{list(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def save_checked(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """A safetensors file (as bytes) whose metadata holds :func:`tensors_checksum` of its tensors."""
    from safetensors.torch import save

    contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return save(contiguous, metadata={**(metadata or {}), CHECKSUM: tensors_checksum(contiguous)})


def load_checked(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a file written from :func:`save_checked`, read once and verified.

    Raises :class:`CorruptCacheError` for a file that does not parse or whose tensors do not match
    their checksum (``OSError`` if it cannot be read at all).
    """
    from safetensors.torch import load

    data = Path(path).read_bytes()
    try:
        # the safetensors layout: an 8-byte little-endian header length, then the JSON header
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + size])
        metadata = header.get("__metadata__") or {}
        tensors = load(data)
    except Exception as exc:  # truncated or edited: safetensors and json raise several types
        raise CorruptCacheError(f"unreadable ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(metadata, dict) or CHECKSUM not in metadata:
        raise CorruptCacheError("no checksum")
    if tensors_checksum(tensors) != metadata[CHECKSUM]:
        raise CorruptCacheError("checksum mismatch")
    return tensors, metadata


def file_identity(path: str | os.PathLike[str]) -> str:
    """The path plus its size and modification time (ns): a cache entry is reused only for the same
    file at the same path, so an image replaced in place is recomputed. A file that cannot be
    stat-ed gets a marker instead (it will be reported as unreadable when decoded)."""
    try:
        st = os.stat(path)
    except OSError:
        return f"{path}\0missing"
    return f"{path}\0{st.st_size}\0{st.st_mtime_ns}"


def weights_fingerprint(module: nn.Module) -> str:
    """SHA-256 (first 20 hex digits) of every tensor of ``module``'s state dict, names included:
    re-initialised or fine-tuned weights saved at the same path get another fingerprint."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}\0{data.dtype}\0{list(data.shape)}\0".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:20]


def saliency_fingerprint(source: object | None) -> str | None:
    """What identifies a saliency source's weights beyond its spec string, for the view cache key.

    A source may name itself with a ``fingerprint`` string; otherwise a ``model`` attribute holding an
    ``nn.Module`` (the DINO sources) is hashed with :func:`weights_fingerprint`. None for sources with
    no weights of their own: ``uniform``, and ``clip``, which uses the VLM (already in the key).
    """
    if source is None:
        return None
    named = getattr(source, "fingerprint", None)
    if isinstance(named, str):
        return named
    model = getattr(source, "model", None)
    return weights_fingerprint(model) if isinstance(model, nn.Module) else None


def cache_key(
    *,
    dataset: str,
    root: str | os.PathLike[str],
    model_fingerprint: str,
    model: dict[str, Any],
    config: ViewConfig,
    saliency_fingerprint: str | None = None,
) -> dict[str, Any]:
    """Every setting that changes the stored embeddings, as JSON-able data (hashed by :func:`key_digest`).

    ``micro_batch`` is dropped (it only changes how crops are grouped for the encoder). The config's
    saliency spec is None for views that do not use one, so e.g. WCA's views are shared between runs
    that differ only in ABS's saliency source. ``saliency_fingerprint`` (:func:`saliency_fingerprint`)
    identifies the saliency weights, which the spec alone does not: ``dino:DIR`` names a directory
    whose weights can change.
    """
    cfg = dataclasses.asdict(config)
    cfg.pop("micro_batch", None)
    return {
        "version": CACHE_VERSION,
        "dataset": dataset,
        "root": str(Path(root).expanduser().resolve()),
        "model_fingerprint": model_fingerprint,
        "model": model,
        "config": cfg,
        "saliency_fingerprint": saliency_fingerprint if config.uses_saliency else None,
    }


def key_digest(key: dict[str, Any]) -> str:
    """A short stable hash of a :func:`cache_key` (the cache directory's name)."""
    text = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def keys_digest(sample_keys: list[str]) -> str:
    """Hash of the images a shard holds, each by its :func:`file_identity` (the keys are image paths):
    a shard is reused only for exactly these files, unchanged."""
    return hashlib.sha256("\n".join(file_identity(k) for k in sample_keys).encode()).hexdigest()[:24]


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
    """Sharded view-embedding cache for one key; see the module docstring for the format.

    ``rank`` (a torch.distributed rank) makes :meth:`store` record shards in that rank's own
    manifest instead of the shared ``manifest.json``.
    """

    def __init__(self, root: str | os.PathLike[str], key: dict[str, Any], shard_size: int = 64,
                 rank: int | None = None) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be positive, got {shard_size}")
        self.key = key
        self.shard_size = shard_size
        self.rank = rank
        self.directory = Path(root) / key_digest(key)
        self._own: dict[str, Any] = {}  # this rank's entries, the content of its manifest file
        # keys_digest per sample list, computed once: the files are stat-ed when a shard is first looked
        # up (before it is decoded), and store() records that identity, not a later one
        self._digests: dict[tuple[str, ...], str] = {}
        self._manifest = self._read_manifests()

    # ---- manifest -------------------------------------------------------------------------------
    def _fresh(self) -> dict[str, Any]:
        return {"version": CACHE_VERSION, "key": self.key, "shard_size": self.shard_size, "shards": {}}

    def _read_manifest(self, path: Path) -> dict[str, Any] | None:
        """One manifest file, or None if absent, unreadable or laid out for another shard size."""
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:  # cannot happen with atomic writes, but never trust it
            log.warning("view cache %s: unreadable manifest %s (%s); ignoring it", self.directory, path.name, exc)
            return None
        if data.get("version") != CACHE_VERSION or data.get("shard_size") != self.shard_size:
            return None  # another shard layout: its ranges do not line up with ours
        return data

    def _rank_manifests(self) -> list[Path]:
        return sorted(self.directory.glob(RANK_MANIFEST.format(rank="*")))

    def _read_manifests(self) -> dict[str, Any]:
        """The main manifest with every per-rank manifest merged in (newest entry per shard wins)."""
        merged = self._read_manifest(self.directory / MANIFEST) or self._fresh()
        for path in self._rank_manifests():
            data = self._read_manifest(path)
            if data is None:
                continue
            for shard, entry in data["shards"].items():
                current = merged["shards"].get(shard)
                if current is None or entry.get("written", 0) >= current.get("written", 0):
                    merged["shards"][shard] = entry
            if self.rank is not None and path.name == RANK_MANIFEST.format(rank=self.rank):
                self._own = dict(data["shards"])  # keep what this rank wrote before (an interrupted run)
        return merged

    @property
    def completed(self) -> list[int]:
        """Indices of the shards listed in the manifest(s)."""
        return sorted(int(s) for s in self._manifest["shards"])

    def entry(self, shard: int, sample_keys: list[str]) -> dict[str, Any] | None:
        """The manifest entry of ``shard`` if it was completed for exactly ``sample_keys`` (no file read)."""
        entry = self._manifest["shards"].get(str(shard))
        if entry is None or entry.get("keys") != self.digest(sample_keys) or entry.get("count") != len(sample_keys):
            return None
        return entry

    def digest(self, sample_keys: list[str]) -> str:
        """:func:`keys_digest` of ``sample_keys``, remembered for this cache's life."""
        key = tuple(sample_keys)
        if key not in self._digests:
            self._digests[key] = keys_digest(sample_keys)
        return self._digests[key]

    def merge(self) -> list[int]:
        """Fold every per-rank manifest into ``manifest.json`` (atomically), then delete them.

        Called by rank 0 once all ranks passed the barrier, so no rank is still writing. A crash
        between the write and the deletes only leaves manifests that the next merge folds in again.
        Returns the completed shard indices.
        """
        leftovers = self._rank_manifests()
        self._manifest = self._read_manifests()
        if leftovers:
            write_json(self.directory / MANIFEST, self._manifest)
            for path in leftovers:
                path.unlink(missing_ok=True)
        return self.completed

    # ---- shards ---------------------------------------------------------------------------------
    def load(self, shard: int, sample_keys: list[str]) -> CachedShard | None:
        """The cached views of ``shard`` if it was completed for exactly ``sample_keys``, else None.

        The file is read once and verified (:func:`load_checked`); a damaged one is reported in one
        warning line and None is returned, so the shard is recomputed (and rewritten by :meth:`store`).
        """
        entry = self.entry(shard, sample_keys)
        if entry is None:
            return None
        path = self.directory / entry["file"]
        try:
            tensors, metadata = load_checked(path)
        except CorruptCacheError as exc:
            log.warning("view cache: %s is damaged (%s); recomputing that shard", path, exc)
            return None
        except OSError as exc:  # deleted or unreadable since the manifest listed it
            log.warning("view cache: cannot read %s (%s); recomputing that shard", path, exc.strerror or exc)
            return None
        if metadata.get("keys") != entry["keys"] or "full" not in tensors or "ok" not in tensors:
            # the file was rewritten for other samples since this entry was recorded (e.g. a
            # stale per-rank manifest): recompute rather than pair views with the wrong images
            log.warning("view cache: %s holds other samples than its manifest entry; recomputing", path)
            return None
        views = ViewSet(full=tensors["full"], raw=tensors.get("raw"), feature=tensors.get("feature"))
        failed = {int(pos): reason for pos, reason in entry.get("failed", [])}
        return CachedShard(views, tensors["ok"].tolist(), failed)

    def store(self, shard: int, start: int, sample_keys: list[str], data: CachedShard) -> None:
        """Write the shard file, then record it in the manifest (both atomically, in that order).

        With a ``rank``, the entry goes to that rank's manifest, which only this process writes.
        """
        tensors = {"full": data.views.full, "ok": torch.tensor(data.ok, dtype=torch.int64)}
        if data.views.raw is not None:
            tensors["raw"] = data.views.raw
        if data.views.feature is not None:
            tensors["feature"] = data.views.feature
        name = f"shard-{shard:05d}.safetensors"
        digest = self.digest(sample_keys)
        self.directory.mkdir(parents=True, exist_ok=True)
        blob = save_checked({k: v.float() if k != "ok" else v for k, v in tensors.items()}, {"keys": digest})
        with atomic_open(self.directory / name, "wb") as handle:
            handle.write(blob)
        entry: dict[str, Any] = {
            "file": name,
            "start": start,
            "stop": start + len(sample_keys),
            "count": len(sample_keys),
            "keys": digest,
            "failed": sorted([pos, reason] for pos, reason in data.failed.items()),
            "written": time.time(),
        }
        if self.rank is not None:
            entry["rank"] = self.rank
        self._manifest["shards"][str(shard)] = entry
        if self.rank is None:
            write_json(self.directory / MANIFEST, self._manifest)
        else:
            self._own[str(shard)] = entry
            write_json(self.directory / RANK_MANIFEST.format(rank=self.rank), {**self._fresh(), "shards": self._own})
