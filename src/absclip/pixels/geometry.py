"""Where the VLM's input (resize or squash, then centre crop) and its token grid sit on the original image."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .spec import PreprocessSpec


def resized_geometry(width: int, height: int, spec: PreprocessSpec) -> tuple[float, float, int, int]:
    """(scale_x, scale_y, offset_x, offset_y): original pixel x maps to x·scale_x - offset_x in the S×S input."""
    size, side = spec.size, spec.resize_side
    if spec.resize_mode == "squash":
        rw = rh = side
    elif width <= height:
        rw, rh = side, int(side * height / width)
    else:
        rw, rh = int(side * width / height), side
    return rw / width, rh / height, round((rw - size) / 2.0), round((rh - size) / 2.0)


def crop_extents(sizes: Sequence[tuple[int, int]], spec: PreprocessSpec) -> torch.Tensor:
    """The original-image region (x0, y0, x1, y1) that the S×S input shows, per (width, height). [B, 4]."""
    rows = []
    for w, h in sizes:
        sx, sy, ox, oy = resized_geometry(w, h, spec)
        rows.append([ox / sx, oy / sy, (ox + spec.size) / sx, (oy + spec.size) / sy])
    return torch.tensor(rows, dtype=torch.float64)


def box_to_window(box: Sequence[int], width: int, height: int, spec: PreprocessSpec, grid: int) -> list[int]:
    """The smallest token window [r0, c0, r1, c1) (end-exclusive) covering ``box`` once the image is
    resized and centre-cropped; a box outside the crop gets the nearest border cell."""
    sx, sy, ox, oy = resized_geometry(width, height, spec)
    cell = spec.size / grid
    x0, y0, x1, y1 = box

    def span(a: float, b: float, scale: float, offset: int) -> tuple[int, int]:
        lo = math.floor((a * scale - offset) / cell + 1e-9)
        hi = math.ceil((b * scale - offset) / cell - 1e-9)
        lo, hi = min(max(lo, 0), grid - 1), min(max(hi, 0), grid)
        return lo, max(hi, lo + 1)

    c0, c1 = span(x0, x1, sx, ox)
    r0, r1 = span(y0, y1, sy, oy)
    return [r0, c0, r1, c1]
