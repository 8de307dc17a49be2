"""open_clip models: by architecture + pretrained tag, local checkpoint, or OpenAI-format file."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import nn

from ..errors import InputFileError, WeightsNotFoundError
from .base import Backbone, cls_attention_row, cls_query_attention, sequence_bias
from .checkpoints import load_state_dict_file
from .open_clip_config import file_preprocess, preprocess_spec_of, state_mismatch, weights_follow

# OpenAI files carry these metadata entries; TorchScript archives also save the text attention mask buffer
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


class OpenClipBackbone(Backbone):
    """An open_clip model with its own vision tower: a CLS-token ``VisionTransformer`` (OpenAI CLIP, LAION,
    MetaCLIP, DFN) or, without a token map, a ``ModifiedResNet``. timm towers: :mod:`.timm_tower`."""

    def __init__(self, model: nn.Module, name: str, device: torch.device, dtype: torch.dtype,
                 tokenizer_name: str | None = None) -> None:
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.name = name
        self.device = device
        self.dtype = dtype
        self.preprocess = preprocess_spec_of(model.visual)
        self.context_length = int(getattr(model, "context_length", 77))
        self.tokenizer = (
            open_clip.get_tokenizer(tokenizer_name)
            if tokenizer_name
            else partial(open_clip.tokenize, context_length=self.context_length)
        )
        with torch.inference_mode():
            self.embed_dim = int(self.model.encode_text(self._tokenize(["x"])).shape[-1])
        self._setup_tower(model.visual)

    def _setup_tower(self, visual: nn.Module) -> None:
        """The token-map view of an open_clip ``VisionTransformer`` (None for other towers)."""
        self._vit = visual if isinstance(visual, VisionTransformer) and visual.transformer.batch_first else None
        self.num_prefix = 1 if self._vit is not None else 0

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

    def _run_block(self, index: int, x: torch.Tensor, grid: tuple[int, int],
                   bias: torch.Tensor | None) -> torch.Tensor:
        block = self._blocks()[index]
        if _is_plain(block):
            return plain_block(block, x, bias)
        if bias is None:
            return block(x)
        b, t, _ = x.shape
        heads = block.attn.num_heads
        # nn.MultiheadAttention takes a per-sequence additive mask as [B * heads, T, T]
        mask = bias[:, None, None, :].expand(b, heads, t, t).reshape(b * heads, t, t)
        return block(x, attn_mask=mask)

    def _encode_whole(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def _qkv(self, block: ResidualAttentionBlock, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The CLS query [B, 1, W] and every token's key and value [B, T, W] of ``block``."""
        h = block.ln_1(x)
        w, b = block.attn.in_proj_weight, block.attn.in_proj_bias
        width = x.shape[-1]
        q = F.linear(h[:, :1], w[:width], None if b is None else b[:width])
        kv = F.linear(h, w[width:], None if b is None else b[width:])
        k, v = kv.split(width, dim=-1)
        return q, k, v

    def _cls_only(self) -> bool:
        """The CLS-only shortcut applies where the head reads the CLS token alone (``pool_type="tok"``, no
        attention pooler) and the last block is a plain ``ResidualAttentionBlock``; elsewhere (average pooling,
        CoCa's attention pooler, cross-attention blocks) the whole last block runs."""
        vit = self._vit
        assert vit is not None
        last = self._blocks()[-1]
        return vit.attn_pool is None and vit.pool_type == "tok" and _is_plain(last)

    def _finish(self, x: torch.Tensor, grid: tuple[int, int], bias: torch.Tensor | None) -> torch.Tensor:
        if not self._cls_only():
            return super()._finish(x, grid, bias)
        block = self._blocks()[-1]
        q, k, v = self._qkv(block, x)
        attn = cls_query_attention(q, k, v, block.attn.num_heads, bias)
        y = x[:, :1] + block.ls_1(block.attn.out_proj(attn))
        y = y + block.ls_2(block.mlp(block.ln_2(y)))  # [B, 1, W]: the CLS token after the last block
        return self._head(y, bias)

    def _head(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """open_clip's own pooling (``_pool``: ln_post + CLS / average / attention pool) and projection."""
        vit = self._vit
        assert vit is not None
        pooled, _ = vit._pool(x)
        return pooled @ vit.proj if vit.proj is not None else pooled

    def _attention_row(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        block = self._blocks()[-1]
        q, k, _ = self._qkv(block, x)
        heads = block.attn.num_heads
        b, t, w = k.shape
        qh = q.view(b, 1, heads, w // heads).transpose(1, 2)
        kh = k.view(b, t, heads, w // heads).transpose(1, 2)
        return cls_attention_row(qh, kh, self.num_prefix)


def _is_plain(block: nn.Module) -> bool:
    """A self-attention ``ResidualAttentionBlock`` (not a cross-attention one, nor a subclass)."""
    return type(block) is ResidualAttentionBlock and not hasattr(block, "ln_1_kv")


def plain_block(block: ResidualAttentionBlock, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``block(x)`` for a batch-first plain block, with its attention as one ``scaled_dot_product_attention``
    over head views of the packed QKV projection, and the per-key ``bias`` [B, T] broadcast, not expanded.

    ``nn.MultiheadAttention``'s inference fast path instead materialises the [B·h, T, T] scores with two
    batched matmuls and a separate softmax, and takes a mask only as [B·h, T, T]; the fused kernel runs the
    same attention about twice as fast on CPU."""
    b, t, w = x.shape
    heads = block.attn.num_heads
    qkv = F.linear(block.ln_1(x), block.attn.in_proj_weight, block.attn.in_proj_bias)
    q, k, v = qkv.view(b, t, 3, heads, w // heads).permute(2, 0, 3, 1, 4)  # each [B, h, T, d]
    attn = F.scaled_dot_product_attention(q, k, v, attn_mask=sequence_bias(bias))
    x = x + block.ls_1(block.attn.out_proj(attn.transpose(1, 2).reshape(b, t, w)))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def backbone_class(model: nn.Module) -> type[OpenClipBackbone]:
    """The adapter of ``model``'s vision tower: open_clip's own towers here, timm towers in :mod:`.timm_tower`."""
    from open_clip.timm_model import TimmModel

    if isinstance(model.visual, TimmModel):
        from .timm_tower import TimmTowerBackbone

        return TimmTowerBackbone
    return OpenClipBackbone


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
        path = Path(pretrained).expanduser()
        with weights_follow():  # open_clip would log "initialized randomly" before the file's weights load
            model = open_clip.create_model(name, pretrained=None, force_preprocess_cfg=file_preprocess(name, path))
        state = load_state_dict_file(path, trust_checkpoint)
        for key in _OPENAI_EXTRA_KEYS:
            state.pop(key, None)
        _load_strict(model, state, path, name)
        with _hub_tokenizer_access(name):
            return backbone_class(model)(model, f"open_clip:{name}", device, dtype, tokenizer_name=name)
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
            return backbone_class(model)(model, f"open_clip:{name}/{pretrained}", device, dtype, tokenizer_name=name)
    model = open_clip.create_model(name, pretrained=None, force_preprocess_cfg=file_preprocess(name, None))
    with _hub_tokenizer_access(name):
        return backbone_class(model)(model, f"open_clip:{name}/random-init", device, dtype, tokenizer_name=name)


@contextlib.contextmanager
def _hub_tokenizer_access(name: str) -> Iterator[None]:
    """An architecture whose tokenizer is an hf hub id (SigLIP's) needs the hub even when its weights are a
    file: ask it once, quickly (:func:`hub_access`), and fail in one line if the tokenizer is not cached."""
    from open_clip.factory import get_model_config

    tokenizer = (get_model_config(name) or {}).get("text_cfg", {}).get("hf_tokenizer_name")
    if not tokenizer or Path(str(tokenizer)).expanduser().is_dir():
        yield
        return
    with hub_access() as offline_reason:
        try:
            yield
        except OSError as exc:
            raise WeightsNotFoundError(
                f"the tokenizer of open_clip {name} ({tokenizer}) is not on this machine and could not be "
                f"downloaded ({offline_reason or type(exc).__name__}): download it where you have internet "
                "(it is cached under the Hugging Face cache) or use a model whose tokenizer ships with open_clip"
            ) from exc


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], path: Path, name: str) -> None:
    """Every weight of ``model`` from ``state`` and nothing else: a file for another architecture would
    otherwise leave parts of the model randomly initialised. The error names the first mismatched keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        what = state_mismatch(missing, unexpected) or f"shape mismatch {', '.join(shapes[:2])}"
        raise InputFileError(f"{path} does not fit architecture {name} ({type(model.visual).__name__} tower): "
                             f"{what}; pass the architecture these weights were trained as (absclip models)")
    model.load_state_dict(state)


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
