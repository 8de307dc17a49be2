"""The VLM's own last-layer CLS self-attention (a weaker guide than DINO; Table 6 of the ABS paper)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..backbones import Backbone
from ..views.geometry import crop_extents
from ..views.resample import preprocess_images
from .base import Saliency, SaliencySource, cls_attention_row


class ClipSelfAttention(SaliencySource):
    def __init__(self, backbone: Backbone) -> None:
        if not backbone.is_vit:
            raise ValueError(f"{backbone.name} is not a ViT: it has no CLS attention to use as saliency")
        self.backbone = backbone
        self.name = "clip"

    @torch.inference_mode()
    def __call__(self, images: Sequence[torch.Tensor]) -> Saliency:
        bb = self.backbone
        pixels = preprocess_images(images, bb.preprocess)
        last = bb.num_blocks - 1
        tokens = bb.tokens_before_block(pixels, last)
        q, k = bb.cls_attention_qk(bb._blocks()[last], tokens)
        grid = bb.grid_size
        assert grid is not None
        maps = cls_attention_row(q, k, 1).view(len(images), grid, grid)
        sizes = [(im.shape[2], im.shape[1]) for im in images]
        return Saliency(maps.float().cpu(), crop_extents(sizes, bb.preprocess))
