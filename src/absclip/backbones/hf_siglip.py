"""transformers SigLIP and SigLIP2 towers: no CLS token, an attention-pool head.

There is no prefix (``num_prefix`` 0): the token map is the patch grid alone. The embedding is the
attention-pool head's latent query reading *every* token of the last block's output, so the CLS-only
shortcut of :mod:`.base` does not apply: the zoomed map runs through the whole last block, then
``post_layernorm`` and the head (the base class's default ``_finish``). ``--saliency clip`` uses that latent
query's attention over the grid. SigLIP2 (NaFlex) takes patchified pixels with their grid shape; absclip
feeds a square grid at the processor's patch budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import UnsupportedError
from ..pixels.spec import PreprocessSpec
from .hf_base import HFBackbone, register_hf

SIGLIP_MEAN = (0.5, 0.5, 0.5)


@register_hf("siglip")
class HFSiglipBackbone(HFBackbone):
    model_class = "SiglipModel"
    family = "SigLIP"
    num_prefix = 0
    pad_to_max_length = True

    @classmethod
    def default_spec(cls, config: object) -> PreprocessSpec:
        size = int(config.vision_config.image_size)  # type: ignore[attr-defined]
        return PreprocessSpec(size=size, mean=SIGLIP_MEAN, std=SIGLIP_MEAN, interpolation="bicubic",
                              resize_mode="squash")

    def _setup_vision(self) -> None:
        vision = self.model.config.vision_config
        if not getattr(vision, "vision_use_head", True):
            raise UnsupportedError(f"{self.name}: this {self.family} vision tower has no attention-pool head, so it "
                                   "has no image embedding to compare with text; use a dual-encoder checkpoint")
        self._patch = int(vision.patch_size)
        self._grid = self._grid_side()
        self._heads = int(vision.num_attention_heads)

    def _grid_side(self) -> int:
        return int(self.model.config.vision_config.image_size) // self._patch

    def _blocks(self) -> Sequence[nn.Module]:
        return self.model.vision_model.encoder.layers

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.vision_model.embeddings(pixels)

    def _run_block(self, index: int, x: torch.Tensor, grid: tuple[int, int],
                   bias: torch.Tensor | None) -> torch.Tensor:
        block = self._blocks()[index]
        if bias is None:
            return block(x, None)
        t = x.shape[1]
        return block(x, bias[:, None, None, :].expand(-1, 1, t, t))

    def _pool_attention(self, x: torch.Tensor, bias: torch.Tensor | None,
                        weights: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The head's latent query over the last block's output ``x`` [B, T, W]: (attended [B, 1, W], the
        attention [B, 1, T] mean over heads if ``weights``)."""
        vision = self.model.vision_model
        head = vision.head
        h = vision.post_layernorm(x)
        probe = head.probe.repeat(len(x), 1, 1)  # [B, 1, W]
        # nn.MultiheadAttention takes a per-sequence additive mask as [B * heads, 1, T], batch-major
        mask = None if bias is None else bias[:, None, :].repeat_interleave(self._heads, dim=0)
        return head.attention(probe, h, h, attn_mask=mask, need_weights=weights, average_attn_weights=True)

    def _head(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """post_layernorm, the attention pool (with the bias on its keys) and its MLP: SigLIP's pooler output."""
        head = self.model.vision_model.head
        y, _ = self._pool_attention(x, bias, weights=False)
        y = y + head.mlp(head.layernorm(y))
        return y[:, 0]

    def _attention_row(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """The latent query's attention over the grid after the last block, mean over heads: [B, H·W]."""
        y = self._run_block(self.num_blocks - 1, x, grid, None)
        _, attn = self._pool_attention(y, None, weights=True)
        assert attn is not None
        return attn[:, 0].float()


@register_hf("siglip2")
class HFSiglip2Backbone(HFSiglipBackbone):
    """SigLIP2 NaFlex: a linear patch embedding of flattened patches, position embeddings resized to the grid."""

    model_class = "Siglip2Model"
    family = "SigLIP2"

    @classmethod
    def default_spec(cls, config: object) -> PreprocessSpec:
        vision = config.vision_config  # type: ignore[attr-defined]
        size = int(vision.patch_size) * math.isqrt(int(vision.num_patches))
        return PreprocessSpec(size=size, mean=SIGLIP_MEAN, std=SIGLIP_MEAN, interpolation="bilinear",
                              resize_mode="squash")

    def _grid_side(self) -> int:
        return self.preprocess.size // self._patch

    def patchify(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, S, S] -> (patches [B, G², p·p·3] in the processor's order, spatial shapes [B, 2])."""
        b, c, s, _ = pixels.shape
        p, g = self._patch, s // self._patch
        patches = pixels.reshape(b, c, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(b, g * g, p * p * c)
        shapes = torch.tensor([[g, g]], dtype=torch.long, device=pixels.device).expand(b, 2)
        return patches, shapes

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        patches, shapes = self.patchify(pixels)
        return self.model.vision_model.embeddings(patches, shapes)
