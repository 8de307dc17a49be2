"""ZERO's vote (Farina et al., NeurIPS 2024, "Frustratingly Easy Test-Time Adaptation of Vision-Language
Models") as pure tensor functions. Shapes: B images, V views (the original image first), C classes.

For the views' logits ``l[v]`` (softmax inputs: ``scale · cos``, or soft-matching scores):

1. entropy H[v] of softmax(l[v]); keep the k = max(1, ⌊γ·V⌋) views of lowest entropy (γ = 0.1, the
   paper's value; ties between equal entropies go to the earlier view);
2. zero temperature: each kept view becomes the one-hot of its argmax; votes[c] = Σ_kept onehot[c];
3. ties between the most-voted classes are broken as the authors' code does (``greedy_break``): the
   class of the first view, in view order from position k on (kept or not), whose argmax is one of
   the tied classes, and that class gets one more vote. When no such view exists the tied class with
   the highest logit on view min(k, V - 1) wins (what the code's fallback means to do; its masking
   indexes with ``~`` on integer class ids, which selects other classes).

The integer part of the returned logits is that vote count. A fraction, half the mean probability over
all views (at most 1/2), is added only to order classes with equal votes (top-k metrics); it never changes
the top-1 class. The authors' code keeps ⌊γ·V⌋ views, i.e. none when γ·V < 1, where its tie rule then
returns the first view's class; here at least one view is kept. With one view, ZERO is that view's argmax.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ZERO_FRACTION = 0.1  # the paper's γ (the authors' repository later moved to 0.3)
TIE_ORDER_WEIGHT = 0.5  # weight of the mean probability that orders classes with equal votes


def kept_views(views: int, fraction: float) -> int:
    """k = max(1, ⌊fraction · views⌋), with a small tolerance so 0.3 · 10 keeps 3 views, not 2."""
    return min(views, max(1, math.floor(views * fraction + 1e-9)))


def view_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax over the last dim (log-softmax: no NaN for probabilities that underflow)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def zero_votes(logits: torch.Tensor, keep: int) -> torch.Tensor:
    """Votes of the ``keep`` lowest-entropy views. logits [B, V, C] -> votes [B, C] (float counts)."""
    entropy = view_entropy(logits)  # [B, V]
    order = torch.argsort(entropy, dim=1, stable=True)[:, :keep]  # [B, k]
    kept = logits.argmax(dim=-1).gather(1, order)  # [B, k]
    return F.one_hot(kept, logits.shape[-1]).sum(dim=1).float()


def zero_tie_winner(logits: torch.Tensor, votes: torch.Tensor, keep: int) -> torch.Tensor:
    """The class each image's tie goes to (module docstring, step 3). logits [B, V, C], votes [B, C] -> [B]."""
    b, v, _ = logits.shape
    tied = votes == votes.max(dim=1, keepdim=True).values  # [B, C]
    fallback_view = logits[:, min(keep, v - 1)].float().masked_fill(~tied, float("-inf"))  # [B, C]
    winner = fallback_view.argmax(dim=1)  # [B]
    if keep < v:
        later = logits[:, keep:].argmax(dim=-1)  # [B, V - k]
        hit = tied.gather(1, later)  # [B, V - k]: that view votes for a tied class
        position = torch.arange(v - keep, device=logits.device).expand(b, -1)
        first = torch.where(hit, position, v - keep).min(dim=1).values  # [B]; V - k: none
        found = first < v - keep
        greedy = later.gather(1, first.clamp(max=v - keep - 1)[:, None])[:, 0]
        winner = torch.where(found, greedy, winner)
    return winner


def zero_logits(logits: torch.Tensor, fraction: float = ZERO_FRACTION) -> torch.Tensor:
    """ZERO's scores: votes (+1 for the tie winner) + TIE_ORDER_WEIGHT · mean_v softmax(l[v]).
    logits [B, V, C] softmax inputs -> [B, C]."""
    keep = kept_views(logits.shape[1], fraction)
    votes = zero_votes(logits, keep)  # [B, C]
    tied = votes == votes.max(dim=1, keepdim=True).values
    has_tie = tied.sum(dim=1) > 1  # [B]
    winner = zero_tie_winner(logits, votes, keep)
    bonus = F.one_hot(winner, logits.shape[-1]).float() * has_tie[:, None]
    order = torch.softmax(logits.float(), dim=-1).mean(dim=1) * TIE_ORDER_WEIGHT  # [B, C], each <= 1/2
    return votes + bonus + order
