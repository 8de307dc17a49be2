"""ZPE (Allingham et al., ICML 2023, "A Simple Zero-shot Prompt Weighting Technique to Improve Prompt
Ensembling in Text-Image Models") as pure tensor functions, and its analogue for class descriptions.

Shapes: N test images, P prompt templates, C classes, M descriptions per class (padded, with a mask
[C, M]), V views, D dims; embeddings L2-normalised; logits are ``scale · cos`` (the model's logit scale).

Templates (the paper's Algorithm 2, as the authors' notebook computes it, ``get_weights``):

    l[i,p,c] = scale · z_i · t[p,c]                              per-prompt logits
    b[p,c]   = mean_i l[i,p,c]                                    the test-set bias of prompt p, class c
    s_p      = mean_i max_c (l[i,p,c] − b[p,c])                   the prompt's score
    w        = softmax_p(s / τ)  over the selected prompts        τ = 1 (the notebook's ``softmax_scores``)
    T_c      = normalise(Σ_p w_p t[p,c])                          the weighted ensemble (CLIP-E when w is uniform)

The paper's default bias averages this test-set bias with one from 20k LAION (pre-training) images
(``debias_mode='both'``); absclip ships no pre-training images, so it uses the test-set term alone (the
notebook's ``'test'`` mode). Prompt selection ("ZPE (prompt selection)", the notebook's ``mad_method``) keeps
the prompts whose score is more than ``threshold`` median absolute deviations above the median score
(0.5 in the authors' ImageNet tables, 2.0 on their fine-grained sets); off by default here, because the
threshold is per dataset family. The notebook averages the weighted per-prompt *logits*, which is the
same ensemble without the renormalisation of T_c; absclip renormalises so that equal scores give
exactly CLIP-E.

Descriptions (absclip's analogue, for ``zpe+wca`` / ``zpe+mce`` / ``zpe+abs``): a description belongs to
one class, so there is no max over classes for it to take. ZPE's max over classes picks, per image, the
class the prompt votes for and scores the prompt by its bias-corrected logit there; the analogue scores
description j of class c by its bias-corrected logit averaged over the images whose bias-corrected
equal-weight prediction is c:

    l[i,c,j] = scale · z_i · t[c,j],   b[c,j] = mean_i l[i,c,j]
    ŷ_i      = argmax_c mean_j (l[i,c,j] − b[c,j])
    s[c,j]   = mean_{i: ŷ_i = c} (l[i,c,j] − b[c,j])             (0 for a class no image is assigned to)
    w[c,:]   = softmax_j(s[c,:] / τ)  within the class, over its selected descriptions

The weights act as a prior on each description: M_c · w[c,j] multiplies its term in WCA's description
weights and in soft matching's softmax, so uniform weights (1/M_c) give WCA / soft matching exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..scoring import WCA_TEXT_SCALE, masked_softmax, view_text_cosine
from ..scoring import wca_pooled_views as wca_pooled_views  # WCA's image side (pooled @ T.T is wca_logits)

ZPE_TEMPERATURE = 1.0


def prompt_scores(images: torch.Tensor, prompts: torch.Tensor, scale: float, chunk: int = 256) -> torch.Tensor:
    """s_p = mean_i max_c (l[i,p,c] − mean_i' l[i',p,c]). images [N, D], prompts [P, C, D] -> [P].

    The bias is linear in the images (scale · mean_i z_i · t[p,c]), so it is one [P, C] product and the
    [N, P, C] logits are never held at once: images are scored ``chunk`` at a time.
    """
    bias = scale * mean_cosine(images, prompts, chunk)  # [P, C]
    total = prompts.new_zeros(prompts.shape[0])
    for start in range(0, len(images), chunk):
        logits = scale * view_text_cosine("nd,pcd->npc", images[start : start + chunk], prompts)  # [n, P, C]
        total += (logits - bias).amax(dim=2).sum(dim=0)
    return total / len(images)


def mean_cosine(images: torch.Tensor, text: torch.Tensor, chunk: int) -> torch.Tensor:
    """mean_i cos(z_i, t[a,b]): images [N, D], text [A, B, D] -> [A, B], as the cosine of the mean image
    (linear). With queries (images [N, Q, D]) the cosine is the max over the queries, which is not linear:
    the mean of the per-image cosines, ``chunk`` images at a time."""
    if images.dim() == 2:
        return torch.einsum("d,abd->ab", images.mean(dim=0), text)
    total = text.new_zeros(text.shape[:2])
    for start in range(0, len(images), chunk):
        total += view_text_cosine("nd,abd->nab", images[start : start + chunk], text).sum(dim=0)
    return total / len(images)


def mad_selection(scores: torch.Tensor, threshold: float | None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Which entries to keep: (s − median) / MAD > threshold (the notebook's ``mad_method``, MAD unscaled).

    scores [..., P] (``mask`` [..., P]: the valid entries, default all) -> bool [..., P], row by row over the
    valid entries. ``None`` keeps every valid entry; so does a row whose MAD is 0 (no spread to call
    anything an outlier) or in which no entry passes (the notebook would score nothing).
    """
    valid = torch.ones_like(scores, dtype=torch.bool) if mask is None else mask
    if threshold is None:
        return valid.clone()
    # medians as np.median takes them (the two middle values averaged), over the valid entries only
    spread = scores.masked_fill(~valid, float("nan"))
    med = torch.nanquantile(spread, 0.5, dim=-1, keepdim=True)
    mad = torch.nanquantile((spread - med).abs(), 0.5, dim=-1, keepdim=True)
    keep = valid & ((scores - med) > threshold * mad)
    fallback = (mad <= 0) | ~keep.any(dim=-1, keepdim=True)
    return keep | (fallback & valid)


def prompt_weights(scores: torch.Tensor, temperature: float = ZPE_TEMPERATURE,
                   threshold: float | None = None) -> torch.Tensor:
    """softmax(s / τ) over the selected prompts, 0 elsewhere. scores [P] -> weights [P], summing to 1."""
    keep = mad_selection(scores, threshold)
    return masked_softmax(scores / temperature, keep, dim=0)


def weighted_text_embeddings(prompts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """T_c = normalise(Σ_p w_p t[p,c]). prompts [P, C, D], weights [P] -> [C, D]."""
    return F.normalize(torch.einsum("p,pcd->cd", weights.to(prompts), prompts), dim=-1)


def description_scores(images: torch.Tensor, desc: torch.Tensor, mask: torch.Tensor, scale: float,
                       chunk: int = 64) -> torch.Tensor:
    """s[c,j] (see the module docstring). images [N, D], desc [C, M, D], mask [C, M] -> [C, M] (0 where
    padded), computed ``chunk`` images at a time."""
    valid = mask.to(desc.dtype)
    counts = valid.sum(dim=1).clamp(min=1)  # [C]
    bias = scale * mean_cosine(images, desc, chunk)  # [C, M]
    sums = desc.new_zeros(mask.shape)
    assigned = desc.new_zeros(mask.shape[0])
    for start in range(0, len(images), chunk):
        centred = (scale * view_text_cosine("nd,cmd->ncm", images[start : start + chunk], desc) - bias) * valid
        pseudo = (centred.sum(dim=2) / counts).argmax(dim=1)  # [n]
        one_hot = F.one_hot(pseudo, mask.shape[0]).to(desc.dtype)  # [n, C]
        sums += torch.einsum("nc,ncm->cm", one_hot, centred)
        assigned += one_hot.sum(dim=0)
    return sums / assigned.clamp(min=1)[:, None]


def description_weights(scores: torch.Tensor, mask: torch.Tensor, temperature: float = ZPE_TEMPERATURE,
                        threshold: float | None = None) -> torch.Tensor:
    """w[c,:] = softmax_j(s[c,:] / τ) over class c's selected descriptions (each class selects among its
    own). scores, mask [C, M] -> [C, M], rows summing to 1 (0 on padding and unselected entries)."""
    return masked_softmax(scores / temperature, mad_selection(scores, threshold, mask), dim=1)


def log_prior(weights: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log(M_c · w[c,j]), the entries still valid): 0 for uniform weights; [C, M] each."""
    keep = mask & (weights > 0)
    counts = mask.sum(dim=1, keepdim=True).to(weights.dtype)  # [C, 1]
    return torch.log((weights * counts).clamp(min=torch.finfo(weights.dtype).tiny)).masked_fill(~keep, 0.0), keep


def prior_wca_text(desc: torch.Tensor, mask: torch.Tensor, prompt: torch.Tensor, weights: torch.Tensor,
                   scale: float = WCA_TEXT_SCALE) -> torch.Tensor:
    """WCA's class embedding with the description prior: normalise(Σ_j a[c,j] t[c,j]),
    a[c,:] = softmax_j(scale · t[c,j]·prompt_c + log(M_c w[c,j])). desc [C, M, D], mask/weights [C, M],
    prompt [C, D] -> [C, D]; uniform weights give :func:`absclip.scoring.wca_text_embeddings`."""
    prior, keep = log_prior(weights, mask)
    sim = torch.einsum("cmd,cd->cm", desc, prompt) * scale
    a = masked_softmax(sim + prior, keep, dim=1)  # [C, M]
    return F.normalize(torch.einsum("cm,cmd->cd", a, desc), dim=-1)


def prior_soft_match_scores(views: torch.Tensor, desc: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor,
                            temperature: float) -> torch.Tensor:
    """Soft matching with the description prior: score_c(z) = Σ_j p[c,j] s[c,j], s = z·t[c,j]/τ and
    p ∝ M_c w[c,j] · exp(s[c,j]) over all valid (class, description) pairs. views [B, V, D], desc [C, M, D],
    mask/weights [C, M] -> [B, V, C]; uniform weights give :func:`absclip.scoring.soft_match_scores`.
    views [B, V, Q, D]: the max over queries of each cosine."""
    prior, keep = log_prior(weights, mask)
    sim = view_text_cosine("bvd,cmd->bvcm", views, desc) / temperature
    valid = keep.expand_as(sim)
    probs = masked_softmax(sim + prior, valid, dim=(2, 3))
    return (probs * sim.masked_fill(~valid, 0.0)).sum(dim=-1)
