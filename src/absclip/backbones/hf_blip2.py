"""transformers BLIP-2 (``Blip2ForImageTextRetrieval``): a CLIP-style ViT, then the Q-Former.

Image side: ViT tokens (CLS + patch grid: ``num_prefix`` 1), the last ViT block, ``post_layernorm`` over
every token, then the Q-Former's Q learned queries cross-attend to that finished sequence and the vision
projection gives Q query embeddings per image: ``encode_image`` / ``finish_from_block`` return [B, Q, D]
(``queries_per_view`` = Q). The Q-Former reads *every* token, so the CLS-only shortcut of :mod:`.base`
does not apply: feature crops zoom the tokens before the last ViT block, run the whole last block, and
the Q-Former reads the finished sequence (the base class's default ``_finish``).

Text side: the Q-Former's text embedding (word + position embeddings, the Q-Former without queries) and
the text projection of its first ([CLS]) token, as transformers computes the image-text contrastive
(ITC) score, which is the max over the Q query embeddings of the cosine with the text embedding
(:func:`absclip.scoring.view_text_cosine` takes that max inside every formula).

``--saliency clip`` is the last ViT block's CLS attention over the grid: the Q-Former's queries are Q
different readers, none of them the one query that decides the embedding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..pixels.spec import PreprocessSpec
from .base import cls_attention_row, sequence_bias
from .hf_base import HFBackbone, register_hf

BLIP_TEMPERATURE_SCALE = 100.0
"""transformers' retrieval head returns raw cosines and the checkpoint holds no learned temperature, so the
softmax scale of cosine scores is CLIP's 100 (LAVIS clips its ITC temperature to at least 0.001)."""


@register_hf("blip-2")
class HFBlip2Backbone(HFBackbone):
    model_class = "Blip2ForImageTextRetrieval"
    family = "BLIP-2"
    num_prefix = 1

    @classmethod
    def default_spec(cls, config: object) -> PreprocessSpec:
        """BlipImageProcessor's defaults: squash to the image size, bicubic, OpenAI's mean/std."""
        size = int(config.vision_config.image_size)  # type: ignore[attr-defined]
        return PreprocessSpec(size=size, interpolation="bicubic", resize_mode="squash")

    def _setup_vision(self) -> None:
        vision = self.model.config.vision_config
        self._grid = int(vision.image_size) // int(vision.patch_size)
        self._heads = int(vision.num_attention_heads)

    def _context_length(self) -> int:
        return int(self.model.config.qformer_config.max_position_embeddings)

    @property
    def queries_per_view(self) -> int:
        return int(self.model.config.num_query_tokens)

    @property
    def logit_scale(self) -> float:
        return BLIP_TEMPERATURE_SCALE

    # ---- text -----------------------------------------------------------------------------------
    def _encode_text_batch(self, texts: Sequence[str]) -> torch.Tensor:
        """The Q-Former's [CLS] output of the text alone, text-projected: [N, D] (the ITC text embedding)."""
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.context_length,
                               return_tensors="pt").to(self.device)
        model = self.model
        embeds = model.embeddings(input_ids=batch["input_ids"])
        out = model.qformer(query_embeds=embeds, query_length=0, attention_mask=batch["attention_mask"])
        hidden = out.last_hidden_state[:, 0].to(model.text_projection.weight.dtype)
        return model.text_projection(hidden)

    # ---- vision primitives ----------------------------------------------------------------------
    def _blocks(self) -> Sequence[nn.Module]:
        return self.model.vision_model.encoder.layers

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.vision_model.embeddings(pixels)

    def _qkv(self, block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-head query, key and value [B, h, T, d] of ``block`` (BLIP-2's fused ``qkv`` projection)."""
        b, t, w = x.shape
        qkv = block.self_attn.qkv(block.layer_norm1(x)).reshape(b, t, 3, self._heads, w // self._heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        return q, k, v

    def _run_block(self, index: int, x: torch.Tensor, grid: tuple[int, int],
                   bias: torch.Tensor | None) -> torch.Tensor:
        block = self._blocks()[index]
        if bias is None:
            return block(x)  # the library's own layer (its attention takes no mask)
        # the same layer with the per-key bias added to its attention logits
        q, k, v = self._qkv(block, x)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=sequence_bias(bias))  # [B, h, T, d]
        y = x + block.self_attn.projection(attn.transpose(1, 2).reshape(x.shape))
        return y + block.mlp(block.layer_norm2(y))

    def _head(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """post_layernorm, the Q-Former's queries over every token (the bias on their cross-attention keys)
        and the vision projection: [B, Q, D] unnormalised."""
        model = self.model
        image = model.vision_model.post_layernorm(x)
        queries = model.query_tokens.expand(len(x), -1, -1)
        if bias is None:
            mask = torch.ones(image.shape[:2], dtype=torch.long, device=image.device)
        else:  # a prepared 4D additive mask [B, 1, Q, T], which the Q-Former passes to its cross-attention as is
            mask = sequence_bias(bias).expand(-1, 1, queries.shape[1], -1).to(model.qformer.layernorm.weight.dtype)
        out = model.qformer(query_embeds=queries, encoder_hidden_states=image, encoder_attention_mask=mask)
        return model.vision_projection(out.last_hidden_state.to(model.vision_projection.weight.dtype))

    def _attention_row(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        q, k, _ = self._qkv(self._blocks()[-1], x)
        return cls_attention_row(q[:, :, :1], k, self.num_prefix)
