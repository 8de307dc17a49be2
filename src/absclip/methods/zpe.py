"""ZPE (Allingham et al., ICML 2023, "A Simple Zero-shot Prompt Weighting Technique to Improve Prompt
Ensembling in Text-Image Models", arXiv 2302.06235): the prompt ensemble weighted by each prompt's
bias-corrected max-logit over the unlabelled test set.

    s_p = mean_i max_c (l[i,p,c] − mean_i' l[i',p,c]),   l = scale · z_i · t[p,c]
    w   = softmax_p(s / τ) (τ = 1; optionally over the prompts s is an MAD outlier above, the paper's
          "prompt selection"),   logit_c = scale · z_i · normalise(Σ_p w_p t[p,c])

The formulas, and what absclip does differently from the authors' notebook (no pre-training-image bias,
renormalised ensemble), are in :mod:`absclip.adapt.zpe`. With all scores equal ZPE is CLIP-E.

Variants: ``zpe`` (templates: OpenAI's 80 or ``--templates``, on the full image) and, for the view-based
methods, ``zpe+wca``, ``zpe+mce``, ``zpe+abs``: each class's descriptions weighted by the analogous score
(the module docstring of :mod:`absclip.adapt.zpe` says how and why), the weights entering WCA's
description weights or soft matching as a prior. The description scores use the full image (one logit
per image, as ZPE's scores do); the method's own views are then scored as it always scores them.

Transductive: observations are the full-image embeddings (plus WCA's pooled crops, or every crop for soft
matching: n · V · D floats, e.g. 2 GB for 10k images × 100 ABS views × 512 dims), weights are fitted on
all of them at once, so the order of the images never matters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..adapt.zpe import (
    description_scores,
    description_weights,
    prior_soft_match_scores,
    prior_wca_text,
    prompt_scores,
    prompt_weights,
    wca_pooled_views,
    weighted_text_embeddings,
)
from ..data import DataFiles
from ..errors import ConfigError
from ..scoring import view_text_cosine
from ..text.prompts import format_template, load_templates
from ..views import ViewConfig, ViewSet
from .adaptive import TransductiveMethod
from .base import TextInputs, register_method

SOFT_MATCH_CHUNK = 8  # images per [b, V, C, M] similarity block


@dataclass
class ZpeObservations:
    """Per image: full [B, D]; WCA's pooled crops [B, D] or None; the crops [B, V, D] or None (float32, CPU);
    each with a query axis before D where the model has several queries per view."""

    full: torch.Tensor
    pooled: torch.Tensor | None = None
    crops: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.full)

    @classmethod
    def cat(cls, parts: list[ZpeObservations]) -> ZpeObservations:
        def join(name: str) -> torch.Tensor | None:
            values = [getattr(p, name) for p in parts]
            return None if values[0] is None else torch.cat(values)

        return cls(join("full"), join("pooled"), join("crops"))


def _top_weights(labels: list[str], weights: torch.Tensor, count: int = 5) -> list[list[Any]]:
    order = torch.argsort(weights, descending=True, stable=True)[:count].tolist()
    return [[labels[i], round(float(weights[i]), 6)] for i in order]


@register_method
class ZpeMethod(TransductiveMethod):
    name = "zpe"
    summary = ("transductive: prompt ensemble (templates=imagenet, OpenAI's 80) weighted by softmax of each "
               "template's test-bias-corrected mean max-logit; zpe_temperature=1, zpe_select_mad=None "
               "(the paper's prompt selection: 0.5 ImageNet, 2.0 fine-grained)")
    views_kind: ClassVar[str] = "full"

    @classmethod
    def dataset_options(cls, files: DataFiles, imagenet_labels: bool) -> dict[str, Any]:
        """The templates CLIP-E uses on the dataset, so ``zpe`` and ``clip-e`` weight the same ensemble."""
        templates = None if imagenet_labels else files.find("clip-e")
        return {} if templates is None else {"templates": str(templates)}

    def prepare(self, inputs: TextInputs) -> None:
        self.num_classes = len(inputs.classes)
        self.scale = float(inputs.backbone.logit_scale)
        self.templates = load_templates(self.options.templates)
        # class-major, as CLIP-E embeds them (the text cache is shared): [C, P, D] -> [P, C, D]
        texts = [[format_template(t, n) for t in self.templates] for n in inputs.classes.names]
        self.prompts = inputs.embedder.embed_ragged(texts).embeddings.transpose(0, 1).contiguous()
        self.record: dict[str, Any] = {}

    def reset(self) -> None:
        self.streaming_started = True

    def observe(self, views: ViewSet) -> ZpeObservations:
        return ZpeObservations(views.full.float().cpu())

    def run_stream(self, observations: ZpeObservations, order: list[int]) -> torch.Tensor:
        """Logits [n, C] in row order (``order`` does not matter: the weights see every image at once)."""
        images = observations.full.to(self.prompts)
        scores = prompt_scores(images, self.prompts, self.scale)
        weights = prompt_weights(scores, self.options.zpe_temperature, self.options.zpe_select_mad)
        self.record = {"prompts": len(self.templates), "prompts_kept": int((weights > 0).sum()),
                       "top_prompts": _top_weights(self.templates, weights)}
        text = weighted_text_embeddings(self.prompts, weights)
        return (self.scale * view_text_cosine("nd,cd->nc", images, text)).float().cpu()

    def stream_record(self) -> dict[str, Any]:
        return dict(self.record)


class ZpeDescriptionMethod(ZpeMethod):
    """ZPE's weights on each class's descriptions, as the text side of WCA, MCE or ABS (``views_kind``)."""

    description_kind = "cupl"
    views_kind: ClassVar[str] = "wca"

    @classmethod
    def dataset_options(cls, files: DataFiles, imagenet_labels: bool) -> dict[str, Any]:
        return {}

    def view_config(self) -> ViewConfig:
        if self.views_kind == "wca":
            return self._random_crop_views()
        return super().view_config()

    def prepare(self, inputs: TextInputs) -> None:
        o = self.options
        if self.views_kind == "abs" and (not o.soft_match or o.view_weights):
            raise ConfigError(f"{self.name} weights the descriptions inside soft matching: drop --no-soft-match "
                              "and --view-weights (or use abs)")
        self.num_classes = len(inputs.classes)
        self.scale = float(inputs.backbone.logit_scale)
        limit = o.wca_max_descriptions if self.views_kind == "wca" else o.max_descriptions
        self.ragged = inputs.embedder.embed_ragged(self._require_descriptions(inputs).capped(limit))
        self.prompt = self._prompt_embeddings(inputs) if self.views_kind == "wca" else None
        self.record = {}

    def observe(self, views: ViewSet) -> ZpeObservations:
        full = views.full.float()
        if self.views_kind == "wca":
            if views.raw is None:
                raise ConfigError(f"{self.name}: the random-crop views are missing")
            return ZpeObservations(full.cpu(), pooled=wca_pooled_views(views.raw.float(), full).cpu())
        crops = self.view_features(views)  # [B, V, D]: random crops (mce) or raw + feature crops (abs)
        return ZpeObservations(full.cpu(), crops=crops.float().cpu())

    def run_stream(self, observations: ZpeObservations, order: list[int]) -> torch.Tensor:
        """Logits [n, C], softmax inputs: scale · cos (WCA) or soft matching averaged over the views."""
        emb, mask = self.ragged.embeddings, self.ragged.mask
        full = observations.full.to(emb)
        scores = description_scores(full, emb, mask, self.scale)
        weights = description_weights(scores, mask, self.options.zpe_temperature, self.options.zpe_select_mad)
        kept = (weights > 0).sum(dim=1)
        self.record = {"descriptions": int(mask.sum()), "descriptions_kept": int(kept.sum())}
        if self.views_kind == "wca":
            assert self.prompt is not None and observations.pooled is not None
            text = prior_wca_text(emb, mask, self.prompt, weights)
            return (self.scale * view_text_cosine("nd,cd->nc", observations.pooled.to(emb), text)).float().cpu()
        assert observations.crops is not None
        out = []
        for start in range(0, len(observations), SOFT_MATCH_CHUNK):
            crops = observations.crops[start : start + SOFT_MATCH_CHUNK].to(emb)
            scores_v = prior_soft_match_scores(crops, emb, mask, weights, self.options.temperature)  # [b, V, C]
            out.append(scores_v.mean(dim=1).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.num_classes)


@register_method
class ZpeWcaMethod(ZpeDescriptionMethod):
    name = "zpe+wca"
    views_kind = "wca"
    summary = ("transductive: WCA (random_crops.crops=60, alpha=0.1) with each class's descriptions weighted by "
               "ZPE's bias-corrected score over the images predicted as that class; zpe_temperature=1")


@register_method
class ZpeMceMethod(ZpeDescriptionMethod):
    name = "zpe+mce"
    views_kind = "mce"
    summary = ("transductive: MCE's soft matching (≤50 descriptions, temperature=0.03) with ZPE's per-class "
               "description weights as a prior; zpe_temperature=1")


@register_method
class ZpeAbsMethod(ZpeDescriptionMethod):
    name = "zpe+abs"
    views_kind = "abs"
    summary = ("transductive: ABS's attention-guided raw + feature crops, soft matching with ZPE's per-class "
               "description weights as a prior; zpe_temperature=1")
