"""Splitting a ViT at block l: ``finish_from_block(tokens_before_block(x, l), l)`` must reproduce the
library's own image embedding for every l and every adapter (open_clip, OpenAI-format, transformers)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from absclip.backbones import BACKBONES, Backbone, create_backbone
from absclip.backbones.tokens import TokenMap


def _open_clip(request: pytest.FixtureRequest, dtype: str) -> Backbone:
    name, path = request.getfixturevalue("tiny_open_clip_checkpoint")
    return create_backbone(f"open_clip:{name}", pretrained=str(path), device="cpu", dtype=dtype)


def _openai(request: pytest.FixtureRequest, dtype: str) -> Backbone:
    path = request.getfixturevalue("tiny_openai_checkpoint")
    return create_backbone(f"openai:{path}", pretrained=None, device="cpu", dtype=dtype)


def _hf(request: pytest.FixtureRequest, dtype: str) -> Backbone:
    directory: Path = request.getfixturevalue("tiny_hf_dir")
    return create_backbone(f"hf:{directory}", pretrained=None, device="cpu", dtype=dtype)


TINY_LOADERS = {"open_clip": _open_clip, "openai": _openai, "hf": _hf}
"""A tiny saved model per backbone source, loaded back through the real loader."""

KINDS = BACKBONES.names()  # every registered source: a new one fails below until it has a tiny model


def _load(kind: str, request: pytest.FixtureRequest, dtype: str = "fp32") -> Backbone:
    assert kind in TINY_LOADERS, f"backbone source {kind!r} has no tiny test model; add one to TINY_LOADERS"
    return TINY_LOADERS[kind](request, dtype)


@torch.no_grad()
def _library_embedding(kind: str, bb: Backbone, x: torch.Tensor) -> torch.Tensor:
    """The image embedding computed by the library's own forward, not by absclip's primitives."""
    model = bb.model
    x = x.to(bb.dtype)
    if kind == "hf":
        pooled = model.vision_model(pixel_values=x).pooler_output
        return F.normalize(model.visual_projection(pooled).float(), dim=-1)
    return F.normalize(model.encode_image(x).float(), dim=-1)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


def _sharpen_attention(bb: Backbone, factor: float = 6.0) -> None:
    """Scale every block's query and key weights so attention is far from uniform (random init is nearly
    uniform, which would hide a wrong head split or a wrong softmax in the CLS-only path)."""
    with torch.no_grad():
        for blk in bb._blocks():
            if hasattr(blk, "self_attn"):  # transformers
                blk.self_attn.q_proj.weight.mul_(factor)
                blk.self_attn.k_proj.weight.mul_(factor)
            else:  # open_clip nn.MultiheadAttention: in_proj rows are [q; k; v]
                width = blk.attn.embed_dim
                blk.attn.in_proj_weight[: 2 * width].mul_(factor)


def _pixels(bb: Backbone, n: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = bb.preprocess.size
    return torch.randn(n, 3, s, s, generator=g)


@pytest.mark.parametrize("sharp", [False, True], ids=["init", "sharp-attention"])
def test_split_at_every_block_matches_library(kind: str, sharp: bool, request: pytest.FixtureRequest) -> None:
    bb = _load(kind, request)
    if sharp:
        _sharpen_attention(bb)
    assert bb.is_vit and bb.grid_size == 4  # 32 px input, patch 8
    x = _pixels(bb)
    ref = _library_embedding(kind, bb, x)
    assert ref.shape == (3, bb.embed_dim)
    n = bb.num_blocks
    assert n >= 2
    for layer in range(n):
        tokens = bb.tokens_before_block(x, layer)
        assert isinstance(tokens, TokenMap)
        assert tokens.prefix.shape[:2] == (3, 1) and tokens.grid.shape[:3] == (3, 4, 4)
        out = bb.finish_from_block(tokens, layer)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0, msg=f"{kind}: split at block {layer}")
        # negative indices count from the end
        out_neg = bb.finish_from_block(bb.tokens_before_block(x, layer - n), layer - n)
        torch.testing.assert_close(out_neg, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(bb.encode_image(x), ref, atol=1e-5, rtol=0)
    # the split is not trivially ignoring its input: other tokens give other embeddings
    tokens = bb.tokens_before_block(x, n - 1)
    flipped = TokenMap(tokens.prefix.flip(0), tokens.grid.flip(0))
    other = bb.finish_from_block(flipped, n - 1)
    torch.testing.assert_close(other, ref.flip(0), atol=1e-5, rtol=0)
    # (the identity at block 0 also shows that the grid is used: the CLS token entering block 0 is the same
    # for every image)
    assert (ref[0] - ref[1]).abs().max() > 1e-3


def test_tokens_before_block_are_the_library_hidden_states(request: pytest.FixtureRequest) -> None:
    """transformers exposes every block's input (hidden_states[l]); absclip's tokens must be those."""
    bb = _load("hf", request)
    x = _pixels(bb, seed=1)
    with torch.no_grad():
        hidden = bb.model.vision_model(pixel_values=x, output_hidden_states=True).hidden_states
    for layer in range(bb.num_blocks):
        torch.testing.assert_close(bb.tokens_before_block(x, layer).sequence(), hidden[layer], atol=1e-5, rtol=0)


def test_open_clip_tokens_before_block_match_forward_hooks(request: pytest.FixtureRequest) -> None:
    bb = _load("open_clip", request)
    x = _pixels(bb, seed=2)
    seen: dict[int, torch.Tensor] = {}
    handles = [
        blk.register_forward_pre_hook(lambda _m, args, i=i: seen.__setitem__(i, args[0].detach().clone()))
        for i, blk in enumerate(bb._blocks())
    ]
    try:
        with torch.no_grad():
            bb.model.encode_image(x)
    finally:
        for h in handles:
            h.remove()
    assert sorted(seen) == list(range(bb.num_blocks))
    for layer, ref in seen.items():
        torch.testing.assert_close(bb.tokens_before_block(x, layer).sequence(), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("with_bias", [False, True])
def test_fused_attention_block_is_the_library_block(with_bias: bool, request: pytest.FixtureRequest) -> None:
    """absclip runs open_clip's blocks with one fused attention call; ``nn.MultiheadAttention`` (the
    block's own forward, with the bias expanded to its [B·h, T, T] mask) must give the same tokens."""
    from absclip.backbones.open_clip import plain_block

    bb = _load("openai", request)
    _sharpen_attention(bb)
    tokens = bb.tokens_before_block(_pixels(bb, seed=5), 0).sequence()
    b, t, _ = tokens.shape
    bias = -4.0 * torch.rand(b, t, generator=torch.Generator().manual_seed(6)) if with_bias else None
    for block in bb._blocks():
        heads = block.attn.num_heads
        mask = None if bias is None else bias[:, None, None, :].expand(b, heads, t, t).reshape(b * heads, t, t)
        with torch.no_grad():
            ref = block(tokens, attn_mask=mask)
        torch.testing.assert_close(plain_block(block, tokens, bias), ref, atol=1e-5, rtol=0)
        tokens = ref


def test_cls_only_last_block_equals_full_last_block(kind: str, request: pytest.FixtureRequest) -> None:
    """The CLS-only shortcut (``_finish``) against the whole last block followed by the head."""
    bb = _load(kind, request)
    _sharpen_attention(bb)
    x = _pixels(bb, seed=3)
    g = torch.Generator().manual_seed(5)
    last = bb.num_blocks - 1
    with torch.no_grad():
        seq = bb.tokens_before_block(x, last).sequence()
        full = bb._head(bb._run_block(last, seq, (4, 4), None), None)
        short = bb._finish(seq, (4, 4), None)
        torch.testing.assert_close(short, full, atol=1e-5, rtol=0)
        # the CLS output depends on the patch tokens it attends over, not only on CLS itself
        changed = seq.clone()
        changed[:, 1:] = torch.randn(changed[:, 1:].shape, generator=g) * seq[:, 1:].std()
        assert (bb._finish(changed, (4, 4), None) - short).abs().max() > 1e-2
        torch.testing.assert_close(bb._finish(changed, (4, 4), None),
                                   bb._head(bb._run_block(last, changed, (4, 4), None), None), atol=1e-5, rtol=0)


def test_bf16_path_runs_and_is_close(kind: str, request: pytest.FixtureRequest) -> None:
    ref_bb = _load(kind, request)
    bb = _load(kind, request, dtype="bf16")
    assert next(bb.model.parameters()).dtype == torch.bfloat16
    x = _pixels(bb, seed=4)
    ref = ref_bb.encode_image(x)
    last = bb.num_blocks - 1
    for layer in (0, last):
        tokens = bb.tokens_before_block(x, layer)
        assert tokens.grid.dtype == torch.bfloat16
        out = bb.finish_from_block(tokens, layer)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=0)
        cos = (out * ref).sum(-1)
        assert cos.min() > 0.98, (kind, layer, cos)
        assert (out - ref).abs().max() < 0.1
    torch.testing.assert_close(bb.encode_image(x), bb.finish_from_block(bb.tokens_before_block(x, last), last))


def test_invalid_block_index(kind: str, request: pytest.FixtureRequest) -> None:
    bb = _load(kind, request)
    x = _pixels(bb, n=1)
    n = bb.num_blocks
    for bad in (n, n + 3, -n - 1):
        with pytest.raises(ValueError, match=rf"feature layer {bad} out of range .* {n} blocks"):
            bb.tokens_before_block(x, bad)
        with pytest.raises(ValueError, match="out of range"):
            bb.finish_from_block(TokenMap(torch.zeros(1, 1, 8), torch.zeros(1, 4, 4, 8)), bad)
    assert bb.block_index(-1) == n - 1
    assert bb.block_index(-n) == 0
    assert bb.block_index(0) == 0
