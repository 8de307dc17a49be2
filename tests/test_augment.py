"""Table 5 view augmentations and attention biases, against hand-computed and independent results."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from absclip.backbones import create_backbone
from absclip.backbones.tokens import TokenMap
from absclip.errors import ConfigError
from absclip.pixels import PreprocessSpec
from absclip.pixels.resample import crop_resize
from absclip.views import ViewConfig, ViewExtractor
from absclip.views.augment import (
    FEATURE_AUGMENTS,
    HIGHLIGHT_GAIN,
    RAW_AUGMENTS,
    box_masks,
    ellipse_rings,
    window_token_masks,
)
from absclip.views.plans import CropPlan

SPEC = PreprocessSpec(size=224)


def _image(w: int, h: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (3, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_box_masks_hand_computed() -> None:
    square = _image(224, 224)
    m = box_masks(square, torch.tensor([[0, 0, 112, 112], [0, 0, 224, 224]]), SPEC)[:, 0]
    assert m[0, :112, :112].all() and m[0].sum() == 112 * 112
    assert m[1].all()
    # 448×224: resized to 448×224, centre crop starts at x = 112, so box x 112..336 covers the whole input
    wide = _image(448, 224)
    m = box_masks(wide, torch.tensor([[112, 0, 336, 224], [0, 0, 112, 224]]), SPEC)[:, 0]
    assert m[0].all()
    assert not m[1].any()  # left of the crop: nothing of it is in the input


def test_raw_mask_and_highlight() -> None:
    image = _image(224, 224, 1)
    boxes = torch.tensor([[0, 0, 112, 112]])
    full = crop_resize(image, torch.tensor([[0, 0, 224, 224]]), SPEC)
    mean = torch.tensor(SPEC.mean).view(3, 1, 1)
    std = torch.tensor(SPEC.std).view(3, 1, 1)
    masked = RAW_AUGMENTS.get("mask")(image, boxes, SPEC)[0]
    assert torch.allclose(masked[:, :112, :112], full[0, :, :112, :112], atol=1e-5)
    black = (0 - mean) / std
    assert torch.allclose(masked[:, 112:, :], black.expand(3, 112, 224), atol=1e-5)
    lit = RAW_AUGMENTS.get("highlight")(image, boxes, SPEC)[0]
    pixels = full[0] * std + mean  # back to 0..1
    expected_inside = ((pixels[:, :112, :112] * 255 * HIGHLIGHT_GAIN).clamp(0, 255) / 255 - mean) / std
    assert torch.allclose(lit[:, :112, :112], expected_inside, atol=1e-4)
    assert torch.allclose(lit[:, 112:], full[0, :, 112:], atol=1e-5)


def test_red_circle_ring() -> None:
    image = _image(224, 224, 2)
    boxes = torch.tensor([[56, 56, 168, 168]])
    ring = ellipse_rings(image, boxes, SPEC)[0, 0]
    assert ring[112, 168 - 1] or ring[112, 168]  # on the right edge of the inscribed circle (radius 56)
    assert not ring[112, 112] and not ring[0, 0]
    view = RAW_AUGMENTS.get("redcircle")(image, boxes, SPEC)[0]
    red = (torch.tensor([1.0, 0.0, 0.0]) - torch.tensor(SPEC.mean)) / torch.tensor(SPEC.std)
    ys, xs = ring.nonzero(as_tuple=True)
    assert torch.allclose(view[:, ys, xs], red[:, None].expand(3, len(ys)), atol=1e-5)
    full = crop_resize(image, torch.tensor([[0, 0, 224, 224]]), SPEC)[0]
    assert torch.allclose(view[:, 112, 112], full[:, 112, 112], atol=1e-5)


def test_feature_token_augments() -> None:
    grid, width = 4, 6
    seq = torch.randn(2, 1 + grid * grid, width)
    tokens = TokenMap.from_sequence(seq, 1, (grid, grid))
    owner = torch.tensor([1])
    windows = torch.tensor([[1, 1, 3, 4]])
    inside = window_token_masks(windows, grid)[0]
    assert inside.sum() == 2 * 3 and inside[1 * grid + 1] and not inside[0]
    masked_map, bias = FEATURE_AUGMENTS.get("mask")(tokens, owner, windows)
    masked = masked_map.sequence()
    assert bias is None
    assert torch.equal(masked[0, 0], seq[1, 0])  # CLS kept
    assert torch.equal(masked[0, 1:][inside], seq[1, 1:][inside])
    assert not masked[0, 1:][~inside].any()
    lit_map, _ = FEATURE_AUGMENTS.get("highlight-fea")(tokens, owner, windows)
    lit = lit_map.sequence()
    assert torch.allclose(lit[0, 1:][inside], seq[1, 1:][inside] * HIGHLIGHT_GAIN)
    assert torch.equal(lit[0, 0], seq[1, 0])
    same, attn = FEATURE_AUGMENTS.get("highlight-attn")(tokens, owner, windows)
    assert torch.equal(same.sequence()[0], seq[1])
    assert attn is not None and attn[0, 0] == 0 and torch.allclose(attn[0, 1:][inside], torch.tensor(0.6931), atol=1e-4)


@pytest.mark.parametrize("which", ["openai", "hf"])
def test_attention_bias_equals_dropping_tokens(which: str, tiny_openai_checkpoint: Path, tiny_hf_dir: Path) -> None:
    """A bias of -1e9 on some keys must equal removing those tokens (independent of the bias code path)."""
    spec = f"openai:{tiny_openai_checkpoint}" if which == "openai" else f"hf:{tiny_hf_dir}"
    bb = create_backbone(spec, pretrained=None, device="cpu")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    layer = bb.num_blocks - 2  # a full block and the CLS-only final block both see the bias
    tokens = bb.tokens_before_block(x, layer)
    # keep the CLS token and the grid's first row: the dropped map is then a 1×G grid, a valid token map
    grid = tokens.grid_shape[1]
    bias = torch.full((2, tokens.num_tokens), -1e9)
    bias[:, : 1 + grid] = 0.0
    with_bias = bb.finish_from_block(tokens, layer, attn_bias=bias)
    dropped = bb.finish_from_block(tokens.with_grid(tokens.grid[:, :1]), layer)
    assert torch.allclose(with_bias, dropped, atol=1e-5)
    zero = bb.finish_from_block(tokens, layer, attn_bias=torch.zeros(2, tokens.num_tokens))
    assert torch.allclose(zero, bb.finish_from_block(tokens, layer), atol=1e-6)


@pytest.mark.parametrize(("raw", "feature"), [("mask", "crop"), ("highlight", "mask"), ("redcircle", "highlight-fea"),
                                              ("crop", "highlight-attn")])
def test_extractor_runs_each_augment(raw: str, feature: str, tiny_openai_checkpoint: Path) -> None:
    bb = create_backbone(f"openai:{tiny_openai_checkpoint}", pretrained=None, device="cpu")
    image = _image(40, 30, 3)
    plan = CropPlan("k", 40, 30, 4, 0, "abs", boxes=[[0, 0, 20, 15], [10, 5, 40, 30]],
                    windows=[[0, 0, 2, 2], [1, 1, 4, 4]])
    base = ViewExtractor(bb, ViewConfig(crops="abs", raw=True, feature=True), saliency=None)
    aug = ViewExtractor(bb, ViewConfig(crops="abs", raw=True, feature=True, raw_augment=raw,
                                       feature_augment=feature), saliency=None)
    ref, _ = base([image], ["k"], [plan])
    views, _ = aug([image], ["k"], [plan])
    assert views.raw is not None and views.feature is not None and ref.raw is not None and ref.feature is not None
    assert views.raw.shape == (1, 2, 32) and views.feature.shape == (1, 2, 32)
    assert torch.allclose(views.raw.norm(dim=-1), torch.ones(1, 2), atol=1e-5)
    assert not torch.allclose(views.raw, ref.raw) or raw == "crop"
    assert not torch.allclose(views.feature, ref.feature) or feature == "crop"
    with pytest.raises(ConfigError, match=r"raw_augment must be one of crop, highlight, mask, redcircle.*, got 'blur'"):
        ViewConfig(crops="abs", raw_augment="blur")  # refused when the config is built, before any model work
