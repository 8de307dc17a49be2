"""dsel: per-image description selection (Ma, Rietdorf, Kotovenko, Hu & Ommer 2024, "Does VLM Classification
Benefit from LLM Description Semantics?", arXiv 2412.11917; reference code CompVis/DisCLIP).

For an image x with unit feature f:

    N(x)   = the top-k classes under  cos(f, t_c),  t_c = g("a photo of a {c}.")        # k = 3
    D(x,c) = the m descriptions of the pool that best separate c from N(x)
             (text/selection.py: S[p, c] >= S[p, n] for all n in N(x), ranked by the mean margin)  # m = 5
    score(c) = mean_{d in D(x,c), cycled to m} cos(f, g("a photo of a {c}, {d}."))             (default)
             = w · cos(f, t_c) + mean_{d in D(x,c)} cos(f, g(d))         (class-name-free, --dsel-classname-weight w)
    prediction = argmax over N(x); classes outside N(x) rank below it, in CLIP's order.

The pool is every description of the dataset (``dsel_pool=all``, as the reference pools them; ``own``: a
class's own only). A class none of the pool separates falls back to its first m own descriptions, and fewer
than m kept are cycled to m (both as the reference does). ``S`` needs per-class reference vectors: ``dsel``
is zero-shot and uses the class prompts (text space); ``dsel+support`` uses the mean feature of the labelled
support images of each class, the reference's selection set (``--support DIR --shots K``). The reference
sweeps the class-name weight w over 0..40 on the test set; it has no default, so the default scoring is the
class-name-containing one, which needs none.
"""

from __future__ import annotations

from typing import Any

import torch

from ..adapt import LabelledViews
from ..backbones import Backbone
from ..scoring import view_text_cosine
from ..text import TextEmbedder
from ..text.prompts import format_template
from ..text.selection import (
    description_class_similarity,
    discriminative_descriptions,
    fill_empty,
    first_m,
    pooled_texts,
)
from ..views import ViewSet
from .adaptive import FewShotMethod
from .base import Method, TextInputs, register_method


def cycled(indices: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Each row's kept entries repeated in order to fill all m slots: [N, m] (needs ≥ 1 kept per row, first)."""
    count = valid.sum(dim=1, keepdim=True).clamp(min=1)  # [N, 1]
    slots = torch.arange(indices.shape[1], device=indices.device)[None, :] % count  # [N, m]
    return indices.gather(1, slots)


def neighbourhood_logits(prompt_cos: torch.Tensor, neighbourhoods: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """[B, C] logits: the neighbourhood's scores [B, k] at their classes [B, k]; every other class below the
    row's lowest score, ordered by its prompt cosine [B, C] (so top-5 and probabilities stay defined)."""
    floor = scores.min(dim=1, keepdim=True).values - 1  # [B, 1]
    out = floor + (prompt_cos - 1) / 4  # cos ≤ 1: strictly below the floor + 0
    return out.scatter(1, neighbourhoods, scores)


def pair_text(prompt: str, description: str) -> str:
    """``a photo of a {c}, {d}.`` from the class prompt (its final period moved after the description)."""
    return f"{prompt.rstrip().removesuffix('.')}, {description}."


@register_method
class DselMethod(Method):
    name = "dsel"
    description_kind = "clip-d"  # the reference's default pool is the CLIP-D (DCLIP) descriptors
    summary = ("per-image description selection: among the top-3 classes, each keeps the 5 pool descriptions "
               "that beat all 3 (dsel_neighbours=3, dsel_descriptions=5, dsel_pool=all), text-space references")

    def prepare(self, inputs: TextInputs) -> None:
        o = self.options
        desc = self._require_descriptions(inputs)
        self.names = list(inputs.classes.names)
        self.pool, candidates, own, own_valid = pooled_texts(desc.texts, o.dsel_pool)
        self.pool_emb = inputs.embedder.embed(self.pool)  # [P, D]
        self.prompts = self._prompt_embeddings(inputs)  # [C, D]
        device = self.pool_emb.device
        self.candidates = None if o.dsel_pool == "all" else candidates.to(device)  # [C, P]
        self.fallback = tuple(t.to(device) for t in first_m(own, own_valid, o.dsel_descriptions))  # [C, m] x2
        self.similarity = description_class_similarity(self.pool_emb, self.prompts)  # [P, C]
        self.embedder: TextEmbedder = inputs.embedder
        self.prompt_texts = [format_template(o.template, n) for n in self.names]
        self._pairs: dict[tuple[int, int], torch.Tensor] = {}  # (class, pool index) -> g("{prompt}, {d}.")

    def probability_scale(self, backbone: Backbone, views: ViewSet) -> float:
        return backbone.logit_scale  # cosine scores, as CLIP's

    def selections(self, prompt_cos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(neighbourhoods [B, k], indices [B·k, m], valid [B·k, m]): row b·k + j describes class nb[b, j]."""
        o = self.options
        k = min(o.dsel_neighbours, prompt_cos.shape[1])
        nb = prompt_cos.topk(k, dim=1).indices  # [B, k]
        targets = nb.reshape(-1)  # [B·k]
        cand = None if self.candidates is None else self.candidates[targets]
        idx, valid = discriminative_descriptions(self.similarity, targets, nb.repeat_interleave(k, dim=0),
                                                 o.dsel_descriptions, cand)
        idx, valid = fill_empty(idx, valid, self.fallback[0][targets], self.fallback[1][targets])
        return nb, idx, valid

    def score(self, views: ViewSet) -> torch.Tensor:
        f = views.full.float()  # [B, (Q,) D]
        prompt_cos = view_text_cosine("bd,cd->bc", f, self.prompts.to(f))  # [B, C]
        nb, idx, valid = self.selections(prompt_cos)
        b, k = nb.shape
        fk = f.repeat_interleave(k, dim=0)  # [B·k, (Q,) D]
        w = self.options.dsel_classname_weight
        if w is None:  # "a photo of a {c}, {d}." per kept description, cycled to m, averaged
            emb = self._pair_embeddings(nb.reshape(-1), cycled(idx, valid)).to(f)  # [B·k, m, D]
            scores = view_text_cosine("nd,nmd->nm", fk, emb).mean(dim=1)
        else:  # class-name-free descriptions, plus the class prompt weighted by w
            cos = view_text_cosine("nd,nmd->nm", fk, self.pool_emb.to(f)[idx])  # [B·k, m]
            kept = valid.to(f)
            scores = w * prompt_cos.gather(1, nb).reshape(-1) + (cos * kept).sum(1) / kept.sum(1).clamp(min=1)
        return neighbourhood_logits(prompt_cos, nb, scores.view(b, k))

    def _pair_embeddings(self, targets: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """g("a photo of a {c}, {d}.") for each (row's class, kept description): [N, m, D]; each distinct
        text is embedded once per run (and cached on disk by the embedder)."""
        memo = self._pairs
        keys = [(c, p) for c, row in zip(targets.tolist(), indices.tolist(), strict=True) for p in row]
        missing = sorted(set(keys) - memo.keys())
        if missing:
            emb = self.embedder.embed([pair_text(self.prompt_texts[c], self.pool[p]) for c, p in missing])
            memo.update(zip(missing, emb, strict=True))
        return torch.stack([memo[key] for key in keys]).view(*indices.shape, -1)


@register_method
class DselSupportMethod(DselMethod, FewShotMethod):
    """dsel with the reference's selection set: S[p, c] = mean cosine of description p with the support
    images of class c (the reference draws up to 1000 per class from the training split)."""

    name = "dsel+support"
    summary = ("dsel with S from the labelled support images (the paper's selection set; adapt.shots per "
               "class), per-image top-3 neighbourhood, 5 descriptions")

    def fit(self, support: LabelledViews, validation: LabelledViews | None = None) -> dict[str, Any]:
        feats = torch.nn.functional.normalize(support.views.full.float(), dim=-1)  # [N, (Q,) D]
        labels = support.labels.to(feats.device)
        c = len(self.names)
        counts = torch.bincount(labels, minlength=c).clamp(min=1)[:, None]
        if feats.dim() == 2:
            sums = feats.new_zeros(c, feats.shape[1]).index_add_(0, labels, feats)  # [C, D]
            references = (sums / counts).to(self.pool_emb.device)  # mean of unit features: S = mean cosine
            self.similarity = description_class_similarity(self.pool_emb, references)  # [P, C]
        else:  # max over queries per image: the mean cosine is no longer that of a mean feature
            pool = self.pool_emb.to(feats)
            cos = torch.cat([view_text_cosine("nd,pd->np", feats[i : i + 256], pool)
                             for i in range(0, len(feats), 256)])  # [N, P]
            sums = cos.new_zeros(c, cos.shape[1]).index_add_(0, labels, cos)  # [C, P]
            self.similarity = (sums / counts).T.to(self.pool_emb.device)  # [P, C]
        self.fitted = True
        return {"selection_images": support.counts(c)}

    def score(self, views: ViewSet) -> torch.Tensor:
        self._require_fit()
        return super().score(views)
