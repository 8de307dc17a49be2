"""How a model wants its pixels: the preprocessing every view and saliency source reproduces."""

from __future__ import annotations

from dataclasses import dataclass

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class PreprocessSpec:
    """How the backbone expects pixels: resize the shortest side to ``resize`` (``interpolation``,
    ``resize_mode="shortest"``) or squash to ``resize``×``resize`` (``resize_mode="squash"``), centre-crop
    ``size``×``size``, scale to [0, 1] and normalise. ``resize`` None means ``size`` (open_clip's way: the
    crop only trims the long side); processors such as ALIGN's (346 → 289) or ImageNet-style 256 → 224 resize
    larger than they crop."""

    size: int
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    resize: int | None = None

    def __post_init__(self) -> None:
        if self.resize is not None and self.resize < self.size:
            raise ValueError(f"resize {self.resize} is smaller than the {self.size}-pixel centre crop")

    @property
    def resize_side(self) -> int:
        """The side the image is resized to before the centre crop."""
        return self.size if self.resize is None else self.resize
