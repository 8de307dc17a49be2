"""FuDD: Follow-up Differential Descriptions (Esfandiarpoor & Bach, ICLR 2024; reference: BatsResearch/fudd).

For each image, the k (paper: 10) classes of highest first-stage score are its confusable set K_i; an LLM
writes, for every pair of classes {a, b} that is confusable in some image, descriptions that tell a from
b (``absclip.describe.differential``: one cached request per pair, the ``fudd`` pair prompt of the prompt
book, any OpenAI-compatible endpoint); the image is then re-scored among K_i only, each class c ∈ K_i
represented by the union of its descriptions against the other classes of K_i
(:mod:`absclip.methods.fudd_scoring` has the formulas):

    s2[i, c] = scale · v_i · normalise(mean_{d ∈ D_i(c)} g(d))            (``fudd``, the reference)

First stage, as in the reference: the class prompt ``--template`` (``a photo of a {}.``). Transductive
in absclip's sense: ``observe`` keeps each image's first-stage logits and features, ``run_stream`` gathers
the pairs of the whole set, fetches their descriptions at once and re-scores; each image's result depends
on its own set only, so the order and the batching change nothing.

View variants, FuDD's descriptions as the text side of a view method (both stages use that method's score,
the class prompt as each class's one description in the first):

- ``fudd+wca``: WCA's weighted pool of K random crops; per class, WCA's prompt-weighted description mean.
- ``fudd+mce``: K random crops, soft matching among the classes of K_i, averaged over the crops.
- ``fudd+abs``: ABS's attention-guided raw + feature crops, soft matching, averaged over the crops.

All logits are softmax inputs (scale: the model's logit scale for the cosine variants; soft-matching
scores are already divided by the temperature). The crop variants keep every image's crop features until
the re-scoring, N·V·D floats: use ``--limit`` or fewer crops for very large sets.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from ..scoring import soft_match_scores, view_text_cosine, wca_pooled_views, wca_text_embeddings
from ..text.prompts import format_template
from ..views import ViewConfig, ViewSet
from .adaptive import TransductiveMethod
from .base import MethodOptions, TextInputs, register_method
from .fudd_scoring import (
    class_description_sets,
    confusable_classes,
    confusable_pairs,
    cosine_rescore,
    mean_text_embeddings,
    place_rescored,
    soft_match_rescore,
)
from .llm import unreachable_reason

log = logging.getLogger(__name__)


@dataclass
class FuddObservations:
    """Per image: first-stage logits [B, C] and the features re-scored later ([B, D], or crops [B, V, D])."""

    first: torch.Tensor
    features: torch.Tensor

    def __len__(self) -> int:
        return len(self.first)

    @classmethod
    def cat(cls, parts: list[FuddObservations]) -> FuddObservations:
        return cls(torch.cat([p.first for p in parts]), torch.cat([p.features for p in parts]))


@register_method
class FuddMethod(TransductiveMethod):
    name = "fudd"
    needs_llm = True
    summary = ("transductive: the top-k (10) first-stage classes of each image re-scored with LLM differential "
               "descriptions of each confusable pair (cached); full image, cosine with the description mean")
    chunk = 16  # images re-scored at once: bounds the [b, k, M, D] description tensor

    def __init__(self, options: MethodOptions | None = None) -> None:
        super().__init__(options)
        reason = unreachable_reason(self.options.llm)  # said before any model loads, not after every retry
        if reason is not None:
            raise ConfigError(f"method {self.name!r} asks an LLM how confusable classes differ: {reason}")

    def view_config(self) -> ViewConfig:
        return self._random_crop_views() if self.views_kind == "wca" else super().view_config()

    def prepare(self, inputs: TextInputs) -> None:
        self.inputs = inputs  # the embedder and class list, for the descriptions run_stream fetches
        self.num_classes = len(inputs.classes)
        self.prompts = [format_template(self.options.template, n) for n in inputs.classes.names]
        self.prompt_emb = inputs.embedder.embed(self.prompts)  # [C, D]
        self.scale = float(inputs.backbone.logit_scale)

    def reset(self) -> None:
        self.streaming_started = True  # stateless between images: nothing to clear
        self.pairs_record: dict[str, Any] = {}

    def image_features(self, views: ViewSet) -> torch.Tensor:
        """What the re-scoring reads: the full image or WCA's pool [B, (Q,) D], the crops [B, V, (Q,) D]."""
        if self.views_kind in ("wca", "mce") and views.raw is None:
            raise ConfigError(f"{self.name}: the random-crop views are missing")
        if self.views_kind == "wca":
            return wca_pooled_views(views.raw, views.full)  # type: ignore[arg-type]
        if self.views_kind == "mce":
            return views.raw  # type: ignore[return-value]
        if self.views_kind == "abs":
            return views.crops()
        return views.full

    def first_stage(self, features: torch.Tensor) -> torch.Tensor:
        """The variant's own score with the class prompt as each class's only description: [B, C]."""
        prompts = self.prompt_emb.to(features)
        if self.views_kind in ("full", "wca"):  # one view per image (by kind: a query axis adds a dimension)
            return self.scale * view_text_cosine("bd,cd->bc", features, prompts)
        ones = torch.ones(len(prompts), 1, dtype=torch.bool, device=features.device)
        return soft_match_scores(features, prompts[:, None], ones, self.options.temperature).mean(dim=1)

    def observe(self, views: ViewSet) -> FuddObservations:
        features = self.image_features(views)
        return FuddObservations(self.first_stage(features).float().cpu(), features.float().cpu())

    def run_stream(self, observations: FuddObservations, order: list[int]) -> torch.Tensor:
        """Fetch the descriptions of every confusable pair, then re-score each image among its set."""
        if not getattr(self, "streaming_started", False):
            self.reset()
        from ..describe.differential import describe_pairs  # the HTTP client, only when a run asks

        first = observations.first
        top = confusable_classes(first, self.options.fudd_k)  # [n, k]
        if top.shape[1] < 2:
            return first.clone()  # one class: nothing to tell apart
        classes = self.inputs.classes
        result = describe_pairs(classes, confusable_pairs(top), self.options.llm.describe_settings())
        for line in result.lines(classes)[:1]:
            log.info("%s", line)
        self.pairs_record = {"k": top.shape[1], **result.record()}
        texts = {pair: (a.first, a.second) for pair, a in result.descriptions.items()}
        sets: dict[tuple[int, ...], list[list[str]]] = {}
        for row in top.tolist():
            if tuple(row) not in sets:
                sets[tuple(row)] = class_description_sets(row, texts, self.prompts)
        unique = list(dict.fromkeys(t for per_class in sets.values() for group in per_class for t in group))
        table = self.inputs.embedder.embed(unique)  # [T, D] on the model's device
        position = {t: i for i, t in enumerate(unique)}
        out = []
        with torch.inference_mode():
            for start in range(0, len(first), self.chunk):
                rows = top[start : start + self.chunk]
                index, mask = self._index([sets[tuple(r)] for r in rows.tolist()], position, table.device)
                desc = table[index] * mask[..., None]  # [b, k, M, D]
                feats = observations.features[start : start + self.chunk].to(table)
                rescored = self.rescore(feats, desc, mask, rows.to(table.device))
                out.append(place_rescored(rescored.float().cpu(), rows, first[start : start + self.chunk]))
        return torch.cat(out)

    @staticmethod
    def _index(sets: list[list[list[str]]], position: dict[str, int],
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of the text table for each (image, class, description): index and mask [b, k, M]."""
        width = max(len(group) for per_class in sets for group in per_class)
        index = torch.zeros(len(sets), len(sets[0]), width, dtype=torch.int64)
        mask = torch.zeros(len(sets), len(sets[0]), width, dtype=torch.bool)
        for i, per_class in enumerate(sets):
            for c, group in enumerate(per_class):
                index[i, c, : len(group)] = torch.tensor([position[t] for t in group])
                mask[i, c, : len(group)] = True
        return index.to(device), mask.to(device)

    def rescore(self, features: torch.Tensor, desc: torch.Tensor, mask: torch.Tensor,
                top: torch.Tensor) -> torch.Tensor:
        """Second-stage logits among each image's set: [b, k]."""
        if self.views_kind in ("mce", "abs"):
            return soft_match_rescore(features, desc, mask, self.options.temperature)
        if self.views_kind == "wca":
            b, k, m, d = desc.shape
            prompts = self.prompt_emb.to(desc)[top].reshape(b * k, d)  # [b·k, D]
            text = wca_text_embeddings(desc.reshape(b * k, m, d), mask.reshape(b * k, m), prompts).reshape(b, k, d)
        else:
            text = mean_text_embeddings(desc, mask)
        return cosine_rescore(features, text, self.scale)

    def stream_record(self) -> dict[str, Any]:
        return {"fudd": dict(getattr(self, "pairs_record", {}))}


@register_method
class FuddWcaMethod(FuddMethod):
    name = "fudd+wca"
    views_kind = "wca"
    summary = "transductive: FuDD's differential descriptions as WCA's text side, K random crops, weighted alignment"


@register_method
class FuddMceMethod(FuddMethod):
    name = "fudd+mce"
    views_kind = "mce"
    summary = "transductive: FuDD's differential descriptions soft-matched with K random crops, mean over crops"


@register_method
class FuddAbsMethod(FuddMethod):
    name = "fudd+abs"
    views_kind = "abs"
    summary = "transductive: FuDD's differential descriptions soft-matched with ABS's raw + feature crops"
