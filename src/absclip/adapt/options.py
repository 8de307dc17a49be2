"""The few-shot and test-time settings as validated data (``MethodOptions.adapt``).

Defaults are the reference codes' values; where a reference tunes per dataset, the value here is its
ImageNet one and ``dataset_options`` of the method supplies the others (see the method modules).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError

ZERO_SHOT_TEXTS = ("prompt", "templates", "imagenet-7")
"""The zero-shot text of the full-image variants: ``prompt`` (``MethodOptions.template``), ``templates``
(the CLIP-E mean over ``MethodOptions.templates``) or ``imagenet-7`` (:data:`IMAGENET_7_TEMPLATES`)."""

IMAGENET_7_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)
"""The seven-template ImageNet ensemble that the Tip-Adapter, GDA and TDA reference codes all use
(selected by CLIP's authors from the 80; CoOp's ``imagenet_templates``)."""

GDA_ALPHA_GRID = (0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0)
"""GDA's ensemble weights, searched in this order as the reference does (the first best wins)."""

SUPPORT_SPLITS = ("train",)
"""Splits of the evaluated dataset a support set can be drawn from (``adapt.support_split``)."""

SPLIT_PREFIX = "split:"
"""``adapt.support`` of a support set drawn from a split of the evaluated dataset: ``split:train``. One
string names every support source, so the evaluator caches pools and draws by it whatever the source."""


@dataclass(frozen=True)
class AdaptOptions:
    """Settings of the few-shot (Tip-Adapter, GDA) and test-time (TDA) methods.

    Attributes:
        support: ImageFolder of labelled support images (few-shot methods), or ``split:train`` (set from
            ``support_split``); None: none given.
        support_split: draw the support set from this split of the evaluated dataset itself (``train``:
            its train split, for the datasets with one, ``absclip.data.train_split_datasets()``) instead
            of a folder; ``support`` then reads ``split:train`` (either field may be given, not both).
        shots: K support images drawn per class (with the evaluation seed).
        val_shots: GDA's α search: this many further images per class (at most ``shots``, CoOp's few-shot
            validation rule min(K, 4)) are drawn, disjoint from the shots, to choose α on.
        text: zero-shot text of the full-image variants (:data:`ZERO_SHOT_TEXTS`).
        zero_shot_scale: full-image zero-shot logits are ``scale · cos``; the references use 100.
        tip_alpha, tip_beta: Tip-Adapter's residual ratio α and sharpness β (paper: 1 and 5.5).
        gda_alpha: GDA's ensemble weight; None: searched over :data:`GDA_ALPHA_GRID` on the held-out
            support images (the reference searches on a validation split, on ImageNet its test set).
        tda_pos_capacity, tda_pos_alpha, tda_pos_beta: TDA's positive cache (per-class capacity, α, β).
        tda_neg_capacity, tda_neg_alpha, tda_neg_beta: TDA's negative cache.
        tda_neg_entropy: normalised-entropy band (lower, upper) that admits a sample to the negative cache.
        tda_neg_mask: probability band (lower, upper) of the classes a negative entry votes against.
        tda_confident_fraction: with several views per image, TDA keeps this fraction of the views with
            the lowest entropy (at least one), as the reference does with its augmented views.
    """

    support: str | None = None
    support_split: str | None = None
    shots: int = 16
    val_shots: int = 4
    text: str = "prompt"
    zero_shot_scale: float = 100.0
    tip_alpha: float = 1.0
    tip_beta: float = 5.5
    gda_alpha: float | None = None
    tda_pos_capacity: int = 3
    tda_pos_alpha: float = 2.0
    tda_pos_beta: float = 5.0
    tda_neg_capacity: int = 2
    tda_neg_alpha: float = 0.117
    tda_neg_beta: float = 1.0
    tda_neg_entropy: tuple[float, float] = (0.2, 0.5)
    tda_neg_mask: tuple[float, float] = (0.03, 1.0)
    tda_confident_fraction: float = 0.1

    def __post_init__(self) -> None:
        """Checked when built, so a bad value fails before any model loads."""
        for name in ("shots", "tda_pos_capacity", "tda_neg_capacity"):
            if not _count(getattr(self, name)) or getattr(self, name) < 1:
                raise ConfigError(f"adapt.{name} must be a whole number of at least 1, got {getattr(self, name)!r}")
        if not _count(self.val_shots) or self.val_shots < 0:
            raise ConfigError(f"adapt.val_shots must be 0 or more, got {self.val_shots!r}")
        if self.text not in ZERO_SHOT_TEXTS:
            raise ConfigError(f"adapt.text must be one of {', '.join(ZERO_SHOT_TEXTS)}, got {self.text!r}")
        for name in ("zero_shot_scale", "tip_beta", "tda_pos_beta", "tda_neg_beta"):
            if not _real(getattr(self, name)) or getattr(self, name) <= 0:
                raise ConfigError(f"adapt.{name} must be a positive number, got {getattr(self, name)!r}")
        for name in ("tip_alpha", "tda_pos_alpha", "tda_neg_alpha"):
            if not _real(getattr(self, name)) or getattr(self, name) < 0:
                raise ConfigError(f"adapt.{name} must be 0 or more, got {getattr(self, name)!r}")
        if self.gda_alpha is not None and (not _real(self.gda_alpha) or self.gda_alpha < 0):
            raise ConfigError(f"adapt.gda_alpha must be None (searched) or 0 or more, got {self.gda_alpha!r}")
        if not _real(self.tda_confident_fraction) or not 0 < self.tda_confident_fraction <= 1:
            raise ConfigError(f"adapt.tda_confident_fraction must be in (0, 1], got {self.tda_confident_fraction!r}")
        for name in ("tda_neg_entropy", "tda_neg_mask"):
            band = getattr(self, name)
            if not (isinstance(band, tuple) and len(band) == 2 and all(_real(v) for v in band) and band[0] <= band[1]):
                raise ConfigError(f"adapt.{name} must be a (lower, upper) pair with lower <= upper, got {band!r}")
        if self.support is not None and not isinstance(self.support, str):
            raise ConfigError(f"adapt.support must be a directory path, got {self.support!r}")
        self._normalise_split()

    def _normalise_split(self) -> None:
        """``support_split=train`` and ``support=split:train`` mean the same; both fields are set to agree."""
        split = self.support_split
        if split is None and self.support is not None and self.support.startswith(SPLIT_PREFIX):
            split = self.support[len(SPLIT_PREFIX):]
        if split is None:
            return
        if split not in SUPPORT_SPLITS:
            raise ConfigError(f"adapt.support_split must be one of {', '.join(SUPPORT_SPLITS)} (a split of the "
                              f"evaluated dataset) or None, got {split!r}")
        key = f"{SPLIT_PREFIX}{split}"
        if self.support is not None and self.support != key:
            raise ConfigError(f"adapt.support={self.support} and adapt.support_split={split} both name a support "
                              "set: give one (--support DIR or --support-split train)")
        object.__setattr__(self, "support", key)
        object.__setattr__(self, "support_split", split)

    @property
    def shots_for_validation(self) -> int:
        """Held-out images per class for GDA's α search: ``min(shots, val_shots)`` (CoOp's rule)."""
        return min(self.shots, self.val_shots)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
