"""Scores as pure tensor functions (DESIGN.md §3). Shapes: B images, V views, C classes, M descriptions, D dims.

All embeddings are L2-normalised; no function loops over classes or views in Python.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

WCA_VIEW_SCALE = math.exp(4)
WCA_TEXT_SCALE = math.exp(2)
SOFT_MATCH_TEMPERATURE = 0.03


def mean_embedding_logits(views: torch.Tensor, class_emb: torch.Tensor) -> torch.Tensor:
    """logit_c = mean_v z_v·t_c. views [B, V, D], class_emb [C, D] -> [B, C]."""
    return torch.einsum("bvd,cd->bc", views, class_emb) / views.shape[1]


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...]) -> torch.Tensor:
    """Softmax over ``dim`` with invalid entries excluded (probability exactly 0)."""
    dims = (dim,) if isinstance(dim, int) else dim
    filled = scores.masked_fill(~mask, float("-inf"))
    if len(dims) == 1:
        return torch.softmax(filled, dim=dims[0])
    # softmax over several trailing dims: flatten them
    lead = filled.shape[: filled.dim() - len(dims)]
    flat = torch.softmax(filled.reshape(*lead, -1), dim=-1)
    return flat.reshape(filled.shape)


def wca_text_embeddings(
    desc: torch.Tensor, mask: torch.Tensor, prompt: torch.Tensor, scale: float = WCA_TEXT_SCALE
) -> torch.Tensor:
    """T_c = normalise(Σ_j a[c,j] t[c,j]), a[c,:] = softmax_j(scale · t[c,j]·prompt_c). desc [C, M, D],
    mask [C, M], prompt [C, D] -> [C, D]."""
    sim = torch.einsum("cmd,cd->cm", desc, prompt) * scale
    weights = masked_softmax(sim, mask, dim=1)  # [C, M]
    return F.normalize(torch.einsum("cm,cmd->cd", weights, desc), dim=-1)


def wca_logits(
    crops: torch.Tensor, full: torch.Tensor, text: torch.Tensor, scale: float = WCA_VIEW_SCALE
) -> torch.Tensor:
    """Weighted cross alignment (Li et al., ICML 2024): U = normalise(Σ_k w_k u_k) with
    w = softmax_k(scale · u_k·v); logit_c = U·T_c. crops [B, K, D], full [B, D], text [C, D] -> [B, C]."""
    weights = torch.softmax(torch.einsum("bkd,bd->bk", crops, full) * scale, dim=1)  # [B, K]
    pooled = F.normalize(torch.einsum("bk,bkd->bd", weights, crops), dim=-1)
    return pooled @ text.T


def soft_match_scores(
    views: torch.Tensor, desc: torch.Tensor, mask: torch.Tensor, temperature: float = SOFT_MATCH_TEMPERATURE
) -> torch.Tensor:
    """Per view and class, score_c(z) = Σ_j p[c,j] s[c,j] with s = z·t[c,j]/τ and p the softmax of s over
    ALL valid (class, description) pairs. views [B, V, D], desc [C, M, D], mask [C, M] -> [B, V, C]."""
    sim = torch.einsum("bvd,cmd->bvcm", views, desc) / temperature
    valid = mask.expand_as(sim)
    probs = masked_softmax(sim, valid, dim=(2, 3))
    return (probs * sim.masked_fill(~valid, 0.0)).sum(dim=-1)


def soft_match_logits(
    views: torch.Tensor,
    desc: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = SOFT_MATCH_TEMPERATURE,
    view_weights: torch.Tensor | None = None,
    chunk: int = 8,
) -> torch.Tensor:
    """ABS soft matching summed over views (weighted by ``view_weights`` [B, V] if given) -> [B, C].

    Images are scored in chunks of ``chunk`` to bound the [B, V, C, M] similarity tensor.
    """
    out = []
    for start in range(0, views.shape[0], chunk):
        scores = soft_match_scores(views[start : start + chunk], desc, mask, temperature)  # [b, V, C]
        if view_weights is None:
            out.append(scores.sum(dim=1))
        else:
            out.append(torch.einsum("bv,bvc->bc", view_weights[start : start + chunk], scores))
    return torch.cat(out)


def similarity_view_weights(views: torch.Tensor, full: torch.Tensor, scale: float = WCA_VIEW_SCALE) -> torch.Tensor:
    """Optional ABS view weights: softmax_v(scale · z_v·v), rescaled to sum to V so that uniform weights
    equal the unweighted sum. views [B, V, D], full [B, D] -> [B, V]."""
    weights = torch.softmax(torch.einsum("bvd,bd->bv", views, full) * scale, dim=1)
    return weights * views.shape[1]
