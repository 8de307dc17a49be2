"""The VLM's own attention as saliency (a weaker guide than DINO; Table 6 of the ABS paper): the last
block's CLS query, or for SigLIP / PE-Core the attention-pool query (``Backbone.cls_attention_map``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..backbones import Backbone
from ..errors import UnsupportedError
from ..pixels import crop_extents, preprocess_images
from .base import SALIENCY, Saliency, SaliencySource


class ClipSelfAttention(SaliencySource):
    name = "clip"

    def __init__(self, backbone: Backbone) -> None:
        reason = backbone.capabilities["clip saliency"]
        if reason is not None:
            raise UnsupportedError(reason)  # names the model and --saliency dino
        self.backbone = backbone

    @torch.inference_mode()
    def __call__(self, images: Sequence[torch.Tensor]) -> Saliency:
        bb = self.backbone
        maps = bb.cls_attention_map(preprocess_images(images, bb.preprocess))
        sizes = [(im.shape[2], im.shape[1]) for im in images]
        return Saliency(maps.cpu(), crop_extents(sizes, bb.preprocess))


@SALIENCY.register("clip")
def _clip(location: str | None, backbone: Backbone) -> SaliencySource:
    return ClipSelfAttention(backbone)
