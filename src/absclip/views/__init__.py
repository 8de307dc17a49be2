"""Views of an image: crop plans, samplers, batched raw crops and feature-space windows."""

from .extract import ViewConfig, ViewExtractor, ViewSet
from .plans import CropPlan, read_plans, write_plans
from .samplers import AbsSamplerConfig, RandomCropConfig

__all__ = [
    "AbsSamplerConfig",
    "CropPlan",
    "RandomCropConfig",
    "ViewConfig",
    "ViewExtractor",
    "ViewSet",
    "read_plans",
    "write_plans",
]
