"""Vision-language backbones behind one registry.

Model specs: ``open_clip:ViT-B-16`` (with ``pretrained`` = tag, checkpoint file or None for random
init), ``openai:/path/ViT-B-16.pt`` (OpenAI-format checkpoint, architecture read from the weights),
``hf:openai/clip-vit-base-patch16`` or ``hf:/local/dir``. A bare existing file means ``openai:``, a bare
existing directory ``hf:``, any other bare name ``open_clip:``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UnsupportedError
from ..registry import Registry
from .base import Backbone, PreprocessSpec

BACKBONES: Registry[Backbone] = Registry("backbone source")

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@BACKBONES.register("open_clip")
def _open_clip(identifier: str, pretrained: str | None, device: torch.device, dtype: torch.dtype,
               trust_checkpoint: bool, cache_dir: str | None) -> Backbone:
    from .open_clip import load_open_clip

    return load_open_clip(identifier, pretrained, device, dtype, trust_checkpoint, cache_dir)


@BACKBONES.register("openai")
def _openai(identifier: str, pretrained: str | None, device: torch.device, dtype: torch.dtype,
            trust_checkpoint: bool, cache_dir: str | None) -> Backbone:
    from .checkpoints import state_dict_errors
    from .open_clip import load_openai_checkpoint

    # open_clip reads the architecture from the weights and loads them strictly: a missing or extra weight
    # becomes one line naming the file and the first keys, never a half-random model
    with state_dict_errors(identifier, "OpenAI CLIP"):
        return load_openai_checkpoint(identifier, device, dtype, trust_checkpoint)


@BACKBONES.register("hf")
def _hf(identifier: str, pretrained: str | None, device: torch.device, dtype: torch.dtype,
        trust_checkpoint: bool, cache_dir: str | None) -> Backbone:
    from .hf_load import load_hf

    # config.json's model_type picks the family adapter (hf_clip, hf_siglip, hf_align, hf_groupvit, hf_blip2)
    return load_hf(identifier, device, dtype, cache_dir)


def parse_model_spec(spec: str) -> tuple[str, str]:
    """Split ``source:identifier``; infer the source of a bare spec from what is on disk."""
    source, sep, identifier = spec.partition(":")
    if sep and source in BACKBONES:
        return source, identifier
    path = Path(spec).expanduser()
    if path.is_file():
        return "openai", spec
    if path.is_dir():
        return "hf", spec
    return "open_clip", spec


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UnsupportedError(f"device {device!r} requested but CUDA is not available here; use --device cpu")
    return dev


def create_backbone(
    spec: str = "open_clip:ViT-B-16",
    pretrained: str | None = "openai",
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype = "fp32",
    trust_checkpoint: bool = False,
    cache_dir: str | None = None,
) -> Backbone:
    """Build a backbone by spec; see the module docstring for the spec forms."""
    source, identifier = parse_model_spec(spec)
    if isinstance(dtype, str) and dtype not in DTYPES:
        raise UnsupportedError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    return BACKBONES.create(
        source,
        identifier=identifier,
        pretrained=pretrained,
        device=resolve_device(device),
        dtype=torch_dtype,
        trust_checkpoint=trust_checkpoint,
        cache_dir=cache_dir,
    )


__all__ = ["BACKBONES", "DTYPES", "Backbone", "PreprocessSpec", "create_backbone", "parse_model_spec"]
