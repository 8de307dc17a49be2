"""Tip-Adapter (few-shot, training-free, Zhang et al. 2021): zero-shot + α·exp(−β(1−f·Kᵀ))·V; α=1, β=5.5.

Keys are the support images' features (each the normalised mean of its views, as the reference averages
its augmented views), values their one-hot labels. The query side scores every view against the cache
and averages. With several query embeddings per view (BLIP-2) keys and queries are the normalised mean of
the queries (an image-image similarity); the zero-shot part takes the max over queries. Variants:
``tip-adapter`` (full image, ``adapt.zero_shot_scale`` · cos, 100 in the reference), ``tip-adapter+mce``
(random crops, soft matching), ``tip-adapter+abs`` (attention crops).
"""

from __future__ import annotations

from typing import Any

import torch

from ..adapt import LabelledViews
from ..adapt.formulas import tip_adapter_keys, tip_adapter_logits
from ..views import ViewSet
from .adaptive import FewShotMethod
from .base import register_method


@register_method
class TipAdapterMethod(FewShotMethod):
    name = "tip-adapter"
    summary = ("support-image cache, full image: zero-shot + α·exp(−β(1−f·Kᵀ))·V; adapt.shots=16, "
               "adapt.tip_alpha=1, adapt.tip_beta=5.5, adapt.text=prompt")

    def fit(self, support: LabelledViews, validation: LabelledViews | None = None) -> dict[str, Any]:
        self.keys = tip_adapter_keys(self.image_features(support.views))
        self.labels = support.labels.clone()
        self.fitted = True
        return {"cache_size": len(self.keys)}

    def score(self, views: ViewSet) -> torch.Tensor:
        self._require_fit()
        a = self.options.adapt
        queries = self.image_features(views)  # image-image: pooled queries
        return tip_adapter_logits(self.zero_shot_logits(views), queries, self.keys.to(queries),
                                  self.labels.to(queries.device), self.num_classes, a.tip_alpha, a.tip_beta)


@register_method
class TipAdapterMceMethod(TipAdapterMethod):
    name = "tip-adapter+mce"
    description_kind = "cupl"
    views_kind = "mce"
    summary = ("Tip-Adapter on random crops (support and query side), soft matching as the zero-shot part; "
               "random_crops.crops=60, adapt.tip_alpha=1, adapt.tip_beta=5.5")


@register_method
class TipAdapterAbsMethod(TipAdapterMethod):
    name = "tip-adapter+abs"
    description_kind = "cupl"
    views_kind = "abs"
    summary = ("Tip-Adapter on ABS's attention-guided raw + feature crops (both sides), soft matching; "
               "abs_sampler.crops=50, adapt.tip_alpha=1, adapt.tip_beta=5.5")
