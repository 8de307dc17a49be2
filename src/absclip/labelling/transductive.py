"""Labelling with a transductive method (ZPE, FuDD): two passes, each resumable.

Pass 1 decodes every image and keeps the method's observations of the readable ones (unreadable ones
become error records at once). With an output file, each batch's observations are written atomically to
``OUTPUT.parts/observed/chunk-NNNNNN.safetensors`` (checksummed, with the batch's keys and the run's
signature), so a run killed in pass 1 resumes with the images not yet observed. Pass 2 fits the method on
every observation at once (``run_stream``) and hands on the records of the images without one, batch by
batch, so a run killed in pass 2 redoes only the fit (deterministic) and the missing records.

A resumed run must be the same run: the signature (method, options, model, classes and the full input
list) is stored with every chunk, and one that differs is an error, never mixed into the fit. Observations
that are not a dataclass of tensors are kept in memory only: such a run restarts pass 1 when resumed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..cache import CorruptCacheError, load_checked, save_checked
from ..errors import InputFileError
from ..images import ImageLoadError
from ..io import atomic_open
from ..parallel import decode_groups
from ..views import CropPlan
from .run import LabelSettings, Record, error_record

log = logging.getLogger(__name__)

STORE_FORMAT = "absclip.observations/1"


def run_signature(method: Any, model: str, classes: Sequence[str], keys: Sequence[str]) -> str:
    """A digest of everything the fit depends on: a resumed pass may only join observations of the same run."""
    payload = {"method": method.name, "options": repr(method.options), "model": model, "classes": list(classes),
               "inputs": hashlib.sha256("\n".join(keys).encode()).hexdigest()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def _tensor_fields(observations: Any) -> dict[str, torch.Tensor] | None:
    """The tensors of a dataclass whose fields are all tensors or None; None if it is not one."""
    if not dataclasses.is_dataclass(observations) or isinstance(observations, type):
        return None
    out = {}
    for f in dataclasses.fields(observations):
        value = getattr(observations, f.name)
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            return None
        out[f.name] = value
    return out


def _observation_type(spec: str) -> type:
    """The observation class named ``module:qualname``, which must live in absclip and be a dataclass."""
    module, _, name = spec.partition(":")
    if not module.startswith("absclip.") or not name.isidentifier():
        raise CorruptCacheError(f"unexpected observation type {spec!r}")
    cls = getattr(importlib.import_module(module), name, None)
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise CorruptCacheError(f"unexpected observation type {spec!r}")
    return cls


class ObservationStore:
    """Pass 1's observations on disk, one checksummed safetensors file per batch (see the module docstring)."""

    def __init__(self, directory: Path, signature: str) -> None:
        self.directory = directory
        self.signature = signature

    def load(self) -> tuple[list[str], list[Any]]:
        """(keys, observations per chunk) of every intact chunk of this run; a damaged chunk is reported,
        removed, and its images observed again."""
        keys: list[str] = []
        parts: list[Any] = []
        for path in sorted(self.directory.glob("chunk-*.safetensors")):
            try:
                tensors, meta = load_checked(path)
                if meta.get("format") != STORE_FORMAT:
                    raise CorruptCacheError("not an absclip observation chunk")
                if meta.get("signature") != self.signature:
                    raise InputFileError(
                        f"{path.parent.parent} holds observations of another run (other method, options, model, "
                        "classes or inputs): pass --overwrite to start again")
                chunk_keys = json.loads(meta["keys"])
                obs = _observation_type(meta["type"])(**tensors)
                if len(obs) != len(chunk_keys):
                    raise CorruptCacheError("keys and rows differ")
            except (CorruptCacheError, KeyError, TypeError, ValueError, OSError) as exc:
                log.warning("observation chunk %s is damaged (%s); its images are observed again", path, exc)
                path.unlink(missing_ok=True)
                continue
            keys.extend(chunk_keys)
            parts.append(obs)
        return keys, parts

    def save(self, keys: Sequence[str], observations: Any) -> bool:
        """Write one chunk atomically; False (nothing written) if the observations cannot be stored."""
        tensors = _tensor_fields(observations)
        if tensors is None:
            return False
        self.directory.mkdir(parents=True, exist_ok=True)
        index = len(list(self.directory.glob("chunk-*.safetensors")))
        while (path := self.directory / f"chunk-{index:06d}.safetensors").exists():
            index += 1
        cls = type(observations)
        meta = {"format": STORE_FORMAT, "signature": self.signature, "keys": json.dumps(list(keys)),
                "type": f"{cls.__module__}:{cls.__qualname__}"}
        with atomic_open(path, "wb") as handle:
            handle.write(save_checked(tensors, meta))
        return True


@dataclass
class TransductiveLabeller(LabelSettings):
    """Labels inputs with a transductive method in two passes (see the module docstring).

    ``store`` (None: in memory) keeps pass 1 on disk; ``on_observed(count)`` and ``on_labelled(count)``
    report progress.
    """

    store: ObservationStore | None = None
    on_observed: Callable[[int], None] = field(default=lambda count: None)

    def pending(self, paths: Sequence[Any], done: Sequence[Record]) -> tuple[list[Any], list[str], list[Any]]:
        """(inputs pass 1 still has to observe, keys already observed, their observations)."""
        keys, parts = self.store.load() if self.store is not None else ([], [])
        unreadable = {r["path"] for r in done if r.get("error")}
        seen = set(keys)
        return [p for p in paths if str(p) not in seen and str(p) not in unreadable], keys, parts

    def __call__(self, paths: Sequence[Any], done: Sequence[Record]) -> Iterator[tuple[list[Record], list[CropPlan]]]:
        """Yield (records, plans) batch by batch: pass 1's error records and plans, then pass 2's records
        of the inputs in ``paths`` order that have none in ``done``."""
        todo, keys, parts = self.pending(paths, done)
        for records, batch_keys, observations, plans in self._observe(todo):
            if observations is not None:
                keys.extend(batch_keys)
                parts.append(observations)
            self.on_observed(len(records) + len(batch_keys))
            yield records, plans
        finished = {r["path"] for r in done}
        if not parts:
            return
        pred = self.classifier.conclude(type(parts[0]).cat(parts))
        probs, idx = pred.topk(self.top_k)
        row = {key: i for i, key in enumerate(keys)}  # a key observed twice (a lost chunk redone) keeps one row
        names = self.classifier.classes
        batch: list[Record] = []
        for path in paths:
            key = str(path)
            if key in finished or key not in row:
                continue
            i = row[key]
            top = [{"label": names[c], "index": c, "score": s}
                   for c, s in zip(idx[i].tolist(), probs[i].tolist(), strict=True)]
            batch.append({"path": key, "label": top[0]["label"], "score": top[0]["score"], "top_k": top,
                          "error": None})
            if len(batch) == self.batch_size:
                yield batch, []
                batch = []
        if batch:
            yield batch, []

    def _observe(self, paths: Sequence[Any]) -> Iterator[tuple[list[Record], list[str], Any, list[CropPlan]]]:
        """Pass 1, batch by batch: (error records, observed keys, observations or None, plans)."""
        groups = [range(i, min(i + self.batch_size, len(paths))) for i in range(0, len(paths), self.batch_size)]
        pin = self.classifier.backbone.device.type == "cuda"
        decoded = decode_groups(paths, groups, self.workers, self.batch_size, pin_memory=pin)
        try:
            for items in decoded:
                errors, images, keys = [], [], []
                for i, image, error in items:
                    key = str(paths[i])
                    if image is None:
                        reason = error or "unreadable"
                        if self.strict:
                            raise ImageLoadError(key, reason)
                        self.on_error(key, reason)
                        errors.append(error_record(key, reason))
                    else:
                        images.append(image)
                        keys.append(key)
                if not images:
                    yield errors, [], None, []
                    continue
                observations, plans = self.classifier.observe(images, keys=keys, plans=self.plans)
                if self.store is not None:
                    self.store.save(keys, observations)
                yield errors, keys, observations, plans
        finally:
            decoded.close()
