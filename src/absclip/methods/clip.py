"""CLIP: one prompt per class, the full image."""

from __future__ import annotations

import torch

from ..scoring import mean_embedding_logits
from ..views import ViewSet
from .base import Method, TextInputs, register_method


@register_method
class ClipMethod(Method):
    name = "clip"
    summary = "one prompt per class, full image; template='a photo of a {}.'"

    def prepare(self, inputs: TextInputs) -> None:
        self.text = self._prompt_embeddings(inputs)  # [C, D]

    def score(self, views: ViewSet) -> torch.Tensor:
        return mean_embedding_logits(views.full[:, None], self.text)
