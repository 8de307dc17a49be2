"""AWT's weighting and optimal transport (Zhu et al., NeurIPS 2024, "AWT: Transferring Vision-Language
Models via Augmentation, Weighting, and Transportation", zero-shot part) as pure tensor functions.

Shapes: B images, M views (the original image first), C classes, N texts per class (ragged: a mask
[C, N]), D dims. ``cos[b, m, c, n]`` = view m · text (c, n); ``l = scale · cos`` (CLIP's logits).

- View weights: H_m = entropy of softmax_c(mean_n l[m, c, n]); a_m = softmax_m(-H_m / τ_v), τ_v = 0.5.
- Text weights, from the original view 0: the anchor A_c = mean_n l[0, c, n]; for text n of class c,
  H[c, n] = entropy of softmax over classes of A with A_c replaced by l[0, c, n];
  b[c, n] = softmax_n(-H[c, n] / τ_t), τ_t = 0.5.
- Transport per class: cost 1 - cos[:, c, :] [M, N], kernel K = exp(-cost / ε), ε = 0.1; Sinkhorn
  scaling r = a / (K s), s = b_c / (Kᵀ r) from r = s = 1, at most 100 rounds, stopping once the mean
  |Δr| over the image's classes and views is below 0.01 (the authors' code); plan T = diag(r) K diag(s).
- Score: logit_c = Σ_mn T[m, n] cos[m, n] = 1 - (OT distance), since T's mass is exactly 1 after the
  s update; the authors' code returns scale · this, which ``probability_scale`` restores.

With one view and one text per class T = 1 and the score is that cosine: plain CLIP.
"""

from __future__ import annotations

import torch

from .scoring import view_text_cosine

AWT_VIEW_TEMPERATURE = 0.5
AWT_TEXT_TEMPERATURE = 0.5
AWT_EPSILON = 0.1
AWT_ITERATIONS = 100
AWT_TOLERANCE = 1e-2


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax over the last dim."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def class_mean_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mean over each class's valid texts. logits [..., C, N], mask [C, N] -> [..., C]."""
    return (logits * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)


def view_weights(logits: torch.Tensor, mask: torch.Tensor, temperature: float = AWT_VIEW_TEMPERATURE) -> torch.Tensor:
    """a = softmax_m(-H_m / τ). logits [B, M, C, N] -> [B, M]."""
    return torch.softmax(-entropy(class_mean_logits(logits, mask)) / temperature, dim=1)


def replaced_entropy(anchor: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """H[b, c, n] = entropy of softmax(anchor[b] with entry c replaced by values[b, c, n]).
    anchor [B, C], values [B, C, N] -> [B, C, N], in O(C·N) per image.

    With m the image's largest logit, every e^(x - m)·(x - m) has one sign, so the sums over the other
    classes are formed as leave-one-out prefix + suffix sums, never as a total minus a large term.
    """
    m = torch.maximum(anchor.amax(dim=1), values.flatten(1).amax(dim=1))[:, None]  # [B, 1]
    shifted = anchor - m
    e = shifted.exp()  # [B, C]
    el = e * shifted

    def others(x: torch.Tensor) -> torch.Tensor:  # Σ_{k != c} x_k, [B, C]
        zero = torch.zeros_like(x[:, :1])
        before = torch.cat([zero, x.cumsum(dim=1)[:, :-1]], dim=1)
        after = torch.cat([x.flip(1).cumsum(dim=1).flip(1)[:, 1:], zero], dim=1)
        return before + after

    vx = values - m[..., None]  # [B, C, N]
    ex = vx.exp()
    total = others(e)[..., None] + ex  # the partition function Z (shifted by m)
    return total.log() - (others(el)[..., None] + ex * vx) / total


def text_weights(logits: torch.Tensor, mask: torch.Tensor, temperature: float = AWT_TEXT_TEMPERATURE) -> torch.Tensor:
    """b[c, n] = softmax_n(-H[c, n] / τ) over the valid texts, from the original view.
    logits [B, M, C, N] -> [B, C, N] (zero on invalid texts)."""
    first = logits[:, 0]  # [B, C, N]
    anchor = class_mean_logits(first, mask)  # [B, C]
    values = torch.where(mask, first, anchor[..., None])  # invalid texts: a finite stand-in, weight 0 below
    h = replaced_entropy(anchor, values)
    return torch.softmax((-h / temperature).masked_fill(~mask, float("-inf")), dim=-1)


def sinkhorn(kernel: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, iterations: int = AWT_ITERATIONS,
             tolerance: float = AWT_TOLERANCE) -> torch.Tensor:
    """Transport plans T = diag(r) K diag(s) with row sums ``rows`` and column sums ``cols``.

    kernel [B, C, M, N] (zero on invalid columns), rows [B, M] (shared by the classes), cols [B, C, N]
    -> [B, C, M, N]. Each image stops on its own once mean |Δr| over its [C, M] scalings falls below
    ``tolerance``, as the authors' per-image loop does.
    """
    r = torch.ones(kernel.shape[:3], dtype=kernel.dtype, device=kernel.device)  # [B, C, M]
    s = torch.ones_like(cols)  # [B, C, N]
    valid = cols > 0
    active = torch.ones(kernel.shape[0], dtype=torch.bool, device=kernel.device)
    for _ in range(iterations):
        new_r = rows[:, None, :] / torch.einsum("bcmn,bcn->bcm", kernel, s)
        kt_r = torch.einsum("bcmn,bcm->bcn", kernel, new_r)
        new_s = torch.where(valid, cols / torch.where(valid, kt_r, 1.0), 0.0)
        err = (new_r - r).abs().flatten(1).mean(dim=1)  # [B]
        step = active[:, None, None]
        r, s = torch.where(step, new_r, r), torch.where(step, new_s, s)
        active = active & ~(err < tolerance)
        if not bool(active.any()):
            break
    return r[..., None] * s[..., None, :] * kernel


def awt_logits(views: torch.Tensor, text: torch.Tensor, mask: torch.Tensor, logit_scale: float,
               view_temperature: float = AWT_VIEW_TEMPERATURE, text_temperature: float = AWT_TEXT_TEMPERATURE,
               epsilon: float = AWT_EPSILON, iterations: int = AWT_ITERATIONS, tolerance: float = AWT_TOLERANCE,
               chunk: int = 8) -> torch.Tensor:
    """AWT's class scores Σ_mn T·cos. views [B, M, (Q,) D] (original first; cos: max over queries),
    text [C, N, D], mask [C, N] -> [B, C].

    Images go in chunks of ``chunk`` to bound the [b, C, M, N] tensors.
    """
    text = text.to(views)
    mask = mask.to(views.device)
    out = []
    for start in range(0, len(views), chunk):
        cos = view_text_cosine("bmd,cnd->bmcn", views[start : start + chunk].float(), text.float())  # [b, M, C, N]
        logits = cos * logit_scale
        a = view_weights(logits, mask, view_temperature)  # [b, M]
        b = text_weights(logits, mask, text_temperature)  # [b, C, N]
        cos = cos.permute(0, 2, 1, 3)  # [b, C, M, N]
        kernel = torch.exp(-(1.0 - cos) / epsilon) * mask[None, :, None, :]
        plan = sinkhorn(kernel, a, b, iterations, tolerance)
        out.append((plan * cos).sum(dim=(2, 3)))
    return torch.cat(out)
