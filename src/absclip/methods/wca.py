"""WCA (Li et al., ICML 2024): random crops and descriptions, each weighted, cross-aligned."""

from __future__ import annotations

import torch

from ..scoring import wca_logits, wca_text_embeddings
from ..views import ViewConfig, ViewSet
from .base import Method, TextInputs, register_method


@register_method
class WcaMethod(Method):
    name = "wca"
    description_kind = "cupl"
    summary = ("random crops × descriptions, each weighted and cross-aligned; random_crops.crops=60, "
               "random_crops.alpha=0.1, wca_max_descriptions=None (all)")

    def view_config(self) -> ViewConfig:
        return self._random_crop_views()

    def prepare(self, inputs: TextInputs) -> None:
        desc = self._require_descriptions(inputs).capped(self.options.wca_max_descriptions)
        ragged = inputs.embedder.embed_ragged(desc)
        self.text = wca_text_embeddings(ragged.embeddings, ragged.mask, self._prompt_embeddings(inputs))

    def score(self, views: ViewSet) -> torch.Tensor:
        assert views.raw is not None
        return wca_logits(views.raw, views.full, self.text)
