"""Label many images: decode workers ahead of the model, one record per input, handed on batch by batch.

Bad input never stops a run (unless ``strict``): an unreadable file becomes an error record naming the
reason, and the run goes on. Under torchrun, :func:`split_for_rank` gives each process its share of
the inputs still to do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..classifier import ZeroShotClassifier
from ..images import ImageLoadError
from ..parallel import decode_groups
from ..views import CropPlan

Record = dict[str, Any]
Decoded = tuple[str, torch.Tensor | None, str | None]
"""``(key, uint8 image [3, H, W] or None, error reason or None)``."""


def error_record(path: str, reason: str) -> Record:
    return {"path": path, "label": None, "score": None, "top_k": [], "error": reason}


def split_for_rank(todo: Sequence[str], rank: int, world: int) -> list[str]:
    """Every ``world``-th input from ``rank``: disjoint, covering, balanced to within one input."""
    return list(todo[rank::world])


@dataclass
class LabelSettings:
    """What every labeller needs.

    Args:
        classifier: the prepared classifier (text side embedded once).
        top_k: labels per record, each with its probability.
        batch_size: images decoded and classified together.
        workers: DataLoader processes decoding images (0 = in this process).
        strict: the first unreadable image raises instead of becoming an error record.
        plans: crop plans by image key to use instead of sampling.
        on_error: called with (path, reason) for each unreadable image.
    """

    classifier: ZeroShotClassifier
    top_k: int = 5
    batch_size: int = 8
    workers: int = 0
    strict: bool = False
    plans: dict[str, CropPlan] | None = None
    on_error: Callable[[str, str], None] = field(default=lambda path, reason: None)


@dataclass
class Labeller(LabelSettings):
    """Classifies inputs in batches of ``batch_size`` and yields (records, plans) per batch."""

    def __call__(self, paths: Sequence[Any]) -> Iterator[tuple[list[Record], list[CropPlan]]]:
        """``paths``: image paths (or :class:`~absclip.webdataset.TarMember` s), labelled in order."""
        groups = [range(i, min(i + self.batch_size, len(paths))) for i in range(0, len(paths), self.batch_size)]
        pin = self.classifier.backbone.device.type == "cuda"
        decoded = decode_groups(paths, groups, self.workers, self.batch_size, pin_memory=pin)
        try:
            for items in decoded:
                yield self.label([(str(paths[i]), image, error) for i, image, error in items])
        finally:
            decoded.close()

    def label(self, items: Sequence[Decoded]) -> tuple[list[Record], list[CropPlan]]:
        """Records (in the order given) and crop plans of decoded ``(key, image or None, error)`` items."""
        classes = self.classifier.classes
        records: list[Record | None] = []
        images, keys, slots = [], [], []
        for key, image, error in items:
            if image is None:
                reason = error or "unreadable"
                if self.strict:
                    raise ImageLoadError(key, reason)
                self.on_error(key, reason)
                records.append(error_record(key, reason))
                continue
            slots.append(len(records))
            records.append(None)
            images.append(image)
            keys.append(key)
        if not images:
            return [r for r in records if r is not None], []
        pred = self.classifier.predict(images, keys=keys, plans=self.plans)
        probs, idx = pred.topk(self.top_k)
        for slot, key, pr, ix in zip(slots, keys, probs.tolist(), idx.tolist(), strict=True):
            top = [{"label": classes[i], "index": i, "score": s} for i, s in zip(ix, pr, strict=True)]
            records[slot] = {"path": key, "label": classes[ix[0]], "score": pr[0], "top_k": top, "error": None}
        return [r for r in records if r is not None], pred.plans
