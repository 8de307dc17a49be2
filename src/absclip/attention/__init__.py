"""Saliency sources behind one registry: ``dino`` (v1), ``dinov2``, ``clip`` (the VLM's own
attention) and ``uniform``. Spec: ``name`` or ``name:hub-id-or-directory``."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..backbones import Backbone
from ..registry import Registry
from .base import Saliency, SaliencySource, whole_image_extents

SALIENCY: Registry[SaliencySource] = Registry("saliency source")


class UniformSaliency(SaliencySource):
    """Every cell equally likely: ABS sampling becomes random sampling (the paper's random-crop row)."""

    name = "uniform"

    def __init__(self, grid: int = 14) -> None:
        self.grid = grid

    def __call__(self, images: Sequence[torch.Tensor]) -> Saliency:
        maps = torch.ones(len(images), self.grid, self.grid)
        return Saliency(maps, whole_image_extents(images), informative=False)


@SALIENCY.register("uniform")
def _uniform(location: str | None, backbone: Backbone, device: torch.device, **_: object) -> SaliencySource:
    return UniformSaliency(int(location) if location else 14)


@SALIENCY.register("dino")
def _dino(location: str | None, backbone: Backbone, device: torch.device, cache_dir: str | None = None,
          **_: object) -> SaliencySource:
    from .dino import load_hf_vit_saliency

    return load_hf_vit_saliency(location or "facebook/dino-vitb16", device, cache_dir=cache_dir)


@SALIENCY.register("dinov2")
def _dinov2(location: str | None, backbone: Backbone, device: torch.device, cache_dir: str | None = None,
            **_: object) -> SaliencySource:
    from .dino import load_hf_vit_saliency

    return load_hf_vit_saliency(location or "facebook/dinov2-with-registers-base", device, cache_dir=cache_dir)


@SALIENCY.register("clip")
def _clip(location: str | None, backbone: Backbone, device: torch.device, **_: object) -> SaliencySource:
    from .clip import ClipSelfAttention

    return ClipSelfAttention(backbone)


def create_saliency(spec: str, backbone: Backbone, cache_dir: str | None = None) -> SaliencySource:
    """``dino``, ``dino:facebook/dino-vits16``, ``dino:/local/dir``, ``dinov2[:...]``, ``clip``, ``uniform``."""
    name, _, location = spec.partition(":")
    return SALIENCY.create(name, location=location or None, backbone=backbone, device=backbone.device,
                           cache_dir=cache_dir)


__all__ = ["SALIENCY", "Saliency", "SaliencySource", "UniformSaliency", "create_saliency"]
