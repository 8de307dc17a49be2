"""What views a method scores, as validated data: a bad value is one error when the config is built,
before any model loads."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from ..errors import ConfigError
from .augment import FEATURE_AUGMENTS, RAW_AUGMENTS
from .resized import ResizedCropConfig  # ZERO / AWT: registers the 'resize-flip' raw augmentation
from .samplers import AbsSamplerConfig, RandomCropConfig, choice


class CropKind(str, Enum):
    """Where crops come from: attention-guided (ABS), uniformly random (WCA, MCE), or random resized
    crops (ZERO, AWT; views/resized.py)."""

    ABS = "abs"
    RANDOM = "random"
    RESIZED = "resized"


@dataclass(frozen=True)
class ViewConfig:
    """The views of one extraction. ``crops=None`` is the full image only.

    ``saliency`` is the saliency-source spec (``absclip.attention``) and only means something for ABS
    crops; for other views it is None, so configs that give equal views compare equal.
    """

    crops: CropKind | None = None
    raw: bool = True  # encode the crops as new images (raw space)
    feature: bool = False  # zoomed windows of the full image's token map (feature space)
    feature_layer: int = -1  # block the windows enter; -1 = the last block
    raw_augment: str = "crop"  # how a box becomes a raw view (views/augment.py)
    feature_augment: str = "crop"  # how a window becomes a feature view
    abs: AbsSamplerConfig = field(default_factory=AbsSamplerConfig)
    random: RandomCropConfig = field(default_factory=RandomCropConfig)
    resized: ResizedCropConfig = field(default_factory=ResizedCropConfig)  # ZERO / AWT (views/resized.py)
    seed: int = 0
    micro_batch: int | None = None  # crops per encoder call; None: default_micro_batch(device)
    saliency: str | None = "dino"

    def __post_init__(self) -> None:
        if self.crops is not None:
            object.__setattr__(self, "crops", choice(CropKind, self.crops, "crops"))
        if self.crops is not CropKind.ABS:
            object.__setattr__(self, "saliency", None)
        elif not self.saliency:
            raise ConfigError("attention-guided crops need a saliency source, e.g. saliency='dino'")
        for name, registry in (("raw_augment", RAW_AUGMENTS), ("feature_augment", FEATURE_AUGMENTS)):
            value = getattr(self, name)
            if value not in registry:
                raise ConfigError(f"{name} must be one of {', '.join(registry.names())}, got {value!r}")
        if self.micro_batch is not None and self.micro_batch < 1:
            raise ConfigError(f"micro_batch must be positive, got {self.micro_batch}")
        if self.crops is CropKind.RESIZED and self.feature:  # ZERO / AWT views are raw-space only
            raise ConfigError("random resized crops have no feature-space windows: use feature=False")

    @property
    def has_crops(self) -> bool:
        return self.crops is not None

    @property
    def uses_saliency(self) -> bool:
        return self.crops is CropKind.ABS
