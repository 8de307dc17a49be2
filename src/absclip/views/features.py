"""Feature-space zoom: resize token-map windows back to the full G×G grid in batched matrix products.

Bicubic interpolation (align_corners=False) is separable and linear, so resizing an h-row window to G
rows is a fixed [G, h] matrix. We take those matrices from ``F.interpolate`` applied to an identity
(exactly torch's kernel), embed each at its window offset in a [G, G] matrix, and apply all windows at
once: out[n] = Wy[n] · P[image(n)] · Wx[n]ᵀ per channel.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=64)
def _resize_matrices(grid: int) -> torch.Tensor:
    """[G + 1, G, G]: entry h holds the [G, h] bicubic resize matrix from h cells to G (zero-padded)."""
    out = torch.zeros(grid + 1, grid, grid, dtype=torch.float64)
    for h in range(1, grid + 1):
        eye = torch.eye(h, dtype=torch.float64)[None, None]  # [1, 1, h, h]: column j is the unit input j
        out[h, :, :h] = F.interpolate(eye, size=(grid, h), mode="bicubic", align_corners=False)[0, 0]
    return out


def window_matrices(windows: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column resize matrices [N, G, G] for windows [N, 4] = (r0, c0, r1, c1)."""
    mats = _resize_matrices(grid).to(windows.device)
    r0, c0, r1, c1 = windows.long().unbind(dim=1)
    idx = torch.arange(grid, device=windows.device)

    def place(start: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        local = mats[length]  # [N, G, G]: columns 0..h-1 used
        src = (idx[None, :] - start[:, None]).clamp(0, grid - 1)  # [N, G] source cell -> local column
        placed = torch.gather(local, 2, src[:, None, :].expand(-1, grid, -1))
        inside = (idx[None, :] >= start[:, None]) & (idx[None, :] < (start + length)[:, None])
        return placed * inside[:, None, :]

    return place(r0, r1 - r0), place(c0, c1 - c0)


def zoom_windows(tokens: torch.Tensor, image_index: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """tokens [B, 1 + G², W] (CLS first); for each window n of image ``image_index[n]``, the token
    sequence [N, 1 + G², W] with the window resized to G×G and the image's CLS token unchanged."""
    b, t, w = tokens.shape
    grid = round((t - 1) ** 0.5)
    patches = tokens[:, 1:].reshape(b, grid, grid, w)
    wy, wx = window_matrices(windows.to(tokens.device), grid)
    wy, wx = wy.to(tokens.dtype), wx.to(tokens.dtype)
    rows = torch.einsum("nyi,nijd->nyjd", wy, patches[image_index])  # [N, G, G, W]
    zoomed = torch.einsum("nxj,nyjd->nyxd", wx, rows)
    return torch.cat([tokens[image_index, :1], zoomed.reshape(-1, grid * grid, w)], dim=1)
