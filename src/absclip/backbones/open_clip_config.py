"""What an open_clip architecture expects of its pixels, when the weights come from a file.

open_clip sets a model's preprocessing (size, mean/std, squash vs resize + centre-crop, interpolation)
from the pretrained *tag*; a checkpoint passed as a file has no tag, and open_clip then falls back to
OpenAI's CLIP settings, which are wrong for SigLIP (mean/std 0.5, squash) and PE-Core (bilinear squash).
The crop geometry (``pixels/``) must use the same settings as the model, so they are resolved here, in
this order: the ``preprocess_cfg`` of an ``open_clip_config.json`` next to the file (the layout of
open_clip's hub repositories), else the settings every pretrained tag of the architecture agrees on,
else open_clip's defaults.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

from torch import nn

from ..errors import InputFileError
from ..pixels.spec import PreprocessSpec

PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


def tag_preprocess(name: str) -> dict[str, object]:
    """The preprocessing settings shared by every pretrained tag of architecture ``name`` (keys where the
    tags disagree, e.g. ViT-H-14-quickgelu's MetaCLIP centre-crop and DFN squash, are left out)."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    cfgs = [get_pretrained_cfg(name, tag) for tag in open_clip.list_pretrained_tags_by_model(name)]
    cfgs = [c for c in cfgs if c]
    out: dict[str, object] = {}
    for key in PREPROCESS_KEYS:
        values = {tuple(v) if isinstance(v, list) else v for c in cfgs if (v := c.get(key)) is not None}
        if len(values) == 1:
            out[key] = values.pop()
    return out


def sidecar_preprocess(checkpoint: Path) -> dict[str, object]:
    """``preprocess_cfg`` of the ``open_clip_config.json`` beside ``checkpoint``, if there is one."""
    sidecar = checkpoint.parent / "open_clip_config.json"
    if not sidecar.is_file():
        return {}
    try:
        cfg = json.loads(sidecar.read_text(encoding="utf-8")).get("preprocess_cfg", {})
    except (OSError, ValueError, AttributeError) as exc:
        raise InputFileError(f"{sidecar}: not a readable open_clip config ({exc})") from exc
    if not isinstance(cfg, dict):
        raise InputFileError(f"{sidecar}: preprocess_cfg must be an object, got {type(cfg).__name__}")
    return {k: cfg[k] for k in PREPROCESS_KEYS if k in cfg}


def file_preprocess(name: str, checkpoint: Path | None) -> dict[str, object]:
    """The settings to force on architecture ``name`` loaded from ``checkpoint`` (or randomly initialised)."""
    resolved = tag_preprocess(name)
    if checkpoint is not None:
        resolved.update(sidecar_preprocess(checkpoint))
    return resolved


def preprocess_spec_of(visual: nn.Module) -> PreprocessSpec:
    """The :class:`PreprocessSpec` of an open_clip vision tower (its ``preprocess_cfg`` and image size)."""
    cfg = getattr(visual, "preprocess_cfg", {}) or {}
    size = visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    default = PreprocessSpec(size)
    mode = cfg.get("resize_mode", "shortest")
    if mode not in ("shortest", "squash"):
        raise InputFileError(f"open_clip resize_mode {mode!r} is not supported; absclip reproduces 'shortest' "
                             "(resize + centre crop) and 'squash'")
    return PreprocessSpec(
        size=size,
        mean=tuple(cfg.get("mean", default.mean)),
        std=tuple(cfg.get("std", default.std)),
        interpolation=cfg.get("interpolation", "bicubic"),
        resize_mode=mode,
    )


def state_mismatch(missing: list[str], unexpected: list[str]) -> str:
    """'missing a, b, c (+N more); unexpected d' for a checkpoint that does not fit its model."""

    def first(keys: list[str]) -> str:
        more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
        return ", ".join(keys[:3]) + more

    parts = ([f"missing {first(missing)}"] if missing else []) + ([f"unexpected {first(unexpected)}"]
                                                               if unexpected else [])
    return "; ".join(parts)


class _RandomInitNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def weights_follow() -> Iterator[None]:
    """Around ``open_clip.create_model(pretrained=None)`` when a checkpoint file is loaded right after (and
    strictly): open_clip's warning that the model is randomly initialised would be false, so it is held back."""
    notice = _RandomInitNotice()
    root = logging.getLogger()
    root.addFilter(notice)
    try:
        yield
    finally:
        root.removeFilter(notice)
