"""open_clip models whose vision tower is a timm trunk (``TimmModel``): SigLIP / SigLIP2 (a timm
``VisionTransformer`` without CLS token and with an attention-pool head), EVA02 (timm ``Eva``: CLS token,
rotary position embeddings, CLS pooling) and PE-Core (``Eva`` with rope attention, CLS token and an
attention-pool head over all tokens).

The trunk is run through its own modules: ``patch_embed`` -> ``_pos_embed`` -> ``norm_pre`` -> ``blocks``
-> ``norm`` -> ``forward_head`` (pool, ``fc_norm``, head) -> open_clip's ``head`` (projection), as timm's
``forward_features`` / ``forward_head`` and open_clip's ``TimmModel.forward`` do.

Rotary position embeddings are applied inside every block to the grid tokens from their grid positions.
A zoomed window keeps the G×G grid, so the model's own rotary table stays valid (the zoomed map is seen as
a new full image, as a raw crop would be); a token map of any other shape is refused.

The CLS-only shortcut (computing the last block for the CLS query alone) is *not* used here: SigLIP and
PE-Core pool with an attention head that reads every output of the last block, so the whole last block
must run; EVA02 pools the CLS token and could use it, but timm's ``EvaAttention`` (separate q/k/v
biases, rope, sub-LN) would have to be re-implemented for it, so the exact full block runs instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnsupportedError
from .base import Backbone, cls_attention_row, sequence_bias
from .open_clip import OpenClipBackbone


class TimmTowerBackbone(OpenClipBackbone):
    """An open_clip ``TimmModel`` tower over a timm ``VisionTransformer`` or ``Eva`` trunk."""

    def _setup_tower(self, visual: nn.Module) -> None:
        trunk = visual.trunk
        self._visual = visual
        self._trunk = trunk if _is_token_trunk(trunk) else None
        self._vit = None
        self.num_prefix = int(trunk.num_prefix_tokens) if self._trunk is not None else 0
        self.saliency_reason = self._no_saliency() if self._trunk is not None else None

    def _no_saliency(self) -> str | None:
        trunk = self._trunk
        assert trunk is not None
        if trunk.attn_pool is not None or (getattr(trunk, "cls_token", None) is not None
                                           and trunk.global_pool == "token"):
            return None
        return (f"{self.name} pools its tokens with {trunk.global_pool!r} pooling: no CLS or pooling query "
                "attends over the grid, so it has no attention to use as saliency; use --saliency dino")

    @property
    def grid_size(self) -> int | None:
        if self._trunk is None:
            return None
        h, w = self._trunk.patch_embed.grid_size
        return int(h) if h == w else None

    def _blocks(self) -> Sequence[nn.Module]:
        if self._trunk is None:
            return super()._blocks()
        return self._trunk.blocks

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        if self._trunk is None:
            return super()._embed(pixels)
        trunk = self._trunk
        x = trunk._pos_embed(trunk.patch_embed(pixels))
        if isinstance(x, tuple):  # Eva returns (tokens, rotary table); the table is rebuilt per block call
            x = x[0]
        elif hasattr(trunk, "patch_drop"):  # VisionTransformer applies patch dropout (identity in eval) here
            x = trunk.patch_drop(x)
        return trunk.norm_pre(x)

    def _rope(self, index: int, grid: tuple[int, int]) -> torch.Tensor | None:
        """The rotary table block ``index`` uses (None without rope), as timm's ``Eva._pos_embed`` builds it."""
        trunk = self._trunk
        rope = getattr(trunk, "rope", None)
        if rope is None:
            return None
        if tuple(grid) != tuple(trunk.patch_embed.grid_size):
            raise UnsupportedError(f"{self.name} has rotary position embeddings for its "
                                   f"{self.grid_size}×{self.grid_size} grid; a {grid[0]}×{grid[1]} token map "
                                   "cannot be finished (feature views keep the grid size)")
        table = rope.get_embed() if hasattr(rope, "feat_shape") else rope.get_embed(shape=trunk.patch_embed.grid_size)
        return table[index] if getattr(trunk, "rope_mixed", False) else table

    def _run_block(self, index: int, x: torch.Tensor, grid: tuple[int, int],
                   bias: torch.Tensor | None) -> torch.Tensor:
        block = self._blocks()[index]
        mask = sequence_bias(bias)
        if getattr(self._trunk, "rope", None) is not None:
            return block(x, rope=self._rope(index, grid), attn_mask=mask)
        return block(x, attn_mask=mask) if mask is not None else block(x)

    def _finish(self, x: torch.Tensor, grid: tuple[int, int], bias: torch.Tensor | None) -> torch.Tensor:
        return Backbone._finish(self, x, grid, bias)  # the whole last block (see the module docstring)

    def _head(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        trunk = self._trunk
        assert trunk is not None
        x = trunk.norm(x)
        if bias is None or trunk.attn_pool is None:
            pooled = trunk.forward_head(x)  # timm's own pool -> fc_norm -> head_drop -> head
        else:  # the same steps, with the bias on the attention pool's keys
            keys, bias = self._pool_inputs(x, bias)
            pooled = trunk.head(trunk.head_drop(trunk.fc_norm(trunk.attn_pool(keys, attn_mask=sequence_bias(bias)))))
        return self._visual.head(pooled)

    def _pool_inputs(self, x: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the attention pool reads: every token (Eva) or the grid tokens only (timm ViT's
        ``pool_include_prefix=False``), with the matching part of ``bias``."""
        if getattr(self._trunk, "pool_include_prefix", True):
            return x, bias
        p = self.num_prefix
        return x[:, p:], None if bias is None else bias[:, p:]

    def _attention_row(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        trunk = self._trunk
        assert trunk is not None
        last = len(self._blocks()) - 1
        if trunk.attn_pool is not None:  # SigLIP, PE-Core: the pooling query over the last block's output
            keys, _ = self._pool_inputs(trunk.norm(self._run_block(last, x, grid, None)), None)
            q, k = pool_query_keys(trunk.attn_pool, keys)
            skip = keys.shape[1] - grid[0] * grid[1]
        else:  # EVA02: the last block's CLS query, rotary embeddings included
            block = self._blocks()[last]
            q, k = block_query_keys(block.attn, block.norm1(x), self._rope(last, grid))
            q, skip = q[:, :, :1], self.num_prefix
        return cls_attention_row(q, k, skip)


def _is_token_trunk(trunk: nn.Module) -> bool:
    """timm ViT-style trunks (``VisionTransformer``, ``Eva``) with a patch grid absclip can select from."""
    return all(hasattr(trunk, a) for a in ("patch_embed", "_pos_embed", "blocks", "norm_pre", "norm",
                                           "num_prefix_tokens", "forward_head", "attn_pool")) and \
        getattr(trunk, "dynamic_img_size", False) is False


def pool_query_keys(pool: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """timm ``AttentionPoolLatent``: its latent query [B, h, 1, d] (first latent) and keys [B, h, T, d]."""
    b, t, _ = x.shape
    if pool.pos_embed is not None:
        x = x + pool.pos_embed.unsqueeze(0).to(x.dtype)
    heads, d = pool.num_heads, pool.head_dim
    q = pool.q(pool.latent.expand(b, -1, -1))[:, :1].reshape(b, 1, heads, d).transpose(1, 2)
    k = pool.kv(x).reshape(b, t, 2, heads, d)[:, :, 0].transpose(1, 2)
    return pool.q_norm(q), pool.k_norm(k)


def block_query_keys(attn: nn.Module, h: torch.Tensor,
                     rope: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries and keys [B, h, T, d] of a timm attention module (``Attention``, ``EvaAttention``,
    ``AttentionRope``) on normed tokens ``h`` [B, T, C], after q/k norms and rotary embeddings."""
    from timm.layers import apply_rot_embed_cat

    b, t, _ = h.shape
    heads = attn.num_heads
    d = attn.head_dim
    kv_heads = getattr(attn, "num_kv_heads", heads)
    if getattr(attn, "qkv", None) is not None:
        bias = attn.qkv.bias
        if getattr(attn, "q_bias", None) is not None:  # EvaAttention keeps q/v biases apart, k unbiased
            bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
        qkv = F.linear(h, attn.qkv.weight, bias).reshape(b, t, 3, heads, d).permute(2, 0, 3, 1, 4)
        q, k = qkv[0], qkv[1]
    else:
        q = attn.q_proj(h).reshape(b, t, heads, d).transpose(1, 2)
        k = attn.k_proj(h).reshape(b, t, kv_heads, d).transpose(1, 2)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if rope is not None:
        npt = attn.num_prefix_tokens
        half = getattr(attn, "rotate_half", False)
        q = torch.cat([q[:, :, :npt], apply_rot_embed_cat(q[:, :, npt:], rope, half=half)], dim=2)
        k = torch.cat([k[:, :, :npt], apply_rot_embed_cat(k[:, :, npt:], rope, half=half)], dim=2)
    if kv_heads != heads:
        k = k.repeat_interleave(heads // kv_heads, dim=1)
    return q, k
