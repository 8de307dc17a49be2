"""CLIP-D (Menon & Vondrick): mean over "{class}, which (is/has) {descriptor}" sentences."""

from __future__ import annotations

from ..text.prompts import clip_d_texts, format_template
from .base import TextInputs, register_method
from .clip import ClipMethod


@register_method
class ClipDescriptorMethod(ClipMethod):
    name = "clip-d"
    description_kind = "clip-d"
    imagenet_classnames = "classnames-openai"
    summary = ("mean over '{class}, which (is/has) {descriptor}' sentences (clip-d.json), full image; "
               "clip_d_reference_quirk=false")

    def prepare(self, inputs: TextInputs) -> None:
        desc = self._require_descriptions(inputs)
        fallback = set(desc.resolution.missing) | set(desc.resolution.empty)
        texts = [
            [format_template(self.options.template, name)]
            if i in fallback
            else clip_d_texts(name, desc.texts[i], self.options.clip_d_reference_quirk)
            for i, name in enumerate(inputs.classes.names)
        ]
        self.text = inputs.embedder.mean_embeddings(texts)
