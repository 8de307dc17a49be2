"""Feature-space zoom: resize token-map windows back to the full H×W grid in batched matrix products.

Bicubic interpolation (align_corners=False) is separable and linear, so resizing an h-row window to H
rows is a fixed [H, h] matrix. We take those matrices from ``F.interpolate`` applied to an identity
(exactly torch's kernel), embed each at its window offset in an [H, H] matrix, and apply all windows at
once: out[n] = Wy[n] · P[image(n)] · Wx[n]ᵀ per channel.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ..backbones.tokens import TokenMap


@functools.lru_cache(maxsize=64)
def _resize_matrices(grid: int) -> torch.Tensor:
    """[G + 1, G, G] float64 on the CPU: entry h holds the [G, h] bicubic resize matrix from h cells to G
    (zero-padded). Built once per grid side; callers move it to their device in their own dtype."""
    out = torch.zeros(grid + 1, grid, grid, dtype=torch.float64)
    for h in range(1, grid + 1):
        eye = torch.eye(h, dtype=torch.float64)[None, None]  # [1, 1, h, h]: column j is the unit input j
        out[h, :, :h] = F.interpolate(eye, size=(grid, h), mode="bicubic", align_corners=False)[0, 0]
    return out


def _placed(start: torch.Tensor, length: torch.Tensor, grid: int, dtype: torch.dtype) -> torch.Tensor:
    """[N, G, G]: the resize matrix of each window span [start, start + length) placed at its offset."""
    local = _resize_matrices(grid).to(start.device, dtype)[length]  # [N, G, G]: columns 0..h-1 used
    idx = torch.arange(grid, device=start.device)
    src = (idx[None, :] - start[:, None]).clamp(0, grid - 1)  # [N, G] source cell -> local column
    placed = torch.gather(local, 2, src[:, None, :].expand(-1, grid, -1))
    inside = (idx[None, :] >= start[:, None]) & (idx[None, :] < (start + length)[:, None])
    return placed * inside[:, None, :].to(dtype)


def window_matrices(windows: torch.Tensor, grid: tuple[int, int],
                    dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Row [N, H, H] and column [N, W, W] resize matrices for windows [N, 4] = (r0, c0, r1, c1) on an
    H×W grid."""
    r0, c0, r1, c1 = windows.long().unbind(dim=1)
    return _placed(r0, r1 - r0, grid[0], dtype), _placed(c0, c1 - c0, grid[1], dtype)


def zoom_windows(tokens: TokenMap, image_index: torch.Tensor, windows: torch.Tensor) -> TokenMap:
    """For each window n of image ``image_index[n]``, that image's token map with the window of its grid
    resized to the full H×W grid and its prefix tokens (CLS, registers) unchanged: [N] maps."""
    grid = tokens.grid  # [B, H, W, C]
    wy, wx = window_matrices(windows.to(grid.device), tokens.grid_shape, grid.dtype)
    rows = torch.einsum("nyi,nijd->nyjd", wy, grid[image_index])  # [N, H, W, C]
    zoomed = torch.einsum("nxj,nyjd->nyxd", wx, rows)  # [N, H, W, C]
    return TokenMap(tokens.prefix[image_index], zoomed)
