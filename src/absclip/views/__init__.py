"""Views of an image: crop plans, samplers, batched raw crops and feature-space windows."""

from .config import CropKind, ViewConfig
from .extract import GroupedViews, PreparedViews, Sampling, ViewExtractor, ViewGroup, ViewSet, default_micro_batch
from .plans import CropPlan, read_plans, write_plans
from .samplers import AbsSamplerConfig, Pairing, RandomCropConfig

__all__ = [
    "AbsSamplerConfig",
    "CropKind",
    "CropPlan",
    "GroupedViews",
    "Pairing",
    "PreparedViews",
    "RandomCropConfig",
    "Sampling",
    "ViewConfig",
    "ViewExtractor",
    "ViewGroup",
    "ViewSet",
    "default_micro_batch",
    "read_plans",
    "write_plans",
]
