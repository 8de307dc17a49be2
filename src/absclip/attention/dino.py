"""DINO (v1) and DINOv2 attention through ``transformers``: last layer, CLS row, mean over heads.

Only the last layer's CLS attention row is needed, so the last layer computes just its CLS query and
the keys; the other layers run with the model's fused attention.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from ..backbones import Backbone
from ..backbones.base import cls_attention_row
from ..errors import WeightsNotFoundError
from ..pixels import PreprocessSpec, preprocess_images
from .base import SALIENCY, Saliency, SaliencySource, whole_image_extents


class HFViTSaliency(SaliencySource):
    """A transformers ViTModel (DINO v1) or Dinov2Model / Dinov2WithRegistersModel."""

    def __init__(self, model: nn.Module, name: str, device: torch.device, dtype: torch.dtype = torch.float32,
                 size: int = 224, mean: tuple[float, ...] = (0.5, 0.5, 0.5), std: tuple[float, ...] = (0.5, 0.5, 0.5),
                 interpolation: str = "bilinear") -> None:
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.name = name
        self.device = device
        self.dtype = dtype
        self.spec = PreprocessSpec(size=size, mean=tuple(mean), std=tuple(std), interpolation=interpolation,
                                   resize_mode="squash")
        cfg = model.config
        self.patch = int(cfg.patch_size)
        self.skip = 1 + int(getattr(cfg, "num_register_tokens", 0) or 0)
        if hasattr(model, "layers"):  # ViTModel (transformers 5)
            self.layers, self.norm_name = model.layers, "layernorm_before"
        else:  # Dinov2Model / Dinov2WithRegistersModel
            self.layers, self.norm_name = model.encoder.layer, "norm1"

    @torch.inference_mode()
    def attention_from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """CLS attention over patch tokens [B, gh, gw] for preprocessed pixels [B, 3, S, S]."""
        h = self.model.embeddings(pixels.to(self.device, self.dtype))
        for layer in self.layers[:-1]:
            h = layer(h, None)
        last = self.layers[-1]
        normed = getattr(last, self.norm_name)(h)
        attn = last.attention
        heads = int(attn.num_attention_heads)
        b, t, _ = normed.shape
        d = attn.q_proj.out_features // heads
        q = attn.q_proj(normed[:, :1]).view(b, 1, heads, d).transpose(1, 2)
        k = attn.k_proj(normed).view(b, t, heads, d).transpose(1, 2)
        row = cls_attention_row(q, k, self.skip)
        grid = pixels.shape[-1] // self.patch
        return row.view(b, grid, grid)

    def __call__(self, images: Sequence[torch.Tensor]) -> Saliency:
        pixels = preprocess_images(images, self.spec)
        return Saliency(self.attention_from_pixels(pixels).float().cpu(), whole_image_extents(images))


def load_hf_vit_saliency(source: str, device: torch.device, dtype: torch.dtype = torch.float32,
                         option: str = "dino") -> HFViTSaliency:
    """Hub id or local directory of a DINO / DINOv2 model (``save_pretrained`` layout); ``option`` is the
    ``--saliency`` name that error messages suggest."""
    from transformers import AutoConfig, AutoModel

    from ..backbones.checkpoints import checkpoint_errors
    from ..backbones.open_clip import hub_access  # here, not at the top: it imports open_clip

    local = Path(source).expanduser()
    if not local.is_dir() and (source.startswith((".", "/", "~")) or source.count("/") > 1):
        # hub ids are "org/name": anything else that looks like a path is one, so do not ask the network
        raise WeightsNotFoundError(f"saliency model directory not found: {local}")
    where = str(local) if local.is_dir() else source
    # a local directory needs no network; a hub id is fetched only if the hub answers one quick request
    with contextlib.nullcontext(None) if local.is_dir() else hub_access() as offline_reason:
        try:
            config = AutoConfig.from_pretrained(where)
            vit = config.model_type == "vit"
            # checkpoint_errors: a weights pickle that holds code, or a corrupt one, becomes one line
            with _pooler_expected_unused() if vit else contextlib.nullcontext(), checkpoint_errors(where):
                model = AutoModel.from_pretrained(where, attn_implementation="sdpa",
                                                  **({"add_pooling_layer": False} if vit else {}))
        except (OSError, ValueError) as exc:  # a directory without a usable config.json raises ValueError
            if local.is_dir():
                raise WeightsNotFoundError(
                    f"{local}: not a transformers DINO / DINOv2 directory ({str(exc)[:200]})"
                ) from exc
            from huggingface_hub import constants

            raise WeightsNotFoundError(
                f"saliency model {source} is not on this machine and could not be downloaded ("
                f"{offline_reason + '; ' if offline_reason else ''}searched {constants.HF_HUB_CACHE}). "
                "Save it with save_pretrained where you have internet and pass the directory: "
                f"--saliency {option}:/path/to/dir"
            ) from exc
    mean, std, interp = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear"
    if config.model_type != "vit":  # DINOv2 was trained with ImageNet statistics and bicubic resizing
        mean, std, interp = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic"
    return HFViTSaliency(model, source, device, dtype, mean=mean, std=std, interpolation=interp)


@contextlib.contextmanager
def _pooler_expected_unused() -> Iterator[None]:
    """DINO v1 checkpoints (facebook/dino-vit*) carry pooler weights that the CLS attention map never uses,
    and loading without them is deliberate, so transformers should not print a LOAD REPORT table calling
    them UNEXPECTED. ``_keys_to_ignore_on_load_unexpected`` is transformers' own switch for that; it is set
    on ``ViTModel`` for this one load only (a subclass would lose the class-name-keyed checkpoint key
    conversion), and every other unexpected or missing key is still reported."""
    from transformers import ViTModel

    before = ViTModel._keys_to_ignore_on_load_unexpected
    ViTModel._keys_to_ignore_on_load_unexpected = [*(before or []), r"(^|\.)pooler\."]
    try:
        yield
    finally:
        ViTModel._keys_to_ignore_on_load_unexpected = before


@SALIENCY.register("dino")
def _dino(location: str | None, backbone: Backbone) -> SaliencySource:
    return load_hf_vit_saliency(location or "facebook/dino-vitb16", backbone.device)


@SALIENCY.register("dinov2")
def _dinov2(location: str | None, backbone: Backbone) -> SaliencySource:
    return load_hf_vit_saliency(location or "facebook/dinov2-with-registers-base", backbone.device, option="dinov2")
