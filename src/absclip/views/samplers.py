"""Crop samplers (DESIGN.md §2). All randomness comes from a CPU generator seeded per image from
(seed, image key), so a plan does not depend on the device, the batch or the other images.

Draw order for ABS: N centre cells, N widths, N heights; then, in independent pairing, N more cells
and N window sides. Random crops: K sides, K x offsets, K y offsets.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from enum import Enum

import torch

from ..errors import ConfigError
from ..pixels.geometry import box_to_window
from ..pixels.spec import PreprocessSpec
from .plans import CropPlan


class Pairing(str, Enum):
    """How feature windows relate to raw boxes: each box mapped onto the token grid (``paired``), or the
    reference code's separately drawn square windows (``independent``)."""

    PAIRED = "paired"
    INDEPENDENT = "independent"


def choice(enum: type[Enum], value: object, what: str) -> Enum:
    """``value`` as a member of ``enum``, or a :class:`ConfigError` that lists the choices."""
    try:
        return enum(value)
    except ValueError:
        names = ", ".join(repr(m.value) for m in enum)
        raise ConfigError(f"{what} must be one of {names}, got {value!r}") from None


@dataclass(frozen=True)
class AbsSamplerConfig:
    crops: int = 50
    top_k: int = 20
    temperature: float = 0.03
    ratio: tuple[float, float] = (0.6, 0.9)
    pairing: Pairing = Pairing.PAIRED

    def __post_init__(self) -> None:
        object.__setattr__(self, "pairing", choice(Pairing, self.pairing, "pairing"))
        object.__setattr__(self, "ratio", tuple(self.ratio))
        if self.crops < 1:
            raise ConfigError(f"ABS needs at least one crop per image, got crops={self.crops}")
        if not self.temperature > 0:
            raise ConfigError(f"the crop-centre temperature must be positive, got {self.temperature}")
        lo, hi = self.ratio
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"the crop ratio needs 0 < r1 <= r2 <= 1, got {self.ratio}")


@dataclass(frozen=True)
class RandomCropConfig:
    crops: int = 60
    alpha: float = 0.1  # smallest side as a fraction of min(W, H); WCA's published runs used 0.1
    max_fraction: float = 0.9

    def __post_init__(self) -> None:
        if self.crops < 1:
            raise ConfigError(f"random crops need at least one crop per image, got crops={self.crops}")
        if not 0 < self.alpha <= self.max_fraction <= 1:
            raise ConfigError(f"random crop sides need 0 < alpha <= {self.max_fraction}, got alpha={self.alpha}")


def image_generator(seed: int, key: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def _randint_inclusive(lo: int, hi: int, n: int, gen: torch.Generator) -> torch.Tensor:
    hi = max(hi, lo)
    return torch.randint(lo, hi + 1, (n,), generator=gen)


def draw_cells(saliency: torch.Tensor, n: int, top_k: int, temperature: float, informative: bool,
               gen: torch.Generator) -> torch.Tensor:
    """Flat cell indices: keep the top-k cells, π = softmax(A_topk / temperature), N draws with replacement."""
    flat = saliency.flatten().double()
    k = flat.numel() if (not informative or top_k <= 0) else min(top_k, flat.numel())
    values, index = flat.topk(k)
    probs = torch.softmax(values / temperature, dim=0)
    return index[torch.multinomial(probs, n, replacement=True, generator=gen)]


def sample_abs_plan(
    saliency: torch.Tensor, extent: torch.Tensor, width: int, height: int, spec: PreprocessSpec,
    grid: int | None, cfg: AbsSamplerConfig, seed: int, key: str, informative: bool = True,
) -> CropPlan:
    """Attention-guided raw boxes and their feature windows for one image. saliency [gh, gw]; extent
    (x0, y0, x1, y1) of the image covered by the saliency grid."""
    gen = image_generator(seed, key)
    boxes, centres = abs_boxes(saliency, extent, width, height, cfg, informative, gen)
    windows: list[list[int]] = []
    if grid is not None:
        if cfg.pairing is Pairing.PAIRED:
            windows = [box_to_window(b, width, height, spec, grid) for b in boxes]
        else:
            windows = independent_windows(saliency, grid, cfg, informative, gen)
    return CropPlan(key, width, height, grid, seed, "abs", boxes, windows, centres=centres.tolist())


def abs_boxes(saliency: torch.Tensor, extent: torch.Tensor, width: int, height: int, cfg: AbsSamplerConfig,
              informative: bool, gen: torch.Generator) -> tuple[list[list[int]], torch.Tensor]:
    """The raw boxes (clipped to the image) and the sampled centres [N, 2] (x, y) they were drawn around."""
    gh, gw = saliency.shape
    n = cfg.crops
    cells = draw_cells(saliency, n, cfg.top_k, cfg.temperature, informative, gen)
    ex0, ey0, ex1, ey1 = (float(v) for v in extent)
    cx = ex0 + ((cells % gw).double() + 0.5) * (ex1 - ex0) / gw
    cy = ey0 + ((cells // gw).double() + 0.5) * (ey1 - ey0) / gh
    r1, r2 = cfg.ratio
    bw = _randint_inclusive(max(1, math.floor(r1 * width)), max(1, math.floor(r2 * width)), n, gen)
    bh = _randint_inclusive(max(1, math.floor(r1 * height)), max(1, math.floor(r2 * height)), n, gen)
    left, top = torch.floor(cx - bw / 2).long(), torch.floor(cy - bh / 2).long()  # before clipping
    x0, y0 = left.clamp(0, width - 1), top.clamp(0, height - 1)
    x1 = torch.maximum((left + bw).clamp(1, width), x0 + 1)
    y1 = torch.maximum((top + bh).clamp(1, height), y0 + 1)
    return torch.stack([x0, y0, x1, y1], dim=1).tolist(), torch.stack([cx, cy], dim=1)


def independent_windows(saliency: torch.Tensor, grid: int, cfg: AbsSamplerConfig, informative: bool,
                        gen: torch.Generator) -> list[list[int]]:
    """The reference code's feature windows: new centres from the same π (always top-20), square side
    s ~ U_int[⌊r1·G⌋, ⌊r2·G⌋], rows/cols [c - ⌊s/2⌋, c + ⌊s/2⌋ + 1) clipped at the border."""
    gh, gw = saliency.shape
    n = cfg.crops
    cells = draw_cells(saliency, n, 20, cfg.temperature, informative, gen)
    rows = (((cells // gw).double() + 0.5) * grid / gh).floor().long()
    cols = (((cells % gw).double() + 0.5) * grid / gw).floor().long()
    r1, r2 = cfg.ratio
    half = _randint_inclusive(max(1, math.floor(r1 * grid)), max(1, math.floor(r2 * grid)), n, gen) // 2
    out = torch.stack([(rows - half).clamp(min=0), (cols - half).clamp(min=0),
                       (rows + half + 1).clamp(max=grid), (cols + half + 1).clamp(max=grid)], dim=1)
    return out.tolist()


def sample_random_plan(width: int, height: int, spec: PreprocessSpec, grid: int | None, cfg: RandomCropConfig,
                       seed: int, key: str) -> CropPlan:
    """WCA / MCE random square crops: side s ~ U(α, max_fraction)·min(W, H), position uniform."""
    gen = image_generator(seed, key)
    k = cfg.crops
    short = min(width, height)
    frac = cfg.alpha + (cfg.max_fraction - cfg.alpha) * torch.rand(k, generator=gen, dtype=torch.float64)
    side = (frac * short).long().clamp(min=1)
    x0 = (torch.rand(k, generator=gen, dtype=torch.float64) * (width - side + 1)).long()
    y0 = (torch.rand(k, generator=gen, dtype=torch.float64) * (height - side + 1)).long()
    boxes = torch.stack([x0, y0, x0 + side, y0 + side], dim=1).tolist()
    windows = [box_to_window(b, width, height, spec, grid) for b in boxes] if grid is not None else []
    return CropPlan(key, width, height, grid, seed, "random", boxes, windows)
