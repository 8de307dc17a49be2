"""The views ZERO and AWT score: the original image first, then augmented views of it.

``views_kind`` picks the augmented views, as the ``X`` / ``X+mce`` / ``X+abs`` variants of the
adaptive methods do:

- ``resized`` (the papers'): random resized crops with horizontal flips (views/resized.py), as many
  as the method's view count minus one; a count of 1 is the original image alone;
- ``mce``: MCE's K random square crops (``random_crops``);
- ``abs``: ABS's attention-guided raw + feature crops (``abs_sampler`` and the ABS switches).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import torch

from ..errors import ConfigError
from ..scoring import soft_match_scores
from ..text import RaggedEmbeddings
from ..views import CropKind, ViewConfig, ViewSet
from ..views.resized import ResizedCropConfig
from .abs import AbsMethod
from .base import Method

VIEW_KINDS = ("resized", "mce", "abs")


class AugmentedViewsMethod(Method):
    """A method over [original, augmented ...] views of each image."""

    views_kind: ClassVar[str] = "resized"

    @abstractmethod
    def view_count(self) -> int:
        """Views per image for the ``resized`` kind, the original included."""

    def view_config(self) -> ViewConfig:
        o = self.options
        if self.views_kind not in VIEW_KINDS:
            raise ConfigError(f"{self.name}: views_kind must be one of {', '.join(VIEW_KINDS)}, "
                              f"got {self.views_kind!r}")
        if self.views_kind == "mce":
            return self._random_crop_views()
        if self.views_kind == "abs":
            return AbsMethod.view_config(self)  # type: ignore[arg-type]  # it reads only self.options
        if self.view_count() == 1:
            return ViewConfig(seed=o.seed, micro_batch=o.micro_batch)
        return ViewConfig(crops=CropKind.RESIZED, raw=True, feature=False, raw_augment="resize-flip",
                          resized=ResizedCropConfig(crops=self.view_count() - 1), seed=o.seed,
                          micro_batch=o.micro_batch)


def stacked_views(views: ViewSet) -> torch.Tensor:
    """The original image, then every crop view: [B, V, D]."""
    crops = [v for v in (views.raw, views.feature) if v is not None]
    return torch.cat([views.full[:, None], *crops], dim=1)


def soft_match_view_logits(feats: torch.Tensor, ragged: RaggedEmbeddings, temperature: float,
                           chunk: int = 8) -> torch.Tensor:
    """MCE's soft-matching score of each view: feats [B, V, D] -> [B, V, C], in chunks of images."""
    emb, mask = ragged.embeddings.to(feats), ragged.mask.to(feats.device)
    return torch.cat([soft_match_scores(feats[i : i + chunk], emb, mask, temperature)
                      for i in range(0, len(feats), chunk)])
