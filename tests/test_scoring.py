"""Scores (DESIGN.md §3) against independent re-derivations: explicit Python loops, float64, no library code.

Every reference below walks images / views / classes / descriptions one at a time and applies the formula
as written in the design notes, so a vectorisation slip (wrong axis, wrong mask, wrong normalisation) in
``absclip.scoring`` shows up as a mismatch.
"""

from __future__ import annotations

import math

import pytest
import torch

from absclip.scoring import (
    SOFT_MATCH_TEMPERATURE,
    WCA_TEXT_SCALE,
    WCA_VIEW_SCALE,
    masked_softmax,
    mean_embedding_logits,
    similarity_view_weights,
    soft_match_logits,
    soft_match_scores,
    wca_logits,
    wca_text_embeddings,
)

D = 16
COUNTS = [3, 1, 5, 2]  # ragged: every class has its own number of descriptions
GARBAGE = 1e4  # padding magnitude: any leak through the mask changes results by orders of magnitude


# ---- helpers ------------------------------------------------------------------------------------------------
def unit(*shape: int, gen: torch.Generator) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(*shape, D, generator=gen), dim=-1)


def ragged(counts: list[int], gen: torch.Generator, pad: str = "garbage") -> tuple[torch.Tensor, torch.Tensor]:
    """desc [C, M, D] (valid rows unit vectors) and mask [C, M]; padding is garbage or zeros."""
    c, m = len(counts), max(counts)
    desc = unit(c, m, gen=gen)
    mask = torch.zeros(c, m, dtype=torch.bool)
    for i, n in enumerate(counts):
        mask[i, :n] = True
    if pad == "garbage":
        noise = torch.randn(c, m, D, generator=gen) * GARBAGE
        desc = torch.where(mask[..., None], desc, noise)
    else:
        desc = desc * mask[..., None]
    return desc, mask


def dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return sum(float(x) * float(y) for x, y in zip(a.tolist(), b.tolist(), strict=True))


def normalise(vec: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in vec))
    return [x / n for x in vec]


def softmax(values: list[float]) -> list[float]:
    top = max(values)
    e = [math.exp(v - top) for v in values]
    s = sum(e)
    return [x / s for x in e]


def as_tensor(values: list) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol)


# ---- independent references ---------------------------------------------------------------------------------
def ref_mean_logits(views: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    out = []
    for b in range(views.shape[0]):
        row = []
        for c in range(text.shape[0]):
            row.append(sum(dot(views[b, v], text[c]) for v in range(views.shape[1])) / views.shape[1])
        out.append(row)
    return as_tensor(out)


def ref_wca_text(desc: torch.Tensor, counts: list[int], prompt: torch.Tensor, scale: float) -> torch.Tensor:
    out = []
    for c, n in enumerate(counts):
        a = softmax([scale * dot(desc[c, j], prompt[c]) for j in range(n)])  # valid j only
        pooled = [sum(a[j] * float(desc[c, j, d]) for j in range(n)) for d in range(D)]
        out.append(normalise(pooled))
    return as_tensor(out)


def ref_wca_logits(crops: torch.Tensor, full: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
    out = []
    for b in range(crops.shape[0]):
        k_count = crops.shape[1]
        w = softmax([scale * dot(crops[b, k], full[b]) for k in range(k_count)])
        pooled = normalise([sum(w[k] * float(crops[b, k, d]) for k in range(k_count)) for d in range(D)])
        out.append([sum(p * float(t) for p, t in zip(pooled, text[c].tolist(), strict=True))
                    for c in range(text.shape[0])])
    return as_tensor(out)


def ref_soft_scores(views: torch.Tensor, desc: torch.Tensor, counts: list[int], tau: float) -> torch.Tensor:
    """[B, V, C]: for each view, s over every valid (c, j) pair, one joint softmax, score_c = Σ_j p s."""
    out = []
    for b in range(views.shape[0]):
        per_view = []
        for v in range(views.shape[1]):
            pairs = [(c, j, dot(views[b, v], desc[c, j]) / tau) for c, n in enumerate(counts) for j in range(n)]
            p = softmax([s for _, _, s in pairs])
            score = [0.0] * len(counts)
            for (c, _, s), pc in zip(pairs, p, strict=True):
                score[c] += pc * s
            per_view.append(score)
        out.append(per_view)
    return as_tensor(out)


def ref_soft_logits(views, desc, counts, tau, weights=None) -> torch.Tensor:
    scores = ref_soft_scores(views, desc, counts, tau)
    out = []
    for b in range(views.shape[0]):
        row = []
        for c in range(len(counts)):
            total = 0.0
            for v in range(views.shape[1]):
                w = 1.0 if weights is None else float(weights[b, v])
                total += w * float(scores[b, v, c])
            row.append(total)
        out.append(row)
    return as_tensor(out)


def ref_view_weights(views: torch.Tensor, full: torch.Tensor, scale: float) -> torch.Tensor:
    out = []
    for b in range(views.shape[0]):
        w = softmax([scale * dot(views[b, v], full[b]) for v in range(views.shape[1])])
        out.append([x * views.shape[1] for x in w])
    return as_tensor(out)


# ---- constants ----------------------------------------------------------------------------------------------
def test_constants_match_design() -> None:
    assert math.isclose(WCA_VIEW_SCALE, math.e**4)
    assert math.isclose(WCA_TEXT_SCALE, math.e**2)
    assert SOFT_MATCH_TEMPERATURE == 0.03


# ---- baselines ----------------------------------------------------------------------------------------------
def test_mean_embedding_logits_matches_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    views, text = unit(3, 4, gen=gen), unit(5, gen=gen)
    out = mean_embedding_logits(views, text)
    assert out.shape == (3, 5)
    close(out, ref_mean_logits(views, text))


def test_mean_embedding_logits_single_view_is_clip() -> None:
    gen = torch.Generator().manual_seed(1)
    full, text = unit(4, gen=gen), unit(6, gen=gen)
    close(mean_embedding_logits(full[:, None], text), full @ text.T)


def test_masked_softmax_zeroes_invalid_and_normalises_jointly() -> None:
    gen = torch.Generator().manual_seed(2)
    scores = torch.randn(2, 3, 4, generator=gen)
    mask = torch.rand(3, 4, generator=gen) > 0.4
    mask[0, 0] = True
    probs = masked_softmax(scores, mask.expand_as(scores), dim=(1, 2))
    assert torch.all(probs[:, ~mask] == 0)
    close(probs.sum(dim=(1, 2)), torch.ones(2))
    for b in range(2):
        valid = [(i, j) for i in range(3) for j in range(4) if mask[i, j]]
        ref = softmax([float(scores[b, i, j]) for i, j in valid])
        for (i, j), p in zip(valid, ref, strict=True):
            assert math.isclose(float(probs[b, i, j]), p, rel_tol=1e-5, abs_tol=1e-7)


# ---- WCA ----------------------------------------------------------------------------------------------------
def test_wca_text_embeddings_matches_loop_and_ignores_padding() -> None:
    gen = torch.Generator().manual_seed(3)
    desc, mask = ragged(COUNTS, gen)
    prompt = unit(len(COUNTS), gen=gen)
    out = wca_text_embeddings(desc, mask, prompt)
    assert out.shape == (len(COUNTS), D)
    close(out, ref_wca_text(desc, COUNTS, prompt, math.e**2))
    close(out.norm(dim=-1), torch.ones(len(COUNTS)))
    # the same valid rows with zero padding give the same result
    clean = desc * mask[..., None]
    close(wca_text_embeddings(clean, mask, prompt), out, rtol=1e-6, atol=1e-6)


def test_wca_text_weights_use_the_class_own_prompt() -> None:
    """a[c, :] must use prompt_c, not another class's prompt: permuting prompts changes the result."""
    gen = torch.Generator().manual_seed(4)
    desc, mask = ragged([4, 4, 4], gen, pad="zeros")
    prompt = unit(3, gen=gen)
    out = wca_text_embeddings(desc, mask, prompt, scale=10.0)
    close(out, ref_wca_text(desc, [4, 4, 4], prompt, 10.0))
    assert not torch.allclose(out, wca_text_embeddings(desc, mask, prompt.roll(1, dims=0), scale=10.0))


def test_wca_logits_matches_loop() -> None:
    gen = torch.Generator().manual_seed(5)
    crops, full, text = unit(3, 6, gen=gen), unit(3, gen=gen), unit(4, gen=gen)
    out = wca_logits(crops, full, text)
    assert out.shape == (3, 4)
    close(out, ref_wca_logits(crops, full, text, math.e**4))


def test_wca_end_to_end_ragged() -> None:
    gen = torch.Generator().manual_seed(6)
    desc, mask = ragged(COUNTS, gen)
    prompt = unit(len(COUNTS), gen=gen)
    crops, full = unit(2, 5, gen=gen), unit(2, gen=gen)
    text_ref = ref_wca_text(desc, COUNTS, prompt, math.e**2)
    expected = ref_wca_logits(crops, full, text_ref.float(), math.e**4)
    close(wca_logits(crops, full, wca_text_embeddings(desc, mask, prompt)), expected)


def test_wca_with_one_full_crop_and_prompt_description_is_clip() -> None:
    gen = torch.Generator().manual_seed(7)
    full, prompt = unit(3, gen=gen), unit(5, gen=gen)
    text = wca_text_embeddings(prompt[:, None], torch.ones(5, 1, dtype=torch.bool), prompt)
    close(text, prompt, rtol=1e-6, atol=1e-6)
    close(wca_logits(full[:, None], full, text), full @ prompt.T, rtol=1e-6, atol=1e-6)


# ---- ABS soft matching --------------------------------------------------------------------------------------
def test_soft_match_scores_ragged_matches_loop() -> None:
    gen = torch.Generator().manual_seed(8)
    desc, mask = ragged(COUNTS, gen)
    views = unit(2, 3, gen=gen)
    out = soft_match_scores(views, desc, mask)
    assert out.shape == (2, 3, len(COUNTS))
    assert torch.isfinite(out).all()
    close(out, ref_soft_scores(views, desc, COUNTS, 0.03), rtol=1e-5, atol=1e-4)


def test_soft_match_padding_values_do_not_matter() -> None:
    gen = torch.Generator().manual_seed(9)
    desc, mask = ragged(COUNTS, gen)
    views = unit(3, 4, gen=gen)
    clean = desc * mask[..., None]
    other = torch.where(mask[..., None], desc, -desc.abs() * 3 + 7)
    a = soft_match_logits(views, desc, mask)
    close(soft_match_logits(views, clean, mask), a, rtol=1e-6, atol=1e-5)
    close(soft_match_logits(views, other, mask), a, rtol=1e-6, atol=1e-5)


def test_soft_match_softmax_is_joint_over_classes() -> None:
    """A per-class softmax would give score_c = a weighted mean of class c's own s values (≥ min s);
    the joint one scales each class by its share of the total mass, so the scores sum to less than max s."""
    gen = torch.Generator().manual_seed(10)
    desc, mask = ragged([2, 2, 2], gen, pad="zeros")
    views = unit(1, 1, gen=gen)
    tau = 0.5
    out = soft_match_scores(views, desc, mask, temperature=tau)
    expected = ref_soft_scores(views, desc, [2, 2, 2], tau)
    close(out, expected)
    per_class = []
    for c in range(3):
        s = [dot(views[0, 0], desc[c, j]) / tau for j in range(2)]
        p = softmax(s)
        per_class.append(sum(pi * si for pi, si in zip(p, s, strict=True)))
    assert not torch.allclose(out[0, 0].double(), as_tensor(per_class), atol=1e-3)


def test_soft_match_logits_sum_over_views_and_temperature() -> None:
    gen = torch.Generator().manual_seed(11)
    desc, mask = ragged(COUNTS, gen)
    views = unit(3, 5, gen=gen)
    for tau in (0.03, 0.2):
        close(soft_match_logits(views, desc, mask, temperature=tau), ref_soft_logits(views, desc, COUNTS, tau),
              rtol=1e-5, atol=1e-4)


def test_soft_match_logits_with_view_weights() -> None:
    gen = torch.Generator().manual_seed(12)
    desc, mask = ragged(COUNTS, gen)
    views, full = unit(2, 4, gen=gen), unit(2, gen=gen)
    weights = torch.rand(2, 4, generator=gen) * 2
    out = soft_match_logits(views, desc, mask, view_weights=weights)
    close(out, ref_soft_logits(views, desc, COUNTS, 0.03, weights), rtol=1e-5, atol=1e-4)
    sim_w = similarity_view_weights(views, full)
    close(soft_match_logits(views, desc, mask, view_weights=sim_w),
          ref_soft_logits(views, desc, COUNTS, 0.03, ref_view_weights(views, full, math.e**4)), rtol=1e-5, atol=1e-4)
    # uniform weights (all 1) equal the unweighted sum
    close(soft_match_logits(views, desc, mask, view_weights=torch.ones(2, 4)), soft_match_logits(views, desc, mask),
          rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("weighted", [False, True])
def test_soft_match_logits_chunking_is_invisible(weighted: bool) -> None:
    gen = torch.Generator().manual_seed(13)
    desc, mask = ragged(COUNTS, gen)
    views = unit(11, 3, gen=gen)
    weights = torch.rand(11, 3, generator=gen) if weighted else None
    one = soft_match_logits(views, desc, mask, view_weights=weights, chunk=1)
    eight = soft_match_logits(views, desc, mask, view_weights=weights, chunk=8)
    big = soft_match_logits(views, desc, mask, view_weights=weights, chunk=100)
    assert one.shape == (11, len(COUNTS))
    close(one, eight, rtol=1e-6, atol=1e-5)
    close(one, big, rtol=1e-6, atol=1e-5)
    # every image is scored on its own (no cross-image mixing): chunk 1 == the loop reference
    close(one, ref_soft_logits(views, desc, COUNTS, 0.03, weights), rtol=1e-5, atol=1e-4)


def test_soft_match_huge_temperature_gives_scaled_similarity() -> None:
    """One description per class, τ → ∞: p → 1/C for every class, so score_c = p_c s_c ≈ (z·t_c) / (C τ)."""
    gen = torch.Generator().manual_seed(14)
    c = 5
    desc, mask = ragged([1] * c, gen)
    views = unit(2, 3, gen=gen)
    tau = 1e6
    scores = soft_match_scores(views, desc, mask, temperature=tau).double()
    sims = torch.einsum("bvd,cd->bvc", views.double(), desc[:, 0].double())
    close(scores * c * tau, sims, rtol=1e-4, atol=1e-5)
    # summed over views, the logits are the mean-view CLIP logits times V / (C τ)
    logits = soft_match_logits(views, desc, mask, temperature=tau).double()
    close(logits * c * tau / 3, mean_embedding_logits(views, desc[:, 0]), rtol=1e-4, atol=1e-5)


def test_soft_match_tiny_temperature_picks_the_best_pair() -> None:
    """τ → 0: p is one-hot on the best (c, j); score = s_max for that class and ≈ 0 for the others."""
    gen = torch.Generator().manual_seed(15)
    desc, mask = ragged(COUNTS, gen)
    views = unit(1, 2, gen=gen)
    tau = 1e-4
    scores = soft_match_scores(views, desc, mask, temperature=tau)
    for v in range(2):
        sims = [(dot(views[0, v], desc[c, j]), c) for c, n in enumerate(COUNTS) for j in range(n)]
        best, best_c = max(sims)
        assert math.isclose(float(scores[0, v, best_c]) * tau, best, rel_tol=1e-4, abs_tol=1e-5)
        others = [float(scores[0, v, c]) for c in range(len(COUNTS)) if c != best_c]
        assert max(abs(x) for x in others) < 1e-3


def test_soft_match_class_with_no_valid_description_scores_zero() -> None:
    gen = torch.Generator().manual_seed(16)
    desc, mask = ragged([2, 0, 3], gen)
    views = unit(2, 2, gen=gen)
    out = soft_match_scores(views, desc, mask)
    assert torch.all(out[..., 1] == 0)
    close(out, ref_soft_scores(views, desc, [2, 0, 3], 0.03), rtol=1e-5, atol=1e-4)


# ---- view weights -------------------------------------------------------------------------------------------
def test_similarity_view_weights_matches_loop() -> None:
    gen = torch.Generator().manual_seed(17)
    views, full = unit(3, 6, gen=gen), unit(3, gen=gen)
    out = similarity_view_weights(views, full)
    assert out.shape == (3, 6)
    close(out, ref_view_weights(views, full, math.e**4))
    close(out.sum(dim=1), torch.full((3,), 6.0))
    # identical views get uniform weights of exactly 1
    same = full[:, None].expand(3, 4, D)
    close(similarity_view_weights(same, full), torch.ones(3, 4))
