"""Saliency maps that guide where ABS crops: one batched pass per batch of images."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..backbones import Backbone
from ..registry import Registry


@dataclass
class Saliency:
    """maps [B, gh, gw] (non-negative, larger = more salient); extents [B, 4] float: the region
    (x0, y0, x1, y1) of each original image, in pixels, that the grid covers. ``informative`` is False
    for the uniform source, whose top-k must then span every cell (random sampling)."""

    maps: torch.Tensor
    extents: torch.Tensor
    informative: bool = True


class SaliencySource(ABC):
    name: str

    @abstractmethod
    def __call__(self, images: Sequence[torch.Tensor]) -> Saliency:
        """``images``: uint8 [3, H, W] tensors of any sizes."""


SaliencyFactory = Callable[[str | None, Backbone], SaliencySource]
"""``(location or None, the VLM) -> source``; ``location`` is what follows ``name:`` in a spec."""

SALIENCY: Registry[SaliencySource] = Registry("saliency source")
"""Each source module registers its factory here: ``@SALIENCY.register("name")``."""


def whole_image_extents(images: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.tensor([[0.0, 0.0, float(im.shape[2]), float(im.shape[1])] for im in images])
