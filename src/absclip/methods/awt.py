"""AWT, zero-shot (Zhu et al., NeurIPS 2024, "AWT: Transferring Vision-Language Models via Augmentation,
Weighting, and Transportation", arXiv 2407.04603; code github.com/MCG-NJU/AWT, AWT_zero_shot/).

Augment: 51 views per image, the original (resize + centre crop) and 50 random resized crops with
horizontal flips (``awt_views``; views/resized.py); per class the prompt ``p = template(c)`` and the
first 50 descriptions d as ``"{p}. {d}"`` (``max_descriptions``), as the authors' evaluate.py builds
them. Weight: views by the entropy of their class prediction, descriptions by the entropy of the
original view's prediction with that description standing in for its class (τ = 0.5 both).
Transport: per class, Sinkhorn (ε = 0.1, ≤ 100 rounds, tolerance 0.01) between the weighted views and
the weighted descriptions on cost 1 - cos; the class score is 1 - OT distance. absclip/transport.py
has every formula.

The authors' descriptions come from their own two-step, dataset-aware LLM prompting; absclip reads the
dataset's CuPL file (``description_kind``), or any ``--descriptions`` file. A class without
descriptions is its prompt alone. Variants: ``awt+mce`` and ``awt+abs`` transport the original plus
MCE's random crops or ABS's crops instead.
"""

from __future__ import annotations

import torch

from ..text import Descriptions
from ..text.prompts import format_template
from ..transport import awt_logits
from ..views import ViewSet
from ._augmented import AugmentedViewsMethod, stacked_views
from .base import TextInputs, register_method


def awt_texts(names: list[str], descriptions: Descriptions, template: str, limit: int | None) -> list[list[str]]:
    """Per class ``[p., p. d_1, ..., p. d_limit]`` with p the class prompt without its final period; a
    class on the fallback prompt (no descriptions in the file) gets ``[p.]`` alone."""
    fallback = set(descriptions.resolution.missing) | set(descriptions.resolution.empty)
    out = []
    for i, (name, texts) in enumerate(zip(names, descriptions.capped(limit), strict=True)):
        stem = format_template(template, name).rstrip().removesuffix(".")
        out.append([f"{stem}."] + ([] if i in fallback else [f"{stem}. {d}" for d in texts]))
    return out


@register_method
class AwtMethod(AugmentedViewsMethod):
    name = "awt"
    description_kind = "cupl"
    summary = ("entropy-weighted views and descriptions, class score = 1 - optimal-transport distance; "
               "awt_views=51, max_descriptions=50, awt_view_temperature=0.5, awt_text_temperature=0.5, "
               "awt_epsilon=0.1, awt_iterations=100")

    def view_count(self) -> int:
        return self.options.awt_views

    def prepare(self, inputs: TextInputs) -> None:
        self.logit_scale = inputs.backbone.logit_scale
        desc = self._require_descriptions(inputs)
        texts = awt_texts(inputs.classes.names, desc, self.options.template, self.options.max_descriptions)
        self.ragged = inputs.embedder.embed_ragged(texts)

    def score(self, views: ViewSet) -> torch.Tensor:
        o = self.options
        return awt_logits(stacked_views(views), self.ragged.embeddings, self.ragged.mask, self.logit_scale,
                          o.awt_view_temperature, o.awt_text_temperature, o.awt_epsilon, o.awt_iterations,
                          o.awt_tolerance)


@register_method
class AwtMceMethod(AwtMethod):
    name = "awt+mce"
    views_kind = "mce"
    summary = "AWT's weighting and transport over the original + MCE's random crops; random_crops.crops=60"


@register_method
class AwtAbsMethod(AwtMethod):
    name = "awt+abs"
    views_kind = "abs"
    summary = "AWT's weighting and transport over the original + ABS's attention-guided raw and feature crops"
