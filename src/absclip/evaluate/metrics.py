"""Accuracy metrics of one method's logits, as CLIP_benchmark reports them."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

METRICS = ("acc1", "acc5", "mean_per_class_recall")


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
