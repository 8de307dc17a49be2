"""CLIP-E: the prompt-ensemble mean over templates (OpenAI's 80 for ImageNet, or a template file)."""

from __future__ import annotations

from ..text.prompts import format_template, load_templates
from .base import TextInputs
from .clip import ClipMethod


class ClipEnsembleMethod(ClipMethod):
    name = "clip-e"

    def prepare(self, inputs: TextInputs) -> None:
        templates = load_templates(self.options.templates)
        texts = [[format_template(t, n) for t in templates] for n in inputs.classes.names]
        self.text = inputs.embedder.mean_embeddings(texts)
