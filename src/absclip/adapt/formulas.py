"""Tip-Adapter's and GDA's training-free classifiers as pure tensor functions.

Shapes: B queries, V views per query, N support samples, C classes, D dims; features L2-normalised.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def cache_affinity_logits(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                          beta: float) -> torch.Tensor:
    """Σ_n exp(−β (1 − q·k_n)) · values[n], averaged over the views of each query.

    queries [B, V, D], keys [N, D], values [N, C] -> [B, C]. The same kernel serves Tip-Adapter's support
    cache and TDA's test-time caches (Zhang et al. 2021, eq. 4; Karmanov et al. 2024, eq. 3).
    """
    affinity = torch.einsum("bvd,nd->bvn", queries, keys)
    return torch.einsum("bvn,nc->bvc", torch.exp(-beta * (1.0 - affinity)), values).mean(dim=1)


def tip_adapter_keys(support_views: torch.Tensor) -> torch.Tensor:
    """One key per support image: the normalised mean of its views [N, V, D] -> [N, D].

    The reference averages each image's augmented views (10 random-resized crops) before normalising;
    here the views are the method's own (the full image, or the MCE / ABS crops).
    """
    return F.normalize(support_views.mean(dim=1), dim=-1)


def tip_adapter_logits(zero_shot: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor,
                       num_classes: int, alpha: float, beta: float) -> torch.Tensor:
    """Training-free Tip-Adapter: zero-shot logits + α · exp(−β (1 − f·Kᵀ)) · one_hot(labels)."""
    values = F.one_hot(labels, num_classes).to(queries.dtype)
    return zero_shot + alpha * cache_affinity_logits(queries, keys, values, beta)


def gda_classifier(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian discriminant analysis with a shared covariance (Wang et al., ICLR 2024): (W [C, D], b [C]).

    μ_c are the class means; the precision is the reference's shrinkage estimate
    P = D · ((N − 1) Σ + tr(Σ) I)⁺ with Σ the covariance of the class-centred features (N rows), and
    uniform priors: logit_c = f·P·μ_c − ½ μ_cᵀ P μ_c + log(1/C). Computed in float64, since the
    pseudo-inverse of a near-singular D×D matrix loses digits in float32.
    """
    x = features.double()
    one_hot = F.one_hot(labels, num_classes).double()  # [N, C]
    counts = one_hot.sum(dim=0)
    if bool((counts == 0).any()):
        raise ValueError(f"GDA needs at least one support sample per class; class {int((counts == 0).nonzero()[0])} "
                         "has none")
    means = (one_hot.T @ x) / counts[:, None]  # [C, D]
    centred = x - means[labels]
    n, dim = centred.shape
    cov = torch.cov(centred.T) if n > 1 else torch.zeros(dim, dim, dtype=x.dtype)
    precision = dim * torch.linalg.pinv((n - 1) * cov + torch.trace(cov) * torch.eye(dim, dtype=x.dtype))
    weights = means @ precision  # [C, D] (P is symmetric)
    bias = torch.log(torch.full((num_classes,), 1.0 / num_classes, dtype=x.dtype)) \
        - 0.5 * torch.einsum("cd,cd->c", weights, means)
    return weights.to(features.dtype), bias.to(features.dtype)


def gda_linear_logits(queries: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """f·Wᵀ + b averaged over each query's views: queries [B, V, D] -> [B, C]."""
    return torch.einsum("bvd,cd->bc", queries, weights) / queries.shape[1] + bias


def select_alpha(zero_shot: torch.Tensor, linear: torch.Tensor, targets: torch.Tensor,
                 grid: Sequence[float], default: float = 0.1) -> tuple[float, float]:
    """(α, accuracy) maximising the accuracy of zero_shot + α·linear on labelled validation rows.

    As in the reference's search: the first α of ``grid`` wins ties (strict improvement), and
    ``default`` is kept when no α gets a single validation row right."""
    best_alpha, best_acc = default, 0.0
    for alpha in grid:
        acc = ((zero_shot + alpha * linear).argmax(dim=1) == targets).float().mean().item()
        if acc > best_acc:
            best_alpha, best_acc = alpha, acc
    return best_alpha, best_acc
