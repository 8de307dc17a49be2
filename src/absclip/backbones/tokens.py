"""The token map a vision tower holds between two blocks, as the rest of absclip sees it.

Feature-space selection zooms windows of the *spatial* part of this map and must leave everything else
(a ViT's CLS token, register tokens, nothing at all for SigLIP) untouched, so the two are kept apart:
``prefix`` [B, P, C] (P may be 0) and ``grid`` [B, H, W, C], channel-last for ViT tokens and CNN feature
maps alike. Only ``backbones/`` converts between this and a model's own layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenMap:
    prefix: torch.Tensor  # [B, P, C]: tokens outside the spatial grid, P >= 0
    grid: torch.Tensor  # [B, H, W, C]: the spatial tokens, row-major

    def __post_init__(self) -> None:
        if self.prefix.dim() != 3 or self.grid.dim() != 4:
            raise ValueError(f"TokenMap needs prefix [B, P, C] and grid [B, H, W, C], got "
                             f"{tuple(self.prefix.shape)} and {tuple(self.grid.shape)}")
        if self.prefix.shape[0] != self.grid.shape[0] or self.prefix.shape[2] != self.grid.shape[3]:
            raise ValueError(f"TokenMap prefix {tuple(self.prefix.shape)} does not match grid {tuple(self.grid.shape)}")

    @property
    def batch(self) -> int:
        return self.grid.shape[0]

    @property
    def grid_shape(self) -> tuple[int, int]:
        return self.grid.shape[1], self.grid.shape[2]

    @property
    def num_prefix(self) -> int:
        return self.prefix.shape[1]

    @property
    def num_tokens(self) -> int:
        """Tokens in sequence form: prefix + H·W (the length of an attention bias over them)."""
        h, w = self.grid_shape
        return self.num_prefix + h * w

    def sequence(self) -> torch.Tensor:
        """[B, P + H·W, C]: the prefix first, then the grid row by row (a ViT's own order)."""
        b, h, w, c = self.grid.shape
        return torch.cat([self.prefix, self.grid.reshape(b, h * w, c)], dim=1)

    @classmethod
    def from_sequence(cls, tokens: torch.Tensor, num_prefix: int, grid_shape: tuple[int, int]) -> TokenMap:
        """Split [B, P + H·W, C] into prefix and grid."""
        b, t, c = tokens.shape
        h, w = grid_shape
        if t != num_prefix + h * w:
            raise ValueError(f"{t} tokens do not hold {num_prefix} prefix tokens and a {h}×{w} grid")
        return cls(tokens[:, :num_prefix], tokens[:, num_prefix:].reshape(b, h, w, c))

    def select(self, index: torch.Tensor) -> TokenMap:
        """The maps of images ``index`` [N] (repeats allowed): one per crop window."""
        return TokenMap(self.prefix[index], self.grid[index])

    def with_grid(self, grid: torch.Tensor) -> TokenMap:
        """The same prefix with another grid (a zoomed or masked window), [B, H', W', C]."""
        return TokenMap(self.prefix, grid)

    def to(self, device: torch.device, dtype: torch.dtype) -> TokenMap:
        return TokenMap(self.prefix.to(device, dtype), self.grid.to(device, dtype))
