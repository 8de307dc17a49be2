"""Training-free adaptation beyond zero-shot: few-shot support sets and caches, test-time streams.

- :mod:`.options`: :class:`AdaptOptions` (``MethodOptions.adapt``);
- :mod:`.support`: matching a support folder (or the evaluated dataset's train split) to the evaluated
  classes and the seeded K-shot draw;
- :mod:`.formulas`: Tip-Adapter's cache and GDA's classifier as pure functions;
- :mod:`.tda`: TDA's per-image observations, entropy-ordered caches and stream step;
- :mod:`.stream`: the seeded stream order.

The methods using them are in :mod:`absclip.methods` (``tip_adapter``, ``gda``, ``tda``); the evaluator
draws the support set, extracts its views through the view cache and feeds the stream.
"""

from .options import GDA_ALPHA_GRID, IMAGENET_7_TEMPLATES, SPLIT_PREFIX, SUPPORT_SPLITS, ZERO_SHOT_TEXTS, AdaptOptions
from .stream import stream_order, stream_record
from .support import (
    LabelledViews,
    SupportDraw,
    SupportPool,
    check_counts,
    draw_support,
    match_support,
    split_pool,
    support_record,
)

__all__ = [
    "GDA_ALPHA_GRID",
    "IMAGENET_7_TEMPLATES",
    "SPLIT_PREFIX",
    "SUPPORT_SPLITS",
    "ZERO_SHOT_TEXTS",
    "AdaptOptions",
    "LabelledViews",
    "SupportDraw",
    "SupportPool",
    "check_counts",
    "draw_support",
    "match_support",
    "split_pool",
    "stream_order",
    "stream_record",
    "support_record",
]
