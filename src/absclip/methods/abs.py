"""ABS (ICML 2025): attention-guided crops in raw and feature space, soft-matched with descriptions.

Ablation switches (paper Table 4): ``raw`` / ``feature`` views, ``soft_match`` (off: mean over
descriptions, i.e. CuPL's class embedding, summed over views); ``view_weights`` is the paper's
weighting, which the reference computes but does not use (off by default).
"""

from __future__ import annotations

import torch

from ..backbones import Backbone
from ..scoring import mean_embedding_logits, similarity_view_weights, soft_match_logits
from ..text import masked_mean_normalised
from ..views import CropKind, ViewConfig, ViewSet
from .base import Method, TextInputs, register_method


@register_method
class AbsMethod(Method):
    name = "abs"
    description_kind = "cupl"
    summary = ("attention-guided raw + feature crops soft-matched with the descriptions; abs_sampler.crops=50, "
               "top_k=20, ratio=(0.6, 0.9), saliency=dino, max_descriptions=50, temperature=0.03")

    def view_config(self) -> ViewConfig:
        o = self.options
        if not (o.raw or o.feature):  # Table 4's "soft matching only" row: the full image, soft-matched
            return ViewConfig(seed=o.seed, micro_batch=o.micro_batch)
        return ViewConfig(crops=CropKind.ABS, raw=o.raw, feature=o.feature, feature_layer=o.feature_layer,
                          raw_augment=o.raw_augment, feature_augment=o.feature_augment,
                          abs=o.abs_sampler, seed=o.seed, micro_batch=o.micro_batch, saliency=o.saliency)

    def prepare(self, inputs: TextInputs) -> None:
        desc = self._require_descriptions(inputs).capped(self.options.max_descriptions)
        self.ragged = inputs.embedder.embed_ragged(desc)

    def probability_scale(self, backbone: Backbone, views: ViewSet) -> float:
        count = views.crops().shape[1]
        if not self.options.soft_match:  # cosines summed over the views
            return backbone.logit_scale / count
        return 1.0 / count

    def score(self, views: ViewSet) -> torch.Tensor:
        crops = views.crops()  # [B, V, D], raw then feature
        if not self.options.soft_match:
            return mean_embedding_logits(crops, masked_mean_normalised(self.ragged)) * crops.shape[1]
        weights = similarity_view_weights(crops, views.full) if self.options.view_weights else None
        return soft_match_logits(crops, self.ragged.embeddings, self.ragged.mask, self.options.temperature,
                                 view_weights=weights)
