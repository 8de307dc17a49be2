"""CuPL (Pratt et al.): mean over full LLM-written sentences per class."""

from __future__ import annotations

from .base import TextInputs
from .clip import ClipMethod


class CuplMethod(ClipMethod):
    name = "cupl"
    needs_descriptions = True

    def prepare(self, inputs: TextInputs) -> None:
        self.text = inputs.embedder.mean_embeddings(self._require_descriptions(inputs).texts)
