"""BLIP-2 (issue 9): a tiny random ``Blip2ForImageTextRetrieval`` saved with ``save_pretrained`` and read back
through ``create_backbone("hf:DIR")``, and views with several vectors (its Q query embeddings) scored with
the max over the queries inside every formula. The per-block split, the text features, the pixel settings,
the attention bias, the CLS saliency, ``classify --method abs`` and every method on BLIP-2 run in
tests/test_hf_families.py (blip-2 is in hf_tiny.BUILDERS); here: the ITC score, the query axis through
the view pipeline, and the formulas against loop re-derivations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from absclip.backbones import Backbone, create_backbone
from absclip.cli import main
from absclip.scoring import (
    mean_embedding_logits,
    pooled_queries,
    similarity_view_weights,
    soft_match_scores,
    view_text_cosine,
    wca_logits,
)
from absclip.transport import awt_logits
from absclip.views import ViewConfig, ViewExtractor
from hf_tiny import save_tiny

Q = 4  # hf_tiny's num_query_tokens


@pytest.fixture(scope="module")
def blip2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny("blip-2", tmp_path_factory.mktemp("blip2") / "blip-2")


@pytest.fixture(scope="module")
def bb(blip2_dir: Path) -> Backbone:
    return create_backbone(f"hf:{blip2_dir}", pretrained=None, device="cpu")


def _unit(*shape: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


@torch.no_grad()
def test_itc_score_is_the_max_over_queries_of_transformers(bb: Backbone) -> None:
    """max_q cos(query q, text) = ``Blip2ForImageTextRetrieval(..., use_image_text_matching_head=False)``'s
    logits (raw cosines: its scale is 1); absclip's softmax scale is CLIP's 100 (no learned temperature)."""
    assert bb.queries_per_view == Q and bb.logit_scale == 100.0
    x = torch.randn(3, 3, bb.preprocess.size, bb.preprocess.size, generator=torch.Generator().manual_seed(1))
    texts = ["a photo of a cat", "a photo of a dog", "barks loudly"]
    batch = bb.tokenizer(texts, padding=True, return_tensors="pt")
    ref = bb.model(pixel_values=x, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   use_image_text_matching_head=False)
    image, text = bb.encode_image(x), bb.encode_text(texts)
    assert image.shape == (3, Q, bb.embed_dim) and text.shape == (3, bb.embed_dim)
    ours = view_text_cosine("bd,cd->bc", image, text)
    torch.testing.assert_close(ours, ref.logits_per_image.float(), atol=1e-5, rtol=0)
    # the max matters: the queries differ, and their mean scores otherwise
    assert (image[:, 0] - image[:, 1]).abs().max() > 1e-2
    mean = F.normalize(image.mean(dim=1), dim=-1) @ text.T
    assert (mean - ours).abs().max() > 1e-3


def test_views_carry_the_query_axis(bb: Backbone) -> None:
    """Full [B, Q, D], raw and feature crops [B, N, Q, D], each query unit length; the full view is the
    backbone's own image embedding, and feature crops differ from it (the Q-Former reads the zoomed map)."""
    from absclip.pixels import preprocess_images
    from absclip.views import CropKind, RandomCropConfig

    rng = np.random.default_rng(2)
    images = [torch.from_numpy(rng.integers(0, 256, (3, 40, 48), dtype=np.uint8)) for _ in range(2)]
    config = ViewConfig(crops=CropKind.RANDOM, raw=True, feature=True, random=RandomCropConfig(crops=3))
    views, _ = ViewExtractor(bb, config)(images, ["a", "b"])
    d = bb.embed_dim
    assert views.full.shape == (2, Q, d) and views.raw.shape == (2, 3, Q, d) and views.feature.shape == (2, 3, Q, d)
    assert views.crops().shape == (2, 6, Q, d)
    torch.testing.assert_close(views.crops().norm(dim=-1), torch.ones(2, 6, Q))
    torch.testing.assert_close(views.full, bb.encode_image(preprocess_images(images, bb.preprocess)), atol=1e-5,
                               rtol=0)
    assert (views.feature - views.full[:, None]).abs().max() > 1e-3


# ---- the formulas with Q > 1, against loops that take the max inside --------------------------------------
def _cos(view: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """One view [Q, D] and one text [D]: the max over the queries of the cosine (a 0-dim tensor)."""
    return max(view[q] @ text for q in range(view.shape[0]))


def test_soft_matching_takes_the_max_inside() -> None:
    b, v, c, m, d, tau = 2, 3, 4, 3, 8, 0.05
    views, desc = _unit(b, v, Q, d, seed=3), _unit(c, m, d, seed=4)
    mask = torch.ones(c, m, dtype=torch.bool)
    mask[1, 2] = mask[3, 1:] = False
    got = soft_match_scores(views, desc, mask, tau)
    want = torch.zeros(b, v, c)
    for i in range(b):
        for j in range(v):
            s = {(k, n): _cos(views[i, j], desc[k, n]) / tau for k in range(c) for n in range(m) if mask[k, n]}
            z = sum(torch.exp(val) for val in s.values())
            for (k, _), val in s.items():
                want[i, j, k] += torch.exp(val) / z * val
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # not the average taken before: soft matching of the mean query differs
    assert (soft_match_scores(views.mean(dim=2), desc, mask, tau) - got).abs().max() > 1e-3


def test_wca_takes_the_max_inside_and_weights_by_pooled_queries() -> None:
    b, k, c, d, scale = 2, 5, 3, 8, 20.0
    crops, full, text = _unit(b, k, Q, d, seed=5), _unit(b, Q, d, seed=6), _unit(c, d, seed=7)
    got = wca_logits(crops, full, text, scale)
    want = torch.zeros(b, c)
    for i in range(b):
        v = F.normalize(full[i].mean(dim=0), dim=0)  # image-image: the normalised mean of the queries
        u = [F.normalize(crops[i, j].mean(dim=0), dim=0) for j in range(k)]
        w = torch.softmax(torch.stack([scale * (uj @ v) for uj in u]), dim=0)
        pooled = torch.stack([F.normalize(sum(w[j] * crops[i, j, q] for j in range(k)), dim=0) for q in range(Q)])
        for n in range(c):
            want[i, n] = _cos(pooled, text[n])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_mean_embedding_and_awt_cosines_are_per_view_maxima() -> None:
    b, v, c, d = 2, 3, 4, 8
    views, text = _unit(b, v, Q, d, seed=8), _unit(c, d, seed=9)
    want = torch.tensor([[sum(_cos(views[i, j], text[n]) for j in range(v)) / v for n in range(c)]
                         for i in range(b)])
    torch.testing.assert_close(mean_embedding_logits(views, text), want, atol=1e-6, rtol=0)
    # AWT on one view and one description per class is that cosine (the transport plan is 1)
    one = awt_logits(views[:, :1], text[:, None], torch.ones(c, 1, dtype=torch.bool), 100.0)
    first = torch.tensor([[_cos(views[i, 0], text[n]) for n in range(c)] for i in range(b)])
    torch.testing.assert_close(one, first, atol=1e-5, rtol=0)


def test_one_query_is_the_plain_cosine_and_image_weights_pool_queries() -> None:
    views, desc = _unit(2, 3, 8, seed=10), _unit(4, 2, 8, seed=11)
    plain = view_text_cosine("bvd,cmd->bvcm", views, desc)
    torch.testing.assert_close(plain, torch.einsum("bvd,cmd->bvcm", views, desc), atol=0, rtol=0)
    torch.testing.assert_close(view_text_cosine("bvd,cmd->bvcm", views[:, :, None], desc), plain, atol=1e-6, rtol=0)
    many, full = _unit(2, 3, Q, 8, seed=12), _unit(2, Q, 8, seed=13)
    torch.testing.assert_close(similarity_view_weights(many, full),
                               similarity_view_weights(pooled_queries(many, 2), pooled_queries(full, 1)))
    with pytest.raises(ValueError, match="do not fit"):
        view_text_cosine("bvd,cd->bvc", _unit(2, 3, 4, 5, 8, seed=14), desc[:, 0])


def test_classify_abs_on_blip2_writes_labels(blip2_dir: Path, tmp_path: Path, descriptions: Path) -> None:
    """``absclip classify --model hf:DIR --method abs`` with feature crops and CLIP saliency, and the
    probabilities it writes are a distribution."""
    rng = np.random.default_rng(4)
    Image.fromarray(rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    out = tmp_path / "out.jsonl"
    assert main(["classify", str(tmp_path / "x.png"), "--classes", "cat,dog,bird", "--descriptions",
                 str(descriptions), "--method", "abs", "--model", f"hf:{blip2_dir}", "--cache-dir", str(tmp_path),
                 "--saliency", "clip", "--crops", "3", "--random-crops", "2", "--output", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["error"] is None and record["label"] in {"cat", "dog", "bird"}
