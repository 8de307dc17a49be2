"""Hugging Face ``transformers`` CLIP models: hub id or a directory saved with ``save_pretrained``."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsNotFoundError
from ..pixels.spec import OPENAI_MEAN, OPENAI_STD
from .base import Backbone, PreprocessSpec, cls_query_attention
from .checkpoints import checkpoint_errors
from .open_clip import hub_access, missing_weights_message


class HFClipBackbone(Backbone):
    def __init__(self, model: nn.Module, tokenizer: object, name: str, device: torch.device,
                 dtype: torch.dtype, preprocess: PreprocessSpec) -> None:
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        self.device = device
        self.dtype = dtype
        self.preprocess = preprocess
        self.embed_dim = int(model.config.projection_dim)
        self.context_length = int(model.config.text_config.max_position_embeddings)
        vision = model.config.vision_config
        self._grid = int(vision.image_size) // int(vision.patch_size)
        self._heads = int(vision.num_attention_heads)

    def _encode_text_batch(self, texts: Sequence[str]) -> torch.Tensor:
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.context_length, return_tensors="pt"
        ).to(self.device)
        out = self.model.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return self.model.text_projection(out.pooler_output)

    @property
    def grid_size(self) -> int | None:
        return self._grid

    def _blocks(self) -> Sequence[nn.Module]:
        return self.model.vision_model.encoder.layers

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        vision = self.model.vision_model
        return vision.pre_layrnorm(vision.embeddings(pixels))

    def _run_block(self, block: nn.Module, tokens: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        # transformers 5 encoder layers take (hidden_states, additive mask [B, 1, T, T]) and return a tensor
        if bias is None:
            return block(tokens, None)
        t = tokens.shape[1]
        return block(tokens, bias[:, None, None, :].expand(-1, 1, t, t))

    def _qkv(self, block: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = block.layer_norm1(tokens)
        attn = block.self_attn
        return attn.q_proj(h[:, :1]), attn.k_proj(h), attn.v_proj(h)

    def _cls_block(self, block: nn.Module, tokens: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self._qkv(block, tokens)
        x = tokens[:, :1] + block.self_attn.out_proj(cls_query_attention(q, k, v, self._heads, bias))
        return x + block.mlp(block.layer_norm2(x))

    def cls_attention_qk(self, block: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, _ = self._qkv(block, tokens)
        b, t, w = k.shape
        d = w // self._heads
        return q.view(b, 1, self._heads, d).transpose(1, 2), k.view(b, t, self._heads, d).transpose(1, 2)

    def _head(self, cls_token: torch.Tensor) -> torch.Tensor:
        return self.model.visual_projection(self.model.vision_model.post_layernorm(cls_token))


def load_hf_clip(source: str, device: torch.device, dtype: torch.dtype, cache_dir: str | None = None) -> HFClipBackbone:
    """``source``: a hub id (``openai/clip-vit-base-patch16``) or a local directory."""
    from transformers import AutoTokenizer, CLIPModel

    local = Path(source).expanduser()
    is_local = local.is_dir()
    # a local directory needs no network; a hub id is fetched only if the hub answers one quick request
    with contextlib.nullcontext(None) if is_local else hub_access() as offline_reason:
        try:
            # a weights pickle that holds code, or a corrupt one, becomes one line naming the folder
            with checkpoint_errors(local if is_local else source):
                model = CLIPModel.from_pretrained(str(local) if is_local else source, cache_dir=cache_dir,
                                                  attn_implementation="sdpa")
            tokenizer = AutoTokenizer.from_pretrained(str(local) if is_local else source, cache_dir=cache_dir)
        except OSError as exc:
            if is_local:
                raise WeightsNotFoundError(f"{local}: not a transformers CLIP directory ({str(exc)[:200]})") from exc
            raise WeightsNotFoundError(
                missing_weights_message(f"transformers {source}", cache_dir, offline_reason)
            ) from exc
        spec = _preprocess_spec(local if is_local else source, model, cache_dir)
    return HFClipBackbone(model, tokenizer, f"hf:{source}", device, dtype, spec)


def _preprocess_spec(source: Path | str, model: nn.Module, cache_dir: str | None) -> PreprocessSpec:
    """Mean/std/size from the saved image processor if there is one, else OpenAI's CLIP values."""
    size = int(model.config.vision_config.image_size)
    try:
        from transformers import CLIPImageProcessor

        proc = CLIPImageProcessor.from_pretrained(str(source), cache_dir=cache_dir)
    except (OSError, ValueError):
        return PreprocessSpec(size=size, mean=OPENAI_MEAN, std=OPENAI_STD)
    return PreprocessSpec(size=size, mean=tuple(proc.image_mean), std=tuple(proc.image_std))
