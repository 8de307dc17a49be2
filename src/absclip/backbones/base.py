"""The one interface every vision-language backbone exposes (the tower contract of issue 9).

Feature-space selection stops a vision tower before block ``l``, edits the spatial part of the token map
(:class:`~absclip.backbones.tokens.TokenMap`) and resumes from there; neither open_clip, timm nor
transformers can resume, so every adapter implements a few private primitives and this class composes
the public calls from them. Adapters are the only files that touch library internals.

Private primitives an adapter implements (all on sequences ``x`` [B, P + H·W, C], prefix first):

``_blocks()``
    The tower's blocks in order (``num_blocks`` is their count).
``_embed(pixels)``
    Tokens entering block 0, [B, P + G², C] (patch embedding, prefix tokens, absolute position
    embedding, pre-norm). ``num_prefix`` = P (CLS, registers; 0 for SigLIP).
``_run_block(index, x, grid, bias)``
    Block ``index`` on ``x``; ``grid`` = (H, W) of the spatial part (rotary position embeddings need it);
    ``bias`` [B, T] or None is added to every query's attention logits for each key.
``_head(x, bias)``
    The model's own pooling + projection of the last block's output -> [B, D] (CLS + projection,
    SigLIP's attention pool, ...), or [B, Q, D] for a head with Q query embeddings per image (BLIP-2's
    Q-Former; ``queries_per_view`` = Q). ``bias`` reaches an attention-pool head too.
``_finish(x, grid, bias)`` (optional)
    The last block and the head together. The default runs the whole last block then ``_head``; an adapter
    whose head reads only the CLS token overrides it to compute the CLS query alone (the *CLS-only
    shortcut*: exact, since no other output of the last block is used).
``_attention_row(x, grid)``
    For ``--saliency clip``: the attention over the H·W grid tokens, mean over heads, [B, H·W] float32,
    of the query that decides the embedding: the last block's CLS query, or an attention-pool head's
    latent query. ``x`` enters the last block. Set ``saliency_reason`` instead where there is none.
``_encode_whole(pixels)``
    Towers without a token map (a ResNet): the unnormalised image embedding [B, D].

An adapter of a tower without a token map leaves ``grid_size`` None and implements only ``_encode_whole``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, UnsupportedError
from ..pixels.spec import PreprocessSpec
from .tokens import TokenMap

CAPABILITIES = ("raw crops", "feature crops", "clip saliency")
"""What a backbone may support; :attr:`Backbone.capabilities` maps each to None (ok) or why not."""


class Backbone(ABC):
    """A CLIP-like model: ``encode_text`` and ``encode_image`` return L2-normalised float32 embeddings."""

    name: str
    model: nn.Module
    preprocess: PreprocessSpec
    embed_dim: int
    context_length: int
    device: torch.device
    dtype: torch.dtype
    num_prefix: int = 0
    saliency_reason: str | None = None
    """Why the tower has no attention row for ``--saliency clip`` (None where it has one)."""
    attention_bias_reason: str | None = None
    """Why ``finish_from_block`` takes no ``attn_bias`` (``--feature-augment highlight-attn``); None where it does."""

    @property
    def queries_per_view(self) -> int:
        """Embeddings per image view: 1, or BLIP-2's Q query embeddings. With Q > 1 ``encode_image`` and
        ``finish_from_block`` return [B, Q, D], and a view's cosine with a text is the max over its queries
        (:func:`absclip.scoring.view_text_cosine`)."""
        return 1

    @property
    def logit_scale(self) -> float:
        """The model's learned cosine-to-logit scale (100 for OpenAI's CLIP); 100 if it has none."""
        scale = getattr(self.model, "logit_scale", None)
        if not isinstance(scale, torch.Tensor):
            return 100.0
        return float(scale.detach().float().exp().flatten()[0])

    @property
    def logit_bias(self) -> float | None:
        """SigLIP's learned logit bias (its sigmoid loss needs it to turn logits into probabilities); else None."""
        bias = getattr(self.model, "logit_bias", None)
        if not isinstance(bias, torch.Tensor):
            return None
        return float(bias.detach().float().flatten()[0])

    # ---- text -----------------------------------------------------------------------------------
    @abstractmethod
    def _encode_text_batch(self, texts: Sequence[str]) -> torch.Tensor:
        """Unnormalised text features [N, D] for one batch."""

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        chunks = [self._encode_text_batch(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
        return F.normalize(torch.cat(chunks).float(), dim=-1)

    # ---- what the tower is ----------------------------------------------------------------------
    @property
    def grid_size(self) -> int | None:
        """Side G of the square token grid (image size / patch size), None for a tower without a token map."""
        return None

    @property
    def is_vit(self) -> bool:
        """Whether the tower has a token map to select features from (a ViT-style tower)."""
        return self.grid_size is not None

    @property
    def num_blocks(self) -> int:
        return len(self._blocks())

    @property
    def capabilities(self) -> dict[str, str | None]:
        """{"raw crops", "feature crops", "clip saliency"} -> None where supported, else a one-line reason."""
        if not self.is_vit:
            return {"raw crops": None, "feature crops": self._no_token_map(),
                    "clip saliency": f"{self.name} is not a ViT: it has no CLS attention to use as saliency; "
                                     "use --saliency dino"}
        return {"raw crops": None, "feature crops": None, "clip saliency": self.saliency_reason}

    def _no_token_map(self) -> str:
        return (f"{self.name} is not a ViT: feature-space selection needs a token map; use --no-feature "
                "(raw crops only)")

    # ---- private primitives (see the module docstring) -------------------------------------------
    def _blocks(self) -> Sequence[nn.Module]:
        raise UnsupportedError(self._no_token_map())

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        raise UnsupportedError(self._no_token_map())

    def _run_block(self, index: int, x: torch.Tensor, grid: tuple[int, int],
                   bias: torch.Tensor | None) -> torch.Tensor:
        raise UnsupportedError(self._no_token_map())

    def _head(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        raise UnsupportedError(self._no_token_map())

    def _finish(self, x: torch.Tensor, grid: tuple[int, int], bias: torch.Tensor | None) -> torch.Tensor:
        """Last block + head, [B, D] unnormalised. No shortcut here: the head may read every token."""
        return self._head(self._run_block(self.num_blocks - 1, x, grid, bias), bias)

    def _attention_row(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        raise UnsupportedError(f"{self.name} does not expose an attention row; use --saliency dino")

    def _encode_whole(self, pixels: torch.Tensor) -> torch.Tensor:
        raise UnsupportedError(f"{self.name} has neither a token map nor a whole-image encoder")

    # ---- the public calls ------------------------------------------------------------------------
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
    def tokens_before_block(self, pixels: torch.Tensor, block: int) -> TokenMap:
        """The token map entering block ``block`` (negative counts from the end) of preprocessed pixels."""
        index = self.block_index(block)
        grid = self.grid_size
        assert grid is not None  # block_index raised for a tower without blocks
        x = self._embed(pixels.to(self.device, self.dtype))
        for i in range(index):
            x = self._run_block(i, x, (grid, grid), None)
        return TokenMap.from_sequence(x, self.num_prefix, (grid, grid))

    @torch.inference_mode()
    def finish_from_block(self, tokens: TokenMap, block: int, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        """Run blocks ``block``..L-1 and the model's own head on ``tokens``: [B, D] L2-normalised float32
        ([B, Q, D], each query normalised, where ``queries_per_view`` is Q > 1).

        ``attn_bias`` [B, P + H·W] (prefix then grid, the order of ``TokenMap.sequence()``), if given, is
        added per key to the attention logits of those blocks and of an attention-pool head.
        """
        index = self.block_index(block)
        if not isinstance(tokens, TokenMap):
            raise TypeError(f"finish_from_block takes a TokenMap, got {type(tokens).__name__}")
        if tokens.num_prefix != self.num_prefix:
            raise ValueError(f"{self.name} has {self.num_prefix} prefix tokens, the token map {tokens.num_prefix}")
        tokens = tokens.to(self.device, self.dtype)
        bias = None
        if attn_bias is not None:
            if tuple(attn_bias.shape) != (tokens.batch, tokens.num_tokens):
                raise ValueError(f"attention bias {tuple(attn_bias.shape)} does not match the token map: "
                                 f"expected [{tokens.batch}, {tokens.num_tokens}] (prefix + H·W)")
            bias = attn_bias.to(self.device, self.dtype)
        grid = tokens.grid_shape
        x = tokens.sequence()
        for i in range(index, self.num_blocks - 1):
            x = self._run_block(i, x, grid, bias)
        return F.normalize(self._finish(x, grid, bias).float(), dim=-1)

    @torch.inference_mode()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalised float32 image embeddings [B, D] ([B, Q, D] with Q queries per view) of preprocessed
        pixels [B, 3, S, S]."""
        if not self.is_vit:
            return F.normalize(self._encode_whole(pixels.to(self.device, self.dtype)).float(), dim=-1)
        last = self.num_blocks - 1
        return self.finish_from_block(self.tokens_before_block(pixels, last), last)

    @torch.inference_mode()
    def cls_attention_map(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, G, G] float32: the attention of the query that decides the embedding (the last block's CLS
        query, or SigLIP's attention-pool query) over the grid, mean over heads (``--saliency clip``,
        Table 6 of the ABS paper)."""
        reason = self.capabilities["clip saliency"]
        if reason is not None:
            raise UnsupportedError(reason)
        grid = self.grid_size
        assert grid is not None
        last = self.num_blocks - 1
        x = self.tokens_before_block(pixels, last).sequence()
        return self._attention_row(x, (grid, grid)).float().view(len(pixels), grid, grid)

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


def sequence_bias(bias: torch.Tensor | None) -> torch.Tensor | None:
    """A per-key bias [B, T] as the additive attention mask [B, 1, 1, T] that SDPA-style attention broadcasts."""
    return None if bias is None else bias[:, None, None, :]


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
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=sequence_bias(bias))  # [B, h, 1, d]
    return out.transpose(1, 2).reshape(b, 1, w)
