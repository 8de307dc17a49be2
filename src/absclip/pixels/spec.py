"""How a model wants its pixels: the preprocessing every view and saliency source reproduces."""

from __future__ import annotations

from dataclasses import dataclass

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class PreprocessSpec:
    """How the backbone expects pixels: resize the shortest side to ``size`` (``interpolation``),
    centre-crop ``size``×``size`` (``resize_mode="shortest"``) or squash to ``size``×``size``
    (``resize_mode="squash"``), scale to [0, 1] and normalise."""

    size: int
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
