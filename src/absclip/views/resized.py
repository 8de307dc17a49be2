"""Random resized crops with horizontal flips: the test-time augmentation of TPT, ZERO and AWT.

Those methods give each test image torchvision's ``RandomResizedCrop(S)`` + ``RandomHorizontalFlip()``
views: a box of area ``U(scale) · W·H`` and aspect ratio ``exp(U(log ratio))`` (ten tries, then a centre
crop with the ratio clamped), cut from the original image, resized to S×S without keeping its aspect
(bilinear), and mirrored with probability 1/2. The original image itself (resize + centre crop) is the
extractor's full view, so N views are the full view plus N - 1 of these.

Two pieces, so that a plan file stays exact without a new plan field:

- :func:`sample_resized_plan` draws the boxes from the per-image generator (draw order: ten area
  fractions and ten log-ratios per box, then each box's x and y positions), vectorised over the boxes;
- the ``resize-flip`` raw augmentation squashes each box to S×S (bilinear, Pillow-exact through
  :func:`absclip.pixels.resample.crop_resize`) and mirrors the boxes :func:`flip_flags` picks: a
  Bernoulli(1/2) draw from a generator seeded by the boxes themselves, so the same plan always gives
  the same views (``--plans`` reproduces a run) and the flips are independent of the boxes' geometry.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..pixels.resample import crop_resize
from ..pixels.spec import PreprocessSpec
from .augment import RAW_AUGMENTS
from .plans import CropPlan
from .samplers import image_generator

ATTEMPTS = 10  # torchvision's RandomResizedCrop.get_params tries ten boxes before its centre-crop fallback
FLIP_PROBABILITY = 0.5  # RandomHorizontalFlip's default


@dataclass(frozen=True)
class ResizedCropConfig:
    """``crops`` boxes per image, torchvision's RandomResizedCrop defaults for area and aspect ratio."""

    crops: int = 63  # ZERO: 63 augmented views + the original = 64
    scale: tuple[float, float] = (0.08, 1.0)  # box area as a fraction of the image's
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # box width / height

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", tuple(self.scale))
        object.__setattr__(self, "ratio", tuple(self.ratio))
        if isinstance(self.crops, bool) or not isinstance(self.crops, int) or self.crops < 1:
            raise ConfigError(f"random resized crops need at least one crop per image, got crops={self.crops!r}")
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"the resized-crop area scale needs 0 < lo <= hi <= 1, got {self.scale}")
        rlo, rhi = self.ratio
        if not 0 < rlo <= rhi:
            raise ConfigError(f"the resized-crop aspect ratio needs 0 < lo <= hi, got {self.ratio}")


def boxes_from_draws(width: int, height: int, cfg: ResizedCropConfig, area_u: torch.Tensor,
                     ratio_u: torch.Tensor, position_u: torch.Tensor) -> torch.Tensor:
    """torchvision's ``RandomResizedCrop.get_params`` for N boxes at once, from uniform draws in [0, 1):
    area_u, ratio_u [N, ATTEMPTS], position_u [N, 2] (x, y). -> boxes [N, 4] (x0, y0, x1, y1) int64.

    Per box the first try whose rounded width and height fit the image wins; a box with no such try
    gets torchvision's fallback, the largest centred box with the ratio clamped to the range.
    """
    area = float(width * height)
    lo, hi = cfg.scale
    log_lo, log_hi = math.log(cfg.ratio[0]), math.log(cfg.ratio[1])
    target = area * (lo + (hi - lo) * area_u.double())  # [N, T]
    aspect = torch.exp(log_lo + (log_hi - log_lo) * ratio_u.double())
    w = torch.round(torch.sqrt(target * aspect))  # round half to even, as Python's round()
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)  # [N, T]
    first = torch.where(fits, torch.arange(fits.shape[1]), fits.shape[1]).min(dim=1).values  # [N]
    found = first < fits.shape[1]
    pick = first.clamp(max=fits.shape[1] - 1)[:, None]
    bw = torch.where(found, w.gather(1, pick)[:, 0], 0.0).long()
    bh = torch.where(found, h.gather(1, pick)[:, 0], 0.0).long()
    fw, fh = _fallback_size(width, height, cfg.ratio)
    bw = torch.where(found, bw, fw)
    bh = torch.where(found, bh, fh)
    # torch.randint(0, side - box + 1): uniform over the allowed offsets
    x0 = torch.where(found, (position_u[:, 0].double() * (width - bw + 1)).long(), (width - fw) // 2)
    y0 = torch.where(found, (position_u[:, 1].double() * (height - bh + 1)).long(), (height - fh) // 2)
    return torch.stack([x0, y0, x0 + bw, y0 + bh], dim=1)


def _fallback_size(width: int, height: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """torchvision's centre-crop fallback: the whole image, its ratio clamped into ``ratio``."""
    in_ratio = width / height
    if in_ratio < ratio[0]:
        return width, max(1, min(height, round(width / ratio[0])))
    if in_ratio > ratio[1]:
        return max(1, min(width, round(height * ratio[1]))), height
    return width, height


def sample_resized_plan(width: int, height: int, spec: PreprocessSpec, grid: int | None, cfg: ResizedCropConfig,
                        seed: int, key: str) -> CropPlan:
    """The random resized boxes of one image (raw space only: the plan has no feature windows)."""
    gen = image_generator(seed, key)
    n = cfg.crops
    area_u = torch.rand(n, ATTEMPTS, generator=gen, dtype=torch.float64)
    ratio_u = torch.rand(n, ATTEMPTS, generator=gen, dtype=torch.float64)
    position_u = torch.rand(n, 2, generator=gen, dtype=torch.float64)
    boxes = boxes_from_draws(width, height, cfg, area_u, ratio_u, position_u)
    return CropPlan(key, width, height, grid, seed, "resized", boxes.tolist(), [])


def flip_flags(boxes: torch.Tensor) -> torch.Tensor:
    """[N] booleans: which views are mirrored; Bernoulli(1/2) from a generator seeded by the boxes."""
    gen = image_generator(0, "flip:" + ",".join(str(v) for v in boxes.long().flatten().tolist()))
    return torch.rand(len(boxes), generator=gen, dtype=torch.float64) < FLIP_PROBABILITY


@RAW_AUGMENTS.register("resize-flip")
def raw_resize_flip(image: torch.Tensor, boxes: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """Each box squashed to S×S (bilinear, as torchvision's RandomResizedCrop), half of them mirrored.
    image [3, H, W], boxes [N, 4] -> normalised pixels [N, 3, S, S]."""
    squash = dataclasses.replace(spec, resize_mode="squash", interpolation="bilinear")
    pixels = crop_resize(image, boxes, squash)
    flips = flip_flags(boxes).to(pixels.device)
    return torch.where(flips[:, None, None, None], pixels.flip(-1), pixels)
