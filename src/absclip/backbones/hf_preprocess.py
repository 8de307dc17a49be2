"""The pixel settings of a transformers model, read from its saved ``preprocessor_config.json``.

The crop geometry (``pixels/``) maps raw boxes onto the token grid with these same settings, so they must
be the processor's own: CLIP's processors resize the shortest side and centre-crop, SigLIP's and ALIGN's
squash to a fixed height × width, SigLIP2's NaFlex processor squashes to a patch budget, and
EfficientNet's ``rescale_offset`` maps pixels to [-1, 1] before the mean/std (folded into them here).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import InputFileError, UnsupportedError
from ..pixels.spec import PreprocessSpec

# PIL resample codes as processors save them; absclip's resampler reproduces Pillow's bilinear and bicubic
_RESAMPLE = {2: "bilinear", 3: "bicubic"}


def read_processor_config(source: str | Path, cache_dir: str | None) -> dict[str, object] | None:
    """The directory's (or hub repository's) ``preprocessor_config.json`` as a dict, None if it has none."""
    from transformers.utils import cached_file

    try:
        path = cached_file(str(source), "preprocessor_config.json", cache_dir=cache_dir,
                           _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)
    except OSError:
        return None
    if path is None:
        return None
    try:
        cfg = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputFileError(f"{path}: not a readable preprocessor config ({exc})") from exc
    if not isinstance(cfg, dict):
        raise InputFileError(f"{path}: a preprocessor config must be a JSON object, got {type(cfg).__name__}")
    return cfg


def _fold_rescale(cfg: dict[str, object], mean: tuple[float, ...],
                  std: tuple[float, ...]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Express the processor's rescale as mean/std on pixels u in [0, 1] (absclip's own rescale).

    The processor computes v = a·u + b with a = 255·rescale_factor and b = -1 under EfficientNet's
    ``rescale_offset``, then (v - mean) / std, and with EfficientNet's ``include_top`` divides by std once
    more: that is (u - (mean - b) / a) / (std / a), times 1 / std."""
    a = 255.0 * float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 255.0  # type: ignore[arg-type]
    b = -1.0 if cfg.get("rescale_offset") else 0.0
    top = str(cfg.get("image_processor_type", "")).startswith("EfficientNet") and cfg.get("include_top", True)
    mean = tuple((m - b) / a for m in mean)
    std = tuple((s * s if top else s) / a for s in std)
    return mean, std


def _side(value: object, key: str, where: str) -> int | None:
    """One side length out of ``size``/``crop_size`` as processors save them (an int or a dict)."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, dict):
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
        h, w = value.get("height"), value.get("width")
        if h is not None and w is not None:
            if int(h) != int(w):
                raise UnsupportedError(f"{where}: {key} {h}×{w} is not square; absclip's token-grid geometry "
                                       "needs square inputs")
            return int(h)
    raise InputFileError(f"{where}: cannot read {key}={value!r} (expected an int, shortest_edge or height/width)")


def spec_from_processor(cfg: dict[str, object], default: PreprocessSpec, where: str,
                        patch_size: int | None = None) -> PreprocessSpec:
    """A :class:`PreprocessSpec` equal to what ``cfg``'s image processor does.

    ``patch_size`` is for NaFlex processors (``max_num_patches``): absclip feeds a square
    ⌊√max_num_patches⌋² patch grid, the processor's own choice for a square image."""
    mean = tuple(float(v) for v in cfg.get("image_mean", default.mean))  # type: ignore[union-attr]
    std = tuple(float(v) for v in cfg.get("image_std", default.std))  # type: ignore[union-attr]
    if not cfg.get("do_normalize", True):
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    mean, std = _fold_rescale(cfg, mean, std)
    resample = cfg.get("resample", 3)
    interpolation = _RESAMPLE.get(resample, "bicubic") if isinstance(resample, int) else default.interpolation
    if "max_num_patches" in cfg:  # SigLIP2 NaFlex: squash to a patch budget
        patch = int(cfg.get("patch_size", patch_size or 16))
        side = math.isqrt(int(cfg["max_num_patches"]))  # type: ignore[arg-type]
        return PreprocessSpec(size=side * patch, mean=mean, std=std, interpolation=interpolation,
                              resize_mode="squash")
    size = cfg.get("size")
    crop = _side(cfg.get("crop_size"), "crop_size", where) if cfg.get("do_center_crop") else None
    shortest = (isinstance(size, dict) and "shortest_edge" in size) or isinstance(size, (int, float))
    side = _side(size, "size", where) or default.size
    if crop is None:
        mode = "shortest" if shortest else "squash"
        return PreprocessSpec(size=side, mean=mean, std=std, interpolation=interpolation, resize_mode=mode)
    if crop > side:
        raise UnsupportedError(f"{where}: the processor resizes to {side} and centre-crops a larger {crop}, which "
                               "pads; absclip's crop geometry has no padding (make crop_size at most size)")
    return PreprocessSpec(size=crop, mean=mean, std=std, interpolation=interpolation,
                          resize_mode="shortest" if shortest else "squash", resize=None if crop == side else side)
