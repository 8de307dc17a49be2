"""How a sampled region becomes a view (ABS paper Table 5), as two small registries.

Raw space (a box on the original image -> preprocessed pixels [N, 3, S, S]):
``crop`` cuts and resizes the box (the method's default); ``mask`` keeps the full image and zeroes the
pixels outside the box; ``highlight`` brightens the box (×1.5); ``redcircle`` draws a red ellipse around
the box (Shtedritski et al.). The last three act on the full image's VLM input, so they keep its framing.

Feature space (a window on the token map's grid -> token maps (:class:`TokenMap`, [n] of them) and an
optional additive attention bias over keys [n, P + H·W] for the remaining blocks and an attention-pool
head): ``crop`` zooms the window to the full grid; ``mask`` zeroes the grid tokens outside it;
``highlight-fea`` scales its tokens (×1.5); ``highlight-attn`` adds log 2 to the attention logits of its
tokens. Prefix tokens (CLS, registers) are never changed, and get no bias.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..backbones.tokens import TokenMap
from ..pixels.geometry import resized_geometry
from ..pixels.resample import crop_resize, full_box
from ..pixels.spec import PreprocessSpec
from ..registry import Registry
from .features import zoom_windows

RawAugment = Callable[[torch.Tensor, torch.Tensor, PreprocessSpec], torch.Tensor]
FeatureAugment = Callable[[TokenMap, torch.Tensor, torch.Tensor], tuple[TokenMap, torch.Tensor | None]]

RAW_AUGMENTS: Registry[torch.Tensor] = Registry("raw-space augmentation")
FEATURE_AUGMENTS: Registry[tuple[TokenMap, torch.Tensor | None]] = Registry("feature-space augmentation")

HIGHLIGHT_GAIN = 1.5
ATTENTION_BONUS = math.log(2.0)
RED = (255.0, 0.0, 0.0)


def _normalise(pixels: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    mean = torch.tensor(spec.mean, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=pixels.device).view(1, 3, 1, 1)
    return (pixels / 255.0 - mean) / std


def box_masks(image: torch.Tensor, boxes: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """[N, 1, S, S] booleans: which pixels of the full image's VLM input lie inside each box."""
    height, width = image.shape[1:]
    sx, sy, ox, oy = resized_geometry(int(width), int(height), spec)
    # the geometry in float64 on the host (accelerators run float64 slowly or not at all); [N, S] each
    centres = torch.arange(spec.size, dtype=torch.float64) + 0.5
    b = boxes.to("cpu", torch.float64)
    inside_x = (centres[None] >= b[:, 0:1] * sx - ox) & (centres[None] < b[:, 2:3] * sx - ox)
    inside_y = (centres[None] >= b[:, 1:2] * sy - oy) & (centres[None] < b[:, 3:4] * sy - oy)
    inside_x, inside_y = inside_x.to(image.device), inside_y.to(image.device)
    return (inside_y[:, :, None] & inside_x[:, None, :])[:, None]


def ellipse_rings(image: torch.Tensor, boxes: torch.Tensor, spec: PreprocessSpec,
                  thickness: float = 2.0) -> torch.Tensor:
    """[N, 1, S, S] booleans: a ring ``thickness`` input pixels wide on the ellipse inscribed in each box."""
    height, width = image.shape[1:]
    sx, sy, ox, oy = resized_geometry(int(width), int(height), spec)
    b = boxes.to("cpu", torch.float64)  # float64 geometry on the host, as in box_masks; the rings are moved
    cx = ((b[:, 0] + b[:, 2]) / 2 * sx - ox)[:, None, None]
    cy = ((b[:, 1] + b[:, 3]) / 2 * sy - oy)[:, None, None]
    rx = ((b[:, 2] - b[:, 0]) / 2 * sx).clamp(min=1.0)[:, None, None]
    ry = ((b[:, 3] - b[:, 1]) / 2 * sy).clamp(min=1.0)[:, None, None]
    grid = torch.arange(spec.size, dtype=torch.float64) + 0.5
    radius = (((grid[None, None, :] - cx) / rx) ** 2 + ((grid[None, :, None] - cy) / ry) ** 2).sqrt()
    band = thickness / torch.minimum(rx, ry)
    return ((radius - 1.0).abs() <= band / 2)[:, None].to(image.device)


def _full_pixels(image: torch.Tensor, n: int, spec: PreprocessSpec) -> torch.Tensor:
    return crop_resize(image, full_box(image), spec, normalize=False).mul(255.0).expand(n, -1, -1, -1)


@RAW_AUGMENTS.register("crop")
def raw_crop(image: torch.Tensor, boxes: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    return crop_resize(image, boxes, spec)


@RAW_AUGMENTS.register("mask")
def raw_mask(image: torch.Tensor, boxes: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    full = _full_pixels(image, len(boxes), spec)
    return _normalise(full * box_masks(image, boxes, spec), spec)


@RAW_AUGMENTS.register("highlight")
def raw_highlight(image: torch.Tensor, boxes: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    full = _full_pixels(image, len(boxes), spec)
    gain = torch.where(box_masks(image, boxes, spec), HIGHLIGHT_GAIN, 1.0)
    return _normalise((full * gain).clamp(0, 255), spec)


@RAW_AUGMENTS.register("redcircle")
def raw_redcircle(image: torch.Tensor, boxes: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    full = _full_pixels(image, len(boxes), spec)
    red = torch.tensor(RED, device=image.device).view(1, 3, 1, 1)
    return _normalise(torch.where(ellipse_rings(image, boxes, spec), red, full), spec)


def window_token_masks(windows: torch.Tensor, grid: int | tuple[int, int]) -> torch.Tensor:
    """[n, H·W] booleans: which grid tokens lie inside each window (row-major like the token map)."""
    h, w = (grid, grid) if isinstance(grid, int) else grid
    r0, c0, r1, c1 = windows.long().unbind(dim=1)
    ys, xs = torch.arange(h, device=windows.device), torch.arange(w, device=windows.device)
    rows = (ys[None] >= r0[:, None]) & (ys[None] < r1[:, None])  # [n, H]
    cols = (xs[None] >= c0[:, None]) & (xs[None] < c1[:, None])  # [n, W]
    return (rows[:, :, None] & cols[:, None, :]).reshape(len(windows), h * w)


def _grid_values(tokens: TokenMap, windows: torch.Tensor, inside: float, outside: float) -> torch.Tensor:
    """[n, H, W, 1] in the tokens' dtype: ``inside`` on each window's cells, ``outside`` elsewhere."""
    h, w = tokens.grid_shape
    mask = window_token_masks(windows.to(tokens.grid.device), (h, w)).view(-1, h, w, 1)
    return torch.where(mask, inside, outside).to(tokens.grid.dtype)


@FEATURE_AUGMENTS.register("crop")
def feature_crop(tokens: TokenMap, owner: torch.Tensor, windows: torch.Tensor) -> tuple[TokenMap, None]:
    return zoom_windows(tokens, owner, windows), None


@FEATURE_AUGMENTS.register("mask")
def feature_mask(tokens: TokenMap, owner: torch.Tensor, windows: torch.Tensor) -> tuple[TokenMap, None]:
    picked = tokens.select(owner)  # prefix tokens always kept
    return picked.with_grid(picked.grid * _grid_values(tokens, windows, 1.0, 0.0)), None


@FEATURE_AUGMENTS.register("highlight-fea")
def feature_highlight(tokens: TokenMap, owner: torch.Tensor, windows: torch.Tensor) -> tuple[TokenMap, None]:
    picked = tokens.select(owner)  # prefix tokens unscaled
    return picked.with_grid(picked.grid * _grid_values(tokens, windows, HIGHLIGHT_GAIN, 1.0)), None


@FEATURE_AUGMENTS.register("highlight-attn")
def feature_highlight_attention(tokens: TokenMap, owner: torch.Tensor,
                                windows: torch.Tensor) -> tuple[TokenMap, torch.Tensor]:
    """The bias [n, P + H·W] (prefix then grid, as ``TokenMap.sequence()``): 0 on prefix tokens."""
    grid_bias = _grid_values(tokens, windows, ATTENTION_BONUS, 0.0).flatten(1)  # [n, H·W]
    prefix_bias = grid_bias.new_zeros(len(windows), tokens.num_prefix)
    return tokens.select(owner), torch.cat([prefix_bias, grid_bias], dim=1)
