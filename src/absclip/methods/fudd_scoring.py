"""FuDD's two stages as pure functions (Esfandiarpoor & Bach, ICLR 2024; reference: BatsResearch/fudd).

Shapes: B images, C classes, k confusable classes per image, M descriptions per (image, class), V views,
D dims; embeddings L2-normalised.

1. Confusable classes: K_i = the k classes with the highest first-stage logits s1[i, :] (best first).
2. Pairs to describe: every unordered pair {a, b} ⊂ K_i, over all images, each once, as (min, max).
3. Descriptions of class c ∈ K_i: the union, without repeats, over the other c' ∈ K_i of the pair
   {c, c'}'s descriptions of c; a pair without descriptions gives c its class prompt instead (the
   reference's rule for pairs missing from its files). So D_i(c) depends on the image's whole set.
4. Re-scoring among K_i: the reference's ``s2[i, c] = v_i · normalise(mean_{d ∈ D_i(c)} g(d))``, or with a
   view-based text side (the ``+wca``/``+mce``/``+abs`` variants) that method's score with D_i(c) as the
   descriptions of c and only the classes of K_i competing.
5. The logits over all C classes: s2 on K_i; every other class sits below all of them, in first-stage
   order: ``min_{K_i} s2 − gap − (s1_(k) − s1_c)`` with s1_(k) the k-th best first-stage logit. Logits
   are softmax inputs, so with gap 30 the classes outside K_i keep probability below e^-30 each, and
   top-5 metrics stay defined when k < 5 (no −inf reaches a record).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from ..scoring import masked_softmax, view_text_cosine
from ..scoring import wca_pooled_views as wca_pooled_views  # WCA's image side, computed once per image

OUTSIDE_GAP = 30.0

Pair = tuple[int, int]


def confusable_classes(first: torch.Tensor, k: int) -> torch.Tensor:
    """The k best classes of each image, best first: first [B, C] -> [B, min(k, C)] (int64)."""
    return first.topk(min(k, first.shape[1]), dim=1).indices


def confusable_pairs(top: torch.Tensor) -> list[Pair]:
    """Every unordered pair within each row of top [B, k], as (min, max), each once, sorted."""
    k = top.shape[1]
    rows, cols = torch.triu_indices(k, k, offset=1)
    a, b = top[:, rows], top[:, cols]  # [B, k(k-1)/2]
    pairs = torch.stack([torch.minimum(a, b), torch.maximum(a, b)], dim=-1).reshape(-1, 2)
    return [tuple(p) for p in torch.unique(pairs, dim=0).tolist()]  # type: ignore[misc]


def class_description_sets(top: Sequence[int], pair_texts: Mapping[Pair, tuple[Sequence[str], Sequence[str]]],
                           prompts: Sequence[str]) -> list[list[str]]:
    """D_i(c) for each class c of one image's confusable set ``top`` (step 3 of the module docstring).

    ``pair_texts[(a, b)]`` (a < b) holds the descriptions of a and of b that tell them apart; ``prompts[c]``
    is class c's prompt, used for pairs without descriptions.
    """
    out: list[list[str]] = [[] for _ in top]
    for i, c in enumerate(top):
        for other in top:
            if other == c:
                continue
            pair = (min(c, other), max(c, other))
            texts = pair_texts.get(pair)
            own = [prompts[c]] if texts is None else texts[0] if c == pair[0] else texts[1]
            out[i].extend(own)
        out[i] = list(dict.fromkeys(out[i]))  # without repeats, in first-seen order
    return out


def mean_text_embeddings(desc: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """normalise(mean of the valid descriptions): desc [B, k, M, D], mask [B, k, M] -> [B, k, D]."""
    total = (desc * mask[..., None]).sum(dim=2)
    return F.normalize(total / mask.sum(dim=2, keepdim=True).clamp(min=1), dim=-1)


def cosine_rescore(features: torch.Tensor, class_emb: torch.Tensor, scale: float) -> torch.Tensor:
    """scale · v_i · t[i, c]: features [B, (Q,) D], class_emb [B, k, D] -> [B, k]."""
    return scale * view_text_cosine("bd,bkd->bk", features, class_emb)


def soft_match_rescore(views: torch.Tensor, desc: torch.Tensor, mask: torch.Tensor,
                       temperature: float) -> torch.Tensor:
    """ABS soft matching among each image's own classes and descriptions, averaged over the views.

    s[i, v, c, j] = z[i, v]·t[i, c, j] / τ; p = softmax over the valid (c, j) of one view; score[i, c] =
    mean_v Σ_j p·s. views [B, V, (Q,) D], desc [B, k, M, D], mask [B, k, M] -> [B, k].
    """
    sim = view_text_cosine("bvd,bkmd->bvkm", views, desc) / temperature  # [B, V, k, M]
    valid = mask[:, None].expand_as(sim)
    probs = masked_softmax(sim, valid, dim=(2, 3))
    return (probs * sim.masked_fill(~valid, 0.0)).sum(dim=-1).mean(dim=1)


def place_rescored(rescored: torch.Tensor, top: torch.Tensor, first: torch.Tensor,
                   gap: float = OUTSIDE_GAP) -> torch.Tensor:
    """Step 5: rescored [B, k] on the columns top [B, k], the rest below in first-stage order -> [B, C]."""
    floor = rescored.min(dim=1, keepdim=True).values - gap  # [B, 1]
    kth = first.gather(1, top[:, -1:])  # [B, 1]: the k-th best first-stage logit
    out = floor - (kth - first)  # [B, C]; <= floor for every class outside the set
    return out.scatter(1, top, rescored.to(out.dtype))
