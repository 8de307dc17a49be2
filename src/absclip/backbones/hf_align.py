"""transformers ALIGN: an EfficientNet image tower (no attention, no CLS token, no image projection).

The token map is the EfficientNet feature map entering its trailing stride-1 stages (for ALIGN-base the
last stage, 7×7 at 289 px), channel-last, with no prefix. Only stages whose input already has the final
resolution can be split points: before a downsampling stage the grid would be another size than the one the
crop geometry maps boxes onto. Finishing runs the remaining stages, then ALIGN's own global pooling (its
pooler output is the image embedding). There is no attention anywhere: no CLS attention for
``--saliency clip`` and no attention logits for ``--feature-augment highlight-attn`` to bias.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import UnsupportedError
from ..pixels.spec import PreprocessSpec
from .hf_base import HFBackbone, register_hf


@register_hf("align")
class HFAlignBackbone(HFBackbone):
    model_class = "AlignModel"
    family = "ALIGN"
    num_prefix = 0

    @property
    def saliency_reason(self) -> str | None:  # type: ignore[override]
        return self._unsupported("is a CNN (EfficientNet) with no CLS attention to use as saliency",
                                 "--saliency dino")

    @property
    def attention_bias_reason(self) -> str | None:  # type: ignore[override]
        return self._unsupported("has no attention logits to bias (an EfficientNet)",
                                 "--feature-augment crop, mask or highlight-fea")

    @property
    def logit_scale(self) -> float:
        """ALIGN divides cosines by a learned temperature."""
        return 1.0 / float(self.model.temperature.detach().float().flatten()[0])

    @classmethod
    def default_spec(cls, config: object) -> PreprocessSpec:
        # EfficientNetImageProcessor's defaults: squash, ImageNet mean/std (the processor saved next to the
        # weights, when there is one, says otherwise)
        size = int(config.vision_config.image_size)  # type: ignore[attr-defined]
        return PreprocessSpec(size=size, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                              interpolation="bicubic", resize_mode="squash")

    def _setup_vision(self) -> None:
        cfg = self.model.config.vision_config
        repeats = [math.ceil(cfg.depth_coefficient * n) for n in cfg.num_block_repeats]
        blocks = list(self.model.vision_model.encoder.blocks)
        stages, start = [], 0
        for n in repeats:
            stages.append(nn.ModuleList(blocks[start : start + n]))
            start += n
        split = len(stages)
        while split > 0 and int(cfg.strides[split - 1]) == 1:
            split -= 1
        self._stem_stages, self._stages = stages[:split], stages[split:]
        self._grid: int | None = None
        if self._stages:
            size = self.preprocess.size
            with torch.inference_mode():
                probe = self._embed(torch.zeros(1, 3, size, size, device=self.device, dtype=self.dtype))
            self._grid = math.isqrt(probe.shape[1])

    def _no_token_map(self) -> str:
        return self._unsupported("has no stride-1 final stage to split its feature map at",
                                 "--no-feature (raw crops only)")

    def _blocks(self) -> Sequence[nn.Module]:
        if not self._stages:
            return super()._blocks()
        return self._stages

    @staticmethod
    def _to_sequence(fmap: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, H·W, C], row-major (the token map's own order)."""
        return fmap.flatten(2).transpose(1, 2)

    @staticmethod
    def _to_map(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        b, _, c = x.shape
        return x.transpose(1, 2).reshape(b, c, grid[0], grid[1])

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        fmap = self.model.vision_model.embeddings(pixels)
        for stage in self._stem_stages:
            for block in stage:
                fmap = block(fmap)
        return self._to_sequence(fmap)

    def _no_bias(self, bias: torch.Tensor | None) -> None:
        if bias is not None:
            raise UnsupportedError(self.attention_bias_reason or "")

    def _run_block(self, index: int, x: torch.Tensor, grid: tuple[int, int],
                   bias: torch.Tensor | None) -> torch.Tensor:
        self._no_bias(bias)
        fmap = self._to_map(x, grid)
        for block in self._stages[index]:
            fmap = block(fmap)
        return self._to_sequence(fmap)

    def _head(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """ALIGN's pooler (global average or max pooling) over the final map: the image embedding [B, C]."""
        self._no_bias(bias)
        side = math.isqrt(x.shape[1])
        pooled = self.model.vision_model.pooler(self._to_map(x, (side, side)))
        return pooled.reshape(pooled.shape[:2])

    def _finish(self, x: torch.Tensor, grid: tuple[int, int], bias: torch.Tensor | None) -> torch.Tensor:
        self._no_bias(bias)
        y = self._run_block(self.num_blocks - 1, x, grid, None)
        return self._head(y, None)

    def _encode_whole(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_features(pixel_values=pixels).pooler_output
