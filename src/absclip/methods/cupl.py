"""CuPL (Pratt et al.): mean over full LLM-written sentences per class."""

from __future__ import annotations

from .base import TextInputs, register_method
from .clip import ClipMethod


@register_method
class CuplMethod(ClipMethod):
    name = "cupl"
    description_kind = "cupl"
    summary = "mean over the LLM-written sentences per class (cupl.json), full image"

    def prepare(self, inputs: TextInputs) -> None:
        self.text = inputs.embedder.mean_embeddings(self._require_descriptions(inputs).texts)
