"""open_clip models: by architecture + pretrained tag, local checkpoint, or OpenAI-format file."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path

import open_clip
import torch
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import nn

from ..errors import InputFileError, WeightsNotFoundError
from .base import Backbone, PreprocessSpec, cls_query_attention
from .checkpoints import load_state_dict_file

# OpenAI files carry these metadata entries; TorchScript archives also save the text attention mask buffer
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


class OpenClipBackbone(Backbone):
    def __init__(self, model: nn.Module, name: str, device: torch.device, dtype: torch.dtype,
                 tokenizer_name: str | None = None) -> None:
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.name = name
        self.device = device
        self.dtype = dtype
        visual = model.visual
        cfg = getattr(visual, "preprocess_cfg", {}) or {}
        size = visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else int(size)
        self.preprocess = PreprocessSpec(
            size=size,
            mean=tuple(cfg.get("mean", PreprocessSpec(size).mean)),
            std=tuple(cfg.get("std", PreprocessSpec(size).std)),
            interpolation=cfg.get("interpolation", "bicubic"),
            resize_mode=cfg.get("resize_mode", "shortest"),
        )
        self.context_length = int(getattr(model, "context_length", 77))
        self.tokenizer = (
            open_clip.get_tokenizer(tokenizer_name)
            if tokenizer_name
            else partial(open_clip.tokenize, context_length=self.context_length)
        )
        with torch.inference_mode():
            self.embed_dim = int(self.model.encode_text(self._tokenize(["x"])).shape[-1])
        self._vit = visual if self._resumable(visual) else None

    @staticmethod
    def _resumable(visual: nn.Module) -> bool:
        """Feature selection needs a plain CLS-pooled ViT (no attention pooler, no avg pool)."""
        return (
            isinstance(visual, VisionTransformer)
            and visual.attn_pool is None
            and visual.pool_type == "tok"
            and visual.transformer.batch_first
        )

    def _tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts)).to(self.device)

    def _encode_text_batch(self, texts: Sequence[str]) -> torch.Tensor:
        return self.model.encode_text(self._tokenize(texts))

    @property
    def grid_size(self) -> int | None:
        if self._vit is None:
            return None
        grid = self._vit.grid_size
        return int(grid[0] if isinstance(grid, (tuple, list)) else grid)

    def _blocks(self) -> Sequence[nn.Module]:
        if self._vit is None:
            return super()._blocks()
        return self._vit.transformer.resblocks

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        if self._vit is None:
            return super()._embed(pixels)
        return self._vit._embeds(pixels)

    def _run_block(self, block: nn.Module, tokens: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if bias is None:
            return block(tokens)
        b, t, _ = tokens.shape
        heads = block.attn.num_heads
        # nn.MultiheadAttention takes a per-sequence additive mask as [B * heads, T, T]
        mask = bias[:, None, None, :].expand(b, heads, t, t).reshape(b * heads, t, t)
        return block(tokens, attn_mask=mask)

    def _encode_image_whole(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def _qkv(self, block: ResidualAttentionBlock, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = block.ln_1(tokens)
        w, b = block.attn.in_proj_weight, block.attn.in_proj_bias
        width = tokens.shape[-1]
        q = nn.functional.linear(h[:, :1], w[:width], None if b is None else b[:width])
        kv = nn.functional.linear(h, w[width:], None if b is None else b[width:])
        k, v = kv.split(width, dim=-1)
        return q, k, v

    def _cls_block(self, block: nn.Module, tokens: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv"):
            return super()._cls_block(block, tokens, bias)
        q, k, v = self._qkv(block, tokens)
        attn = cls_query_attention(q, k, v, block.attn.num_heads, bias)
        x = tokens[:, :1] + block.ls_1(block.attn.out_proj(attn))
        return x + block.ls_2(block.mlp(block.ln_2(x)))

    def cls_attention_qk(self, block: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, _ = self._qkv(block, tokens)
        heads = block.attn.num_heads
        b, t, w = k.shape
        return (q.view(b, 1, heads, w // heads).transpose(1, 2), k.view(b, t, heads, w // heads).transpose(1, 2))

    def _head(self, cls_token: torch.Tensor) -> torch.Tensor:
        vit = self._vit
        assert vit is not None
        pooled = vit.ln_post(cls_token)
        return pooled @ vit.proj if vit.proj is not None else pooled


def load_open_clip(
    name: str,
    pretrained: str | None,
    device: torch.device,
    dtype: torch.dtype,
    trust_checkpoint: bool = False,
    cache_dir: str | None = None,
) -> OpenClipBackbone:
    """``name`` is an open_clip architecture; ``pretrained`` a tag, a checkpoint path or None (random init)."""
    if name not in open_clip.list_models():
        raise InputFileError(f"unknown open_clip architecture {name!r}; see `absclip models` for the list")
    if pretrained and Path(pretrained).expanduser().is_file():
        model = open_clip.create_model(name, pretrained=None)
        state = load_state_dict_file(Path(pretrained).expanduser(), trust_checkpoint)
        for key in _OPENAI_EXTRA_KEYS:
            state.pop(key, None)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise InputFileError(
                f"{pretrained} does not fit architecture {name}: {str(exc).splitlines()[0]}"
            ) from exc
        return OpenClipBackbone(model, f"open_clip:{name}", device, dtype, tokenizer_name=name)
    if pretrained:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise InputFileError(
                f"{pretrained!r} is neither a file nor a pretrained tag of {name} (tags: {', '.join(tags) or 'none'})"
            )
        with hub_access() as offline_reason:
            try:
                model = open_clip.create_model(name, pretrained=pretrained, cache_dir=cache_dir,
                                               require_pretrained=True)
            except Exception as exc:  # download failures surface as RuntimeError, OSError or hub errors
                raise WeightsNotFoundError(
                    missing_weights_message(f"open_clip {name} / {pretrained}", cache_dir, offline_reason)
                ) from exc
            # inside too: a tokenizer that lives on the hub (e.g. an hf text tower) follows the same rule
            return OpenClipBackbone(model, f"open_clip:{name}/{pretrained}", device, dtype, tokenizer_name=name)
    model = open_clip.create_model(name, pretrained=None)
    return OpenClipBackbone(model, f"open_clip:{name}/random-init", device, dtype, tokenizer_name=name)


def load_openai_checkpoint(
    path: str, device: torch.device, dtype: torch.dtype, trust_checkpoint: bool = False
) -> OpenClipBackbone:
    """A checkpoint as OpenAI ships it (state dict or TorchScript ``.pt``); the architecture is read
    from the weights' shapes."""
    from open_clip.model import build_model_from_openai_state_dict

    state = load_state_dict_file(Path(path).expanduser(), trust_checkpoint)
    if "visual.conv1.weight" not in state and "visual.layer1.0.conv1.weight" not in state:
        raise InputFileError(f"{path}: not an OpenAI CLIP checkpoint (no visual.conv1 / visual.layer1 weights)")
    state.pop("attn_mask", None)
    model = build_model_from_openai_state_dict(state, cast_dtype=None).float()
    return OpenClipBackbone(model, f"openai:{Path(path).name}", device, dtype)


# One quick request decides whether the hub is used at all (seconds; ``ABSCLIP_HUB_TIMEOUT`` overrides).
HUB_TIMEOUT_ENV = "ABSCLIP_HUB_TIMEOUT"
DEFAULT_HUB_TIMEOUT = 3.0


def hub_timeout() -> float:
    try:
        value = float(os.environ.get(HUB_TIMEOUT_ENV, DEFAULT_HUB_TIMEOUT))
    except ValueError:
        return DEFAULT_HUB_TIMEOUT
    return value if value > 0 else DEFAULT_HUB_TIMEOUT


def hub_unreachable_reason(timeout: float | None = None) -> str | None:
    """None if the Hugging Face hub endpoint answers one HEAD request (any HTTP status counts: the network
    works), else a short reason. Uses the hub's own HTTP client, so proxies and ``HF_ENDPOINT`` apply."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    timeout = timeout or hub_timeout()
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout, follow_redirects=False)
    except Exception as exc:  # connect, DNS, TLS and timeout errors all mean "no hub from here"
        if "timeout" in type(exc).__name__.lower():  # a slow link, perhaps: say how to wait longer
            return (f"{constants.ENDPOINT} did not answer within {timeout:g} s ({type(exc).__name__}; "
                    f"{HUB_TIMEOUT_ENV}=SECONDS waits longer)")
        return f"{constants.ENDPOINT} did not answer: {type(exc).__name__}"
    return None


@contextlib.contextmanager
def hub_access(timeout: float | None = None) -> Iterator[str | None]:
    """Load from the hub only if it answers one quick request; otherwise run huggingface_hub offline inside
    the block, so cached files load and missing ones fail at once. Without this, each missing file costs
    huggingface_hub six attempts with 1+2+4+8+8 s of back-off (about 25 s per candidate file, ~50 s for
    open_clip's two) and a warning line per attempt. Yields the reason the hub is not used, or None."""
    from huggingface_hub import constants

    reason = hub_unreachable_reason(timeout)
    if reason is None or constants.HF_HUB_OFFLINE:
        yield reason
        return
    # huggingface_hub (and transformers through it) read this flag at each request, so setting it for the
    # duration of the block is its offline mode, the same as HF_HUB_OFFLINE=1 in the environment
    constants.HF_HUB_OFFLINE = True
    try:
        yield reason
    finally:
        constants.HF_HUB_OFFLINE = False


def missing_weights_message(what: str, cache_dir: str | None, reason: str | None = None) -> str:
    from huggingface_hub import constants

    searched = cache_dir or constants.HF_HUB_CACHE
    return (
        f"weights for {what} are not on this machine and could not be downloaded "
        f"({reason + '; ' if reason else ''}searched the cache at {searched}). "
        "Download them where you have internet and pass the file: "
        "--pretrained /path/to/weights.{safetensors,bin,pt}, or --model openai:/path/to/ViT-B-16.pt, "
        "or --model hf:/path/to/saved_dir (set HF_HUB_OFFLINE=1 to skip the network attempts)"
    )
