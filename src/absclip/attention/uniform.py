"""Every cell equally likely: ABS sampling becomes random sampling (the paper's random-crop row)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..backbones import Backbone
from .base import SALIENCY, Saliency, SaliencySource, whole_image_extents


class UniformSaliency(SaliencySource):
    name = "uniform"

    def __init__(self, grid: int = 14) -> None:
        self.grid = grid

    def __call__(self, images: Sequence[torch.Tensor]) -> Saliency:
        maps = torch.ones(len(images), self.grid, self.grid)
        return Saliency(maps, whole_image_extents(images), informative=False)


@SALIENCY.register("uniform")
def _uniform(location: str | None, backbone: Backbone) -> SaliencySource:
    return UniformSaliency(int(location) if location else 14)
