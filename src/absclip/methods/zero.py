"""ZERO (Farina et al., NeurIPS 2024, "Frustratingly Easy Test-Time Adaptation of Vision-Language Models",
arXiv 2405.18330; code github.com/FarinaMatteo/zero): augment, keep the confident views, vote at zero
temperature.

N = 64 views per image: the original (resize + centre crop) and 63 random resized crops with
horizontal flips (``zero_views``; views/resized.py). Each view's zero-shot logits
l[v, c] = scale · z_v·t_c with the class prompt ``template``; the γ = 10 % of the views with the lowest
softmax entropy are kept (``zero_fraction``); each votes with the one-hot of its argmax, and the
most-voted class wins, ties broken as the authors' code does (absclip/voting.py has the formula and
the tie rule). Episodic: every image on its own, nothing carried between images.

Variants on descriptions: ``zero+mce`` votes over the original and MCE's K random crops, ``zero+abs``
over the original and ABS's crops; each view is scored by soft matching with the descriptions (the
soft-matching scores are the softmax inputs whose entropy ranks the views).
"""

from __future__ import annotations

import torch

from ..backbones import Backbone
from ..scoring import view_text_cosine
from ..views import ViewSet
from ..voting import zero_logits
from ._augmented import AugmentedViewsMethod, soft_match_view_logits, stacked_views
from .base import TextInputs, register_method


@register_method
class ZeroMethod(AugmentedViewsMethod):
    name = "zero"
    summary = ("episodic test-time vote: the original + random resized crops with flips, the lowest-entropy "
               "views vote with their argmax; zero_views=64, zero_fraction=0.1, template='a photo of a {}.'")

    def view_count(self) -> int:
        return self.options.zero_views

    def prepare(self, inputs: TextInputs) -> None:
        self.logit_scale = inputs.backbone.logit_scale
        if self.views_kind == "resized":
            self.text = self._prompt_embeddings(inputs)  # [C, D]
        else:
            desc = self._require_descriptions(inputs).capped(self.options.max_descriptions)
            self.ragged = inputs.embedder.embed_ragged(desc)

    def view_logits(self, views: ViewSet) -> torch.Tensor:
        """Each view's softmax inputs: [B, V, C], the original image first."""
        feats = stacked_views(views)
        if self.views_kind == "resized":
            return self.logit_scale * view_text_cosine("bvd,cd->bvc", feats, self.text.to(feats))
        return soft_match_view_logits(feats, self.ragged, self.options.temperature)

    def score(self, views: ViewSet) -> torch.Tensor:
        return zero_logits(self.view_logits(views), self.options.zero_fraction)

    def probability_scale(self, backbone: Backbone, views: ViewSet) -> float:
        return 1.0  # vote counts: softmax(votes), each vote a factor e


@register_method
class ZeroMceMethod(ZeroMethod):
    name = "zero+mce"
    description_kind = "cupl"
    views_kind = "mce"
    summary = ("ZERO's vote over the original + MCE's random crops, each soft-matched with the descriptions; "
               "random_crops.crops=60, zero_fraction=0.1, temperature=0.03")


@register_method
class ZeroAbsMethod(ZeroMethod):
    name = "zero+abs"
    description_kind = "cupl"
    views_kind = "abs"
    summary = ("ZERO's vote over the original + ABS's attention-guided raw and feature crops, soft-matched; "
               "abs_sampler.crops=50, zero_fraction=0.1, temperature=0.03")
