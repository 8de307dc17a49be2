"""transformers GroupViT: patch tokens are grouped into segments by learned group tokens, stage by stage.

Only the first stage still holds the spatial patch grid (every later stage sees group segments, which have
no place on the image), so the token map is the input of a layer of that stage: prefix = the stage's
group tokens, grid = the patch tokens. For the tiny two-stage GroupViTs this is the input of the last
grouping stage; for GroupViT-base (two grouping stages) it is the first, the only one whose input can be
zoomed. Finishing runs the stage's remaining layers, its grouping block (group tokens assign the patches to
segments), the later stages, GroupViT's layer norm, the mean over segments and ``visual_projection``.

GroupViT keeps its group tokens *after* the patches; the token map keeps them first. Self-attention and
MLPs treat every token alike, so running a layer on the reordered sequence is exact; the order is restored
before grouping. There is no CLS token: no attention row for ``--saliency clip``. ``attn_bias`` is added in
the layers' self-attention; the grouping block's hard assignment is not a softmax over keys and takes none.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .hf_base import HFBackbone, register_hf


@register_hf("groupvit")
class HFGroupViTBackbone(HFBackbone):
    model_class = "GroupViTModel"
    family = "GroupViT"

    @property
    def saliency_reason(self) -> str | None:  # type: ignore[override]
        return self._unsupported("has no CLS token, so no CLS attention to use as saliency", "--saliency dino")

    def _setup_vision(self) -> None:
        vision = self.model.config.vision_config
        self._grid = int(vision.image_size) // int(vision.patch_size)
        stage = self._stage()
        self.num_prefix = int(stage.num_group_token) if stage.with_group_token else 0

    def _stage(self) -> nn.Module:
        """The stage whose layers see the patch grid (the first)."""
        return self.model.vision_model.encoder.stages[0]

    def _blocks(self) -> Sequence[nn.Module]:
        return self._stage().layers

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """[group tokens; patch tokens] entering the first layer (a first stage has no previous groups)."""
        patches = self.model.vision_model.embeddings(pixels)  # [B, G², C]
        stage = self._stage()
        if not stage.with_group_token:
            return patches
        groups = stage.group_token.expand(len(patches), -1, -1)
        return torch.cat([groups, patches], dim=1)

    def _run_block(self, index: int, x: torch.Tensor, grid: tuple[int, int],
                   bias: torch.Tensor | None) -> torch.Tensor:
        layer = self._blocks()[index]
        if bias is None:
            return layer(x, attention_mask=None)
        t = x.shape[1]
        return layer(x, attention_mask=bias[:, None, None, :].expand(-1, 1, t, t))

    def _head(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The first stage's grouping, the later stages, layer norm, mean over segments, projection: [B, D]."""
        stage = self._stage()
        p = self.num_prefix
        groups, patches = (x[:, :p], x[:, p:]) if p else (None, x)
        hidden = patches
        if stage.downsample is not None:
            hidden, _ = stage.downsample(patches, groups)
        for later in self.model.vision_model.encoder.stages[1:]:
            hidden, groups = later(hidden, groups)[:2]
        pooled = self.model.vision_model.layernorm(hidden).mean(dim=1)
        return self.model.visual_projection(pooled)
