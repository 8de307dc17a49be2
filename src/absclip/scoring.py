"""Scores as pure tensor functions (DESIGN.md §3). Shapes: B images, V views, C classes, M descriptions, D dims.

All embeddings are L2-normalised; no function loops over classes or views in Python.

Views with several vectors: a backbone with Q > 1 query embeddings per view (BLIP-2's Q-Former,
``Backbone.queries_per_view``) gives every view tensor a query axis just before D ([B, Q, D] full,
[B, V, Q, D] crops). Every image-text similarity goes through :func:`view_text_cosine`, whose cosine of a
view with a text is the max over the view's queries (BLIP-2's own image-text contrastive score), taken
inside each formula, per view and per text, never an average before it. Image-image similarities (WCA's
and ABS's view weights, Tip-Adapter's and TDA's caches, GDA's Gaussians) use one vector per view, the
normalised mean of its queries (:func:`pooled_queries`). With one vector per view both are exactly
today's einsums.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

WCA_VIEW_SCALE = math.exp(4)
WCA_TEXT_SCALE = math.exp(2)
SOFT_MATCH_TEMPERATURE = 0.03


QUERY_AXIS = "q"
"""The einsum letter :func:`view_text_cosine` gives the query axis; specs must not use it."""


def view_text_cosine(spec: str, views: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``torch.einsum(spec, views, text)`` where each view's cosine with a text is the max over its queries.

    ``spec`` is written for one vector per view (e.g. ``"bvd,cmd->bvcm"``); ``views`` has either exactly
    those axes or one more, Q, just before the last (D). View axes that ``spec`` sums over (``"bvd,cd->bc"``
    sums the views) are summed after the max, so the max stays per view and per text.
    """
    operands, out = spec.split("->")
    view_axes, text_axes = operands.split(",")
    if QUERY_AXIS in spec:
        raise ValueError(f"view_text_cosine: {spec!r} uses the query letter {QUERY_AXIS!r}")
    if views.dim() == len(view_axes):
        return torch.einsum(spec, views, text)  # one vector per view: the plain cosine
    if views.dim() != len(view_axes) + 1:
        raise ValueError(f"view_text_cosine: views {tuple(views.shape)} do not fit {view_axes!r} "
                         f"(with or without a query axis)")
    summed = "".join(a for a in view_axes[:-1] if a not in out)
    per_query = f"{view_axes[:-1]}{QUERY_AXIS}{view_axes[-1]},{text_axes}->{out}{summed}{QUERY_AXIS}"
    cos = torch.einsum(per_query, views, text).amax(dim=-1)  # [*out, *summed]
    return cos.sum(dim=tuple(range(len(out), cos.dim()))) if summed else cos


def pooled_queries(views: torch.Tensor, axes: int) -> torch.Tensor:
    """One vector per view for image-image similarities: ``views`` with ``axes`` leading axes and D
    ([*L, D]) as is, with a query axis ([*L, Q, D]) the normalised mean of its queries -> [*L, D]."""
    if views.dim() == axes + 1:
        return views
    return F.normalize(views.mean(dim=-2), dim=-1)


def mean_embedding_logits(views: torch.Tensor, class_emb: torch.Tensor) -> torch.Tensor:
    """logit_c = mean_v z_v·t_c. views [B, V, (Q,) D], class_emb [C, D] -> [B, C]."""
    return view_text_cosine("bvd,cd->bc", views, class_emb) / views.shape[1]


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


def wca_pooled_views(crops: torch.Tensor, full: torch.Tensor, scale: float = WCA_VIEW_SCALE) -> torch.Tensor:
    """WCA's image side U = normalise(Σ_k w_k u_k), w = softmax_k(scale · u_k·v); it does not depend on the
    text. crops [B, K, D], full [B, D] -> [B, D]. With queries (crops [B, K, Q, D], full [B, Q, D]) the
    weights compare pooled queries (image-image) and U keeps the queries: [B, Q, D], each normalised."""
    weights = torch.softmax(torch.einsum("bkd,bd->bk", pooled_queries(crops, 2), pooled_queries(full, 1)) * scale,
                            dim=1)  # [B, K]
    if crops.dim() == 3:
        return F.normalize(torch.einsum("bk,bkd->bd", weights, crops), dim=-1)
    return F.normalize(torch.einsum("bk,bkqd->bqd", weights, crops), dim=-1)


def wca_logits(
    crops: torch.Tensor, full: torch.Tensor, text: torch.Tensor, scale: float = WCA_VIEW_SCALE
) -> torch.Tensor:
    """Weighted cross alignment (Li et al., ICML 2024): U = normalise(Σ_k w_k u_k) with
    w = softmax_k(scale · u_k·v); logit_c = U·T_c (max over U's queries). crops [B, K, (Q,) D],
    full [B, (Q,) D], text [C, D] -> [B, C]."""
    return view_text_cosine("bd,cd->bc", wca_pooled_views(crops, full, scale), text)


def soft_match_scores(
    views: torch.Tensor, desc: torch.Tensor, mask: torch.Tensor, temperature: float = SOFT_MATCH_TEMPERATURE
) -> torch.Tensor:
    """Per view and class, score_c(z) = Σ_j p[c,j] s[c,j] with s = z·t[c,j]/τ and p the softmax of s over
    ALL valid (class, description) pairs. views [B, V, (Q,) D], desc [C, M, D], mask [C, M] -> [B, V, C]."""
    sim = view_text_cosine("bvd,cmd->bvcm", views, desc) / temperature
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
    equal the unweighted sum. views [B, V, (Q,) D], full [B, (Q,) D] -> [B, V] (image-image: pooled queries)."""
    weights = torch.softmax(torch.einsum("bvd,bd->bv", pooled_queries(views, 2), pooled_queries(full, 1)) * scale,
                            dim=1)
    return weights * views.shape[1]
