"""Saliency maps that guide where ABS crops: one batched pass per batch of images."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch


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


def cls_attention_row(q: torch.Tensor, k: torch.Tensor, skip: int) -> torch.Tensor:
    """Mean over heads of the CLS query's softmax attention, without the first ``skip`` tokens.

    q [B, h, 1, d], k [B, h, T, d] -> [B, T - skip]."""
    scale = q.shape[-1] ** -0.5
    attn = torch.softmax((q @ k.transpose(-1, -2)).float() * scale, dim=-1)  # [B, h, 1, T]
    return attn.mean(dim=1)[:, 0, skip:]


def whole_image_extents(images: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.tensor([[0.0, 0.0, float(im.shape[2]), float(im.shape[1])] for im in images])
