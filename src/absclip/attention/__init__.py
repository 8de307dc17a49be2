"""Saliency sources behind one registry: ``dino`` (v1), ``dinov2``, ``clip`` (the VLM's own
attention) and ``uniform``. Spec: ``name`` or ``name:hub-id-or-directory``.

Adding a source = one module that registers its factory with ``@SALIENCY.register("name")``,
imported below so it registers.
"""

from __future__ import annotations

from ..backbones import Backbone
from . import clip, dino, uniform  # noqa: F401  (imported to register their sources)
from .base import SALIENCY, Saliency, SaliencySource, whole_image_extents
from .uniform import UniformSaliency


def create_saliency(spec: str, backbone: Backbone) -> SaliencySource:
    """``dino``, ``dino:facebook/dino-vits16``, ``dino:/local/dir``, ``dinov2[:...]``, ``clip``, ``uniform``."""
    name, _, location = spec.partition(":")
    return SALIENCY.get(name)(location or None, backbone)


class SaliencyPool:
    """Saliency sources by spec, created on first use, so a model is loaded once per process even when
    several extractors (evaluations, preset rows) use it."""

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone
        self._sources: dict[str, SaliencySource] = {}

    def get(self, spec: str) -> SaliencySource:
        if spec not in self._sources:
            self._sources[spec] = create_saliency(spec, self.backbone)
        return self._sources[spec]


__all__ = ["SALIENCY", "Saliency", "SaliencyPool", "SaliencySource", "UniformSaliency", "create_saliency",
           "whole_image_extents"]
