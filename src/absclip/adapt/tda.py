"""TDA (Karmanov et al., CVPR 2024): training-free test-time adaptation with two entropy-ordered caches.

Per test image, in stream order:

1. Observe (stateless): the zero-shot logits of its views; with several views, keep the fraction with
   the lowest entropy (at least one) and average their features and logits; its entropy (of the mean
   probability over the kept views), probabilities and predicted class.
2. Update: the positive cache of the predicted class takes (feature, entropy) — appended while the class
   holds fewer than its capacity, else replacing the class's highest-entropy entry if the new one is
   lower; entries stay sorted by entropy (a stable sort). When the entropy divided by log2(C) lies
   strictly inside the negative band, the negative cache takes (feature, entropy, probabilities) by the
   same rule. (The reference divides an entropy in nats by log2(C); kept so its thresholds mean the same.)
3. Score: zero-shot logits + α₊ · affinity(positive cache, one-hot of its class) − α₋ · affinity(negative
   cache, the mask of classes with probability inside the mask band). The image is cached before it is
   scored, as in the reference.

Observations are computed in the view pass, so the stream itself only holds one [D] feature and a few [C]
vectors per image, whatever the number of views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Observations:
    """Per-image TDA inputs: feature [B, D], logits [B, C], entropy [B], probabilities [B, C]."""

    features: torch.Tensor
    logits: torch.Tensor
    entropy: torch.Tensor
    probabilities: torch.Tensor

    @property
    def predictions(self) -> torch.Tensor:
        return self.logits.argmax(dim=1)

    def __len__(self) -> int:
        return len(self.logits)

    @classmethod
    def cat(cls, parts: list[Observations]) -> Observations:
        return cls(*(torch.cat([getattr(p, n) for p in parts]) for n in ("features", "logits", "entropy",
                                                                         "probabilities")))


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of softmax(logits) over the last dimension."""
    return -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)


def mean_probability_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the mean probability over views: logits [B, K, C] -> [B] (the reference's avg_entropy)."""
    log_mean = torch.logsumexp(logits.log_softmax(-1), dim=1) - math.log(logits.shape[1])
    log_mean = log_mean.clamp(min=torch.finfo(log_mean.dtype).min)
    return -(log_mean * log_mean.exp()).sum(-1)


def observe(view_logits: torch.Tensor, view_features: torch.Tensor, fraction: float) -> Observations:
    """Observations of B images from their views' logits [B, V, C] and features [B, V, D]."""
    views = view_logits.shape[1]
    if views == 1:
        logits = view_logits[:, 0]
        return Observations(view_features[:, 0], logits, softmax_entropy(logits), logits.softmax(-1))
    keep = max(1, int(views * fraction))
    order = torch.argsort(softmax_entropy(view_logits), dim=1, stable=True)[:, :keep]  # [B, keep]
    kept = torch.gather(view_logits, 1, order[..., None].expand(-1, -1, view_logits.shape[2]))
    feats = torch.gather(view_features, 1, order[..., None].expand(-1, -1, view_features.shape[2]))
    # the reference averages the kept features without renormalising them
    return Observations(feats.mean(1), kept.mean(1), mean_probability_entropy(kept), kept.softmax(-1).mean(1))


class EntropyCache:
    """Per-class slots of (feature, entropy[, value]), each class's entries ordered by entropy ascending.

    ``order[c]`` lists (entropy, slot) in cache order; features and values live in fixed tensors so that
    scoring is a few tensor products however full the cache is (``valid`` marks the filled slots).
    """

    def __init__(self, num_classes: int, capacity: int, dim: int, value_dim: int | None = None) -> None:
        self.capacity = capacity
        self.keys = torch.zeros(num_classes, capacity, dim)
        self.values = None if value_dim is None else torch.zeros(num_classes, capacity, value_dim)
        self.valid = torch.zeros(num_classes, capacity, dtype=torch.bool)
        self.order: list[list[tuple[float, int]]] = [[] for _ in range(num_classes)]

    def update(self, pred: int, feature: torch.Tensor, entropy: float, value: torch.Tensor | None = None) -> None:
        entries = self.order[pred]
        if len(entries) < self.capacity:
            slot = len(entries)
            entries.append((entropy, slot))
        elif entropy < entries[-1][0]:
            slot = entries[-1][1]
            entries[-1] = (entropy, slot)
        else:
            return
        self.order[pred] = sorted(entries, key=lambda e: e[0])  # stable: equal entropies keep their order
        self.keys[pred, slot] = feature
        self.valid[pred, slot] = True
        if self.values is not None and value is not None:
            self.values[pred, slot] = value

    def __len__(self) -> int:
        return sum(len(e) for e in self.order)

    def entries(self, pred: int) -> list[tuple[float, torch.Tensor]]:
        """(entropy, feature) of class ``pred``'s entries in cache order (for inspection and tests)."""
        return [(h, self.keys[pred, slot]) for h, slot in self.order[pred]]

    def weights(self, feature: torch.Tensor, beta: float) -> torch.Tensor:
        """exp(−β (1 − f·k)) of every slot, 0 for empty ones: [C, capacity]."""
        affinity = torch.einsum("csd,d->cs", self.keys, feature)
        return torch.exp(-beta * (1.0 - affinity)) * self.valid


class TdaState:
    """The two caches of one stream, and the per-image update-then-score step."""

    def __init__(self, num_classes: int, dim: int, pos_capacity: int, neg_capacity: int,
                 pos_alpha: float, pos_beta: float, neg_alpha: float, neg_beta: float,
                 neg_entropy: tuple[float, float], neg_mask: tuple[float, float]) -> None:
        self.num_classes = num_classes
        self.positive = EntropyCache(num_classes, pos_capacity, dim)
        self.negative = EntropyCache(num_classes, neg_capacity, dim, value_dim=num_classes)
        self.pos = (pos_alpha, pos_beta)
        self.neg = (neg_alpha, neg_beta)
        self.neg_entropy = neg_entropy
        self.neg_mask = neg_mask
        self._max_entropy = math.log2(num_classes) if num_classes > 1 else 1.0

    def step(self, feature: torch.Tensor, logits: torch.Tensor, entropy: float,
             probabilities: torch.Tensor) -> torch.Tensor:
        """Update the caches with one image, then its adapted logits [C]."""
        pred = int(logits.argmax())
        self.positive.update(pred, feature, entropy)
        normalised = entropy / self._max_entropy
        if self.neg_entropy[0] < normalised < self.neg_entropy[1]:
            self.negative.update(pred, feature, entropy, probabilities)
        # a positive entry votes for the class it is cached under (one-hot values): sum its row
        out = logits + self.pos[0] * self.positive.weights(feature, self.pos[1]).sum(dim=1)
        if len(self.negative):
            assert self.negative.values is not None
            probs = self.negative.values
            mask = ((probs > self.neg_mask[0]) & (probs < self.neg_mask[1])).to(feature.dtype)
            out = out - self.neg[0] * torch.einsum("cs,csk->k", self.negative.weights(feature, self.neg[1]), mask)
        return out

    def run(self, obs: Observations, order: list[int]) -> torch.Tensor:
        """Stream ``obs`` rows in ``order``; logits [B, C] back in row order."""
        out = torch.empty_like(obs.logits)
        for row in order:
            out[row] = self.step(obs.features[row], obs.logits[row], float(obs.entropy[row]),
                                 obs.probabilities[row])
        return out
