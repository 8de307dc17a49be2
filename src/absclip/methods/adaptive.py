"""Shared base of the methods that adapt beyond zero-shot: few-shot (a labelled support set) and
test-time (the unlabelled test stream). Training-free: nothing is optimised, only estimated or cached.

Each method comes in three view variants, so a table shows what the crops bring:

- full image (``tip-adapter``, ``gda``, ``tda``): zero-shot logits ``scale · cos`` with a prompt (or
  template ensemble, ``adapt.text``), as the reference codes compute them;
- ``+mce``: K random crops, on the support / cache side and the query side alike, and the zero-shot
  part is MCE's soft matching with the descriptions, averaged over the crops;
- ``+abs``: the same with ABS's attention-guided raw and feature crops.

The zero-shot logits of the crop variants are the soft-matching scores averaged over the views (what
``mce`` and ``abs`` turn into probabilities), so every variant adds its adaptation term to a softmax input.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

import torch

from ..adapt import IMAGENET_7_TEMPLATES, LabelledViews
from ..backbones import Backbone
from ..errors import ConfigError
from ..scoring import pooled_queries, soft_match_scores, view_text_cosine
from ..text.prompts import format_template, load_templates
from ..views import ViewConfig, ViewSet
from .abs import AbsMethod
from .base import Method, TextInputs

VIEW_KINDS = ("full", "mce", "abs")


class AdaptiveMethod(Method):
    """A method whose scores need more than the text side: class facts for the evaluator.

    Class facts:
        setting: ``few-shot``, ``test-time`` or ``transductive`` (``Method`` defaults to ``zero-shot``).
        needs_support: scores only after :meth:`FewShotMethod.fit` on a support set.
        streaming: stateful over the test stream (:class:`StreamingMethod`).
        views_kind: ``full``, ``mce`` or ``abs`` (see the module docstring).
    """

    setting: ClassVar[str] = "few-shot"
    needs_support: ClassVar[bool] = False
    streaming: ClassVar[bool] = False
    views_kind: ClassVar[str] = "full"

    def view_config(self) -> ViewConfig:
        if self.views_kind == "mce":
            return self._random_crop_views()
        if self.views_kind == "abs":
            return AbsMethod.view_config(self)  # type: ignore[arg-type]  # it reads only self.options
        return super().view_config()

    def prepare(self, inputs: TextInputs) -> None:
        self.num_classes = len(inputs.classes)
        if self.views_kind == "full":
            adapt = self.options.adapt
            if adapt.text == "prompt":
                templates = [self.options.template]
            elif adapt.text == "imagenet-7":
                templates = list(IMAGENET_7_TEMPLATES)
            else:
                templates = load_templates(self.options.templates)
            texts = [[format_template(t, n) for t in templates] for n in inputs.classes.names]
            self.text = inputs.embedder.mean_embeddings(texts)  # [C, D]
        else:
            desc = self._require_descriptions(inputs).capped(self.options.max_descriptions)
            self.ragged = inputs.embedder.embed_ragged(desc)

    def view_features(self, views: ViewSet) -> torch.Tensor:
        """The views this variant adapts with: [B, V, D] ([B, V, Q, D] with Q queries per view)."""
        if self.views_kind == "mce":
            if views.raw is None:
                raise ConfigError(f"{self.name}: the random-crop views are missing")
            return views.raw
        if self.views_kind == "abs":
            return views.crops()
        return views.full[:, None]

    def image_features(self, views: ViewSet) -> torch.Tensor:
        """One vector per view for the image-image side (support caches, Gaussians): [B, V, D]; with Q
        queries per view, the normalised mean of its queries (:func:`absclip.scoring.pooled_queries`)."""
        return pooled_queries(self.view_features(views), 2)

    def view_logits(self, views: ViewSet, chunk: int = 8) -> torch.Tensor:
        """Zero-shot logits of each view: [B, V, C]."""
        feats = self.view_features(views)
        if self.views_kind == "full":
            return self.options.adapt.zero_shot_scale * view_text_cosine("bvd,cd->bvc", feats, self.text.to(feats))
        emb, mask = self.ragged.embeddings.to(feats), self.ragged.mask.to(feats.device)
        return torch.cat([soft_match_scores(feats[i : i + chunk], emb, mask, self.options.temperature)
                          for i in range(0, len(feats), chunk)])

    def zero_shot_logits(self, views: ViewSet) -> torch.Tensor:
        """[B, C]: ``scale · cos`` (full image) or the soft-matching scores averaged over the crops."""
        return self.view_logits(views).mean(dim=1)

    def probability_scale(self, backbone: Backbone, views: ViewSet) -> float:
        return 1.0  # the logits are already softmax inputs (see the module docstring)


class FewShotMethod(AdaptiveMethod):
    """Fitted once per seed on the seed's support draw, then scored like any method."""

    needs_support = True

    def wants_validation(self) -> bool:
        """Whether :meth:`fit` needs held-out labelled support images (GDA's α search)."""
        return False

    @abstractmethod
    def fit(self, support: LabelledViews, validation: LabelledViews | None = None) -> dict[str, Any]:
        """Estimate the adapter from the support views; returns facts for the record (e.g. a chosen α)."""

    def _require_fit(self) -> None:
        if not getattr(self, "fitted", False):
            raise ConfigError(f"method {self.name!r} needs a support set: pass --support DIR (or --support-split "
                              "train) --shots K (absclip eval) or --set adapt.support=DIR (or "
                              "adapt.support_split=train) (absclip reproduce)")


class StreamingMethod(AdaptiveMethod):
    """Stateful over the test stream. :meth:`observe` is stateless (run in the view pass, in any order);
    :meth:`run_stream` feeds the observations in stream order through the state. ``score`` streams a batch
    in its row order, keeping the state across calls until :meth:`reset`."""

    setting = "test-time"
    streaming = True

    @abstractmethod
    def reset(self) -> None:
        """Start a new stream (empty state)."""

    @abstractmethod
    def observe(self, views: ViewSet) -> Any:
        """The per-image inputs of the stream, from the views alone (stateless)."""

    @abstractmethod
    def run_stream(self, observations: Any, order: list[int]) -> torch.Tensor:
        """Feed the observations' rows in ``order`` through the state; logits [n, C] in row order."""

    def score(self, views: ViewSet) -> torch.Tensor:
        if not getattr(self, "streaming_started", False):
            self.reset()
        obs = self.observe(views)
        return self.run_stream(obs, list(range(len(views.full))))

    def stream_record(self) -> dict[str, Any]:
        """Facts about the finished stream for the run's record (cache sizes, fitted weights ...)."""
        return {}


class TransductiveMethod(StreamingMethod):
    """Zero-shot, but scored from the whole unlabelled test set at once (ZPE's prompt weights, FuDD's
    confusable classes): :meth:`observe` per batch, then :meth:`run_stream` over every observation. The
    order does not change the result; ``classify`` runs such a method as two passes over the images."""

    setting = "transductive"
