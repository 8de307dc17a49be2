"""CLIP-E: the prompt-ensemble mean over templates (OpenAI's 80 for ImageNet, or a template file)."""

from __future__ import annotations

from typing import Any

from ..data import DataFiles
from ..text.prompts import format_template, load_templates
from .base import TextInputs, register_method
from .clip import ClipMethod


@register_method
class ClipEnsembleMethod(ClipMethod):
    name = "clip-e"
    summary = ("mean text embedding over a prompt ensemble, full image; templates=imagenet (OpenAI's 80; "
               "elsewhere the dataset's clip-e.json list)")

    @classmethod
    def dataset_options(cls, files: DataFiles, imagenet_labels: bool) -> dict[str, Any]:
        """Outside ImageNet the reference uses each dataset's short template list."""
        templates = None if imagenet_labels else files.find("clip-e")
        return {} if templates is None else {"templates": str(templates)}

    def prepare(self, inputs: TextInputs) -> None:
        templates = load_templates(self.options.templates)
        texts = [[format_template(t, n) for t in templates] for n in inputs.classes.names]
        self.text = inputs.embedder.mean_embeddings(texts)
