"""The one interface every vision-language backbone exposes.

Feature-space selection needs to stop a ViT before block ``l`` and resume from there on other token
maps; neither open_clip nor transformers can resume, so each adapter provides four primitives
(``_embed``, ``_blocks``/``_run_block``, ``_cls_block``, ``_head``) and this class builds
``tokens_before_block`` / ``finish_from_block`` / ``encode_image`` from them. Adapters are the only
files that touch library internals.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, UnsupportedError
from ..pixels.spec import PreprocessSpec


class Backbone(ABC):
    """A CLIP-like model: ``encode_text`` and ``encode_image`` return L2-normalised float32 embeddings."""

    name: str
    model: nn.Module
    preprocess: PreprocessSpec
    embed_dim: int
    context_length: int
    device: torch.device
    dtype: torch.dtype

    @property
    def logit_scale(self) -> float:
        """The model's learned cosine-to-logit scale (100 for OpenAI's CLIP); 100 if it has none."""
        scale = getattr(self.model, "logit_scale", None)
        if not isinstance(scale, torch.Tensor):
            return 100.0
        return float(scale.detach().float().exp().flatten()[0])

    # ---- text -----------------------------------------------------------------------------------
    @abstractmethod
    def _encode_text_batch(self, texts: Sequence[str]) -> torch.Tensor:
        """Unnormalised text features [N, D] for one batch."""

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        chunks = [self._encode_text_batch(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
        return F.normalize(torch.cat(chunks).float(), dim=-1)

    # ---- image: ViT primitives ------------------------------------------------------------------
    @property
    def is_vit(self) -> bool:
        return self.grid_size is not None

    @property
    def grid_size(self) -> int | None:
        """Token grid side G (image size / patch size) or None for non-ViT encoders."""
        return None

    @property
    def num_blocks(self) -> int:
        return len(self._blocks())

    def _blocks(self) -> Sequence[nn.Module]:
        raise UnsupportedError(f"{self.name} is not a ViT: feature-space selection needs a token map")

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """Tokens [B, 1 + G², W] entering block 0."""
        raise UnsupportedError(f"{self.name} is not a ViT: feature-space selection needs a token map")

    def _run_block(self, block: nn.Module, tokens: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """One block; ``bias`` [B, T] is added to every query's attention logits for each key."""
        if bias is not None:
            raise UnsupportedError(f"{self.name} does not support attention biases")
        return block(tokens)

    def _cls_block(self, block: nn.Module, tokens: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """Block output for the CLS query only, [B, 1, W]. Exact: no other output of a final block is used."""
        return self._run_block(block, tokens, bias)[:, :1]

    def _head(self, cls_token: torch.Tensor) -> torch.Tensor:
        """Final norm + projection of the CLS token [B, W] -> [B, D]."""
        raise UnsupportedError(f"{self.name} is not a ViT")

    def _encode_image_whole(self, pixels: torch.Tensor) -> torch.Tensor:
        """Non-ViT encoders override this; ViTs go through the block primitives."""
        raise UnsupportedError(f"{self.name} has neither ViT blocks nor a whole-image encoder")

    def cls_attention_qk(self, block: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head CLS query [B, h, 1, d] and keys [B, h, T, d] of ``block`` (for CLIP self-attention saliency)."""
        raise UnsupportedError(f"{self.name} does not expose attention queries and keys")

    # ---- image: composed calls ------------------------------------------------------------------
    def block_index(self, block: int) -> int:
        """``block`` as an index 0..L-1 (negative counts from the end); an error names the valid range."""
        n = self.num_blocks
        index = block if block >= 0 else n + block
        if not 0 <= index < n:
            # a ConfigError (still a ValueError) so that the CLI reports it as one line
            raise ConfigError(f"feature layer {block} out of range for {self.name} with {n} blocks: use "
                              f"--feature-layer 0..{n - 1}, or -{n}..-1 counting from the last")
        return index

    @torch.inference_mode()
    def tokens_before_block(self, pixels: torch.Tensor, block: int) -> torch.Tensor:
        """Tokens [B, 1 + G², W] entering block ``block`` (negative counts from the end)."""
        index = self.block_index(block)
        x = self._embed(pixels.to(self.device, self.dtype))
        for blk in self._blocks()[:index]:
            x = self._run_block(blk, x)
        return x

    @torch.inference_mode()
    def finish_from_block(self, tokens: torch.Tensor, block: int,
                          attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        """Run blocks ``block``..L-1 (the last one on the CLS query only), final norm and projection.

        ``attn_bias`` [B, T], if given, is added to the attention logits of those blocks (per key).
        Returns L2-normalised float32 embeddings [B, D].
        """
        index = self.block_index(block)
        blocks = self._blocks()
        x = tokens.to(self.device, self.dtype)
        bias = None if attn_bias is None else attn_bias.to(self.device, self.dtype)
        for blk in blocks[index:-1]:
            x = self._run_block(blk, x, bias)
        cls = self._cls_block(blocks[-1], x, bias)[:, 0]
        return F.normalize(self._head(cls).float(), dim=-1)

    @torch.inference_mode()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalised float32 image embeddings [B, D] of preprocessed pixels [B, 3, S, S]."""
        if not self.is_vit:
            return F.normalize(self._encode_image_whole(pixels.to(self.device, self.dtype)).float(), dim=-1)
        last = self.num_blocks - 1
        return self.finish_from_block(self.tokens_before_block(pixels, last), last)

    @torch.inference_mode()
    def cls_attention_map(self, pixels: torch.Tensor) -> torch.Tensor:
        """The last block's CLS attention over the patch tokens, mean over heads: [B, G, G] float32
        (``--saliency clip``, Table 6 of the ABS paper)."""
        grid = self.grid_size
        if grid is None:
            raise UnsupportedError(f"{self.name} is not a ViT: it has no CLS attention to use as saliency; "
                                   "use --saliency dino")
        last = self.num_blocks - 1
        q, k = self.cls_attention_qk(self._blocks()[last], self.tokens_before_block(pixels, last))
        return cls_attention_row(q, k, 1).view(len(pixels), grid, grid).float()

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "embed_dim": self.embed_dim,
            "image_size": self.preprocess.size,
            "grid_size": self.grid_size,
            "blocks": self.num_blocks if self.is_vit else None,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
        }


def cls_attention_row(q: torch.Tensor, k: torch.Tensor, skip: int) -> torch.Tensor:
    """Mean over heads of the CLS query's softmax attention, without the first ``skip`` tokens.

    q [B, h, 1, d], k [B, h, T, d] -> [B, T - skip]."""
    scale = q.shape[-1] ** -0.5
    attn = torch.softmax((q @ k.transpose(-1, -2)).float() * scale, dim=-1)  # [B, h, 1, T]
    return attn.mean(dim=1)[:, 0, skip:]


def cls_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                        bias: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head attention of one query per sequence over all tokens.

    q: [B, 1, W]; k, v: [B, T, W] (already projected); bias [B, T] added to the logits
    -> [B, 1, W] (before the output projection).
    """
    b, t, w = k.shape
    d = w // heads
    qh = q.view(b, 1, heads, d).transpose(1, 2)  # [B, h, 1, d]
    kh = k.view(b, t, heads, d).transpose(1, 2)  # [B, h, T, d]
    vh = v.view(b, t, heads, d).transpose(1, 2)
    mask = None if bias is None else bias[:, None, None, :]
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)  # [B, h, 1, d]
    return out.transpose(1, 2).reshape(b, 1, w)
