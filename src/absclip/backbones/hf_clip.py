"""transformers CLIP-style towers: CLIP, MetaCLIP 2 and AltCLIP (whose vision tower is CLIP's; only its
text tower, an XLM-R, differs, and ``get_text_features`` hides that).

One CLS token before the patch grid; the head is ``post_layernorm`` + ``visual_projection`` of the CLS
token alone, so the last block computes only the CLS query (the CLS-only shortcut of :mod:`.base`: exact,
since no other output of the last block reaches the embedding).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import cls_attention_row, cls_query_attention
from .hf_base import HFBackbone, register_hf


@register_hf("clip")
class HFClipBackbone(HFBackbone):
    model_class = "CLIPModel"
    family = "CLIP"
    num_prefix = 1

    def _setup_vision(self) -> None:
        vision = self.model.config.vision_config
        self._grid = int(vision.image_size) // int(vision.patch_size)
        self._heads = int(vision.num_attention_heads)

    def _blocks(self) -> Sequence[nn.Module]:
        return self.model.vision_model.encoder.layers

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        vision = self.model.vision_model
        return vision.pre_layrnorm(vision.embeddings(pixels))

    def _run_block(self, index: int, x: torch.Tensor, grid: tuple[int, int],
                   bias: torch.Tensor | None) -> torch.Tensor:
        # transformers 5 encoder layers take (hidden_states, additive mask [B, 1, T, T]) and return a tensor
        block = self._blocks()[index]
        if bias is None:
            return block(x, None)
        t = x.shape[1]
        return block(x, bias[:, None, None, :].expand(-1, 1, t, t))

    def _qkv(self, block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The CLS query [B, 1, W] and every token's key and value [B, T, W] of ``block``."""
        h = block.layer_norm1(x)
        attn = block.self_attn
        return attn.q_proj(h[:, :1]), attn.k_proj(h), attn.v_proj(h)

    def _finish(self, x: torch.Tensor, grid: tuple[int, int], bias: torch.Tensor | None) -> torch.Tensor:
        """The CLS-only shortcut: the head reads the CLS token alone, so the last block runs its query only."""
        block = self._blocks()[-1]
        q, k, v = self._qkv(block, x)
        y = x[:, :1] + block.self_attn.out_proj(cls_query_attention(q, k, v, self._heads, bias))
        return self._head(y + block.mlp(block.layer_norm2(y)), bias)

    def _attention_row(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        q, k, _ = self._qkv(self._blocks()[-1], x)
        b, t, w = k.shape
        d = w // self._heads
        qh, kh = q.view(b, 1, self._heads, d).transpose(1, 2), k.view(b, t, self._heads, d).transpose(1, 2)
        return cls_attention_row(qh, kh, self.num_prefix)

    def _head(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return self.model.visual_projection(self.model.vision_model.post_layernorm(x[:, 0]))


@register_hf("metaclip_2")
class HFMetaClip2Backbone(HFClipBackbone):
    """MetaCLIP 2: CLIP's architecture trained on worldwide data, with a multilingual tokenizer."""

    model_class = "MetaClip2Model"
    family = "MetaCLIP 2"


@register_hf("altclip")
class HFAltClipBackbone(HFClipBackbone):
    """AltCLIP: CLIP's vision tower with an XLM-R text tower (projected from its first token)."""

    model_class = "AltCLIPModel"
    family = "AltCLIP"

    def _context_length(self) -> int:
        # RoBERTa numbers positions from padding_idx + 1, so two of its position embeddings are never used
        text = self.model.config.text_config
        return int(text.max_position_embeddings) - int(text.pad_token_id or 0) - 1


def load_hf_clip(source: str, device: torch.device, dtype: torch.dtype, cache_dir: str | None = None) -> HFBackbone:
    """The ``hf:`` loader under its first name (it served CLIP only); any supported family loads."""
    from .hf_load import load_hf

    return load_hf(source, device, dtype, cache_dir)
