"""WaffleCLIP (Roth et al.): CLIP-D sentences with random words / random characters as descriptors."""

from __future__ import annotations

from ..text.prompts import clip_d_texts, waffle_descriptors
from .base import TextInputs
from .clip import ClipMethod


class WaffleMethod(ClipMethod):
    name = "waffle"

    def prepare(self, inputs: TextInputs) -> None:
        opts = self.options
        descriptors = waffle_descriptors(opts.waffle_count, opts.seed, opts.waffle_words)
        texts = [clip_d_texts(name, descriptors, opts.clip_d_reference_quirk) for name in inputs.classes.names]
        self.text = inputs.embedder.mean_embeddings(texts)
