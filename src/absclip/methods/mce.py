"""MCE (arXiv 2507.03458): random multi-crop views, each soft-matched with the fine-grained descriptions."""

from __future__ import annotations

import torch

from ..backbones import Backbone
from ..scoring import soft_match_logits
from ..views import ViewConfig, ViewSet
from .base import Method, TextInputs, register_method


@register_method
class MceMethod(Method):
    name = "mce"
    description_kind = "cupl"
    summary = ("random crops, each soft-matched with the descriptions; random_crops.crops=60, "
               "random_crops.alpha=0.1, max_descriptions=50, temperature=0.03")

    def view_config(self) -> ViewConfig:
        return self._random_crop_views()

    def prepare(self, inputs: TextInputs) -> None:
        desc = self._require_descriptions(inputs).capped(self.options.max_descriptions)
        self.ragged = inputs.embedder.embed_ragged(desc)

    def probability_scale(self, backbone: Backbone, views: ViewSet) -> float:
        assert views.raw is not None
        return 1.0 / views.raw.shape[1]  # soft-matching scores summed over the crops

    def score(self, views: ViewSet) -> torch.Tensor:
        assert views.raw is not None
        return soft_match_logits(views.raw, self.ragged.embeddings, self.ragged.mask, self.options.temperature)
