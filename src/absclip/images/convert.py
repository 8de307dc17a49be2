"""Pixel conversion: any Pillow mode to 8-bit RGB with the meaning of the samples kept, and to tensors."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

#: Background for transparent pixels (see :func:`to_rgb`).
_BACKGROUND = (255, 255, 255)


def _scale_integers(arr: np.ndarray) -> np.ndarray:
    """Integer samples to uint8.

    Data within 0..65535 is taken as 16-bit (Pillow widens 16-bit PNG/PGM/TIFF to this range) and
    mapped with ``round(v * 255 / 65535)``, the inverse of the usual 8→16-bit ``v * 257``.
    Anything else (signed or 32-bit data) is min/max stretched, the only mapping that shows it.
    """
    lo, hi = int(arr.min()), int(arr.max())
    if lo >= 0 and hi <= 65535:
        return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return _stretch(arr.astype(np.float64), lo, hi)


def _round_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Round half up (like the integer path), not numpy's half-to-even, then clamp to 0..255."""
    return np.clip(np.floor(arr + 0.5), 0, 255).astype(np.uint8)


def _stretch(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.full(arr.shape, np.clip(round(lo), 0, 255), dtype=np.uint8)
    return _round_to_uint8((arr - lo) * 255.0 / (hi - lo))


def _scale_floats(arr: np.ndarray) -> np.ndarray:
    """32-bit float samples to uint8.

    Values all within [0, 1] are taken as normalised intensities (×255), so a dim image stays dim;
    other ranges (depth maps, HDR, scientific data) are min/max stretched. NaN becomes the
    minimum and ±inf the finite extremes, so one bad sample cannot blank the image.
    """
    arr = arr.astype(np.float64)
    finite = np.isfinite(arr)
    if not finite.any():
        return np.zeros(arr.shape, dtype=np.uint8)
    lo, hi = float(arr[finite].min()), float(arr[finite].max())
    arr = np.nan_to_num(arr, nan=lo, posinf=hi, neginf=lo)
    if lo >= 0.0 and hi <= 1.0:
        return _round_to_uint8(arr * 255.0)
    return _stretch(arr, lo, hi)


def _composite_on_background(rgba: Image.Image) -> Image.Image:
    """Flatten alpha over white.

    Dropping alpha would expose the colour stored under transparent pixels, which is arbitrary
    (often black, sometimes leftover content) and would change the prediction; white is the
    background such images (logos, product shots, icons) are normally shown on.
    """
    background = Image.new("RGBA", rgba.size, (*_BACKGROUND, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to a new 8-bit ``RGB`` image, preserving what the pixels mean.

    * high bit depth grey (``I;16*``, ``I``): scaled, not clipped (see :func:`_scale_integers`);
    * float ``F``: see :func:`_scale_floats`;
    * anything with transparency (alpha channel, palette alpha, ``tRNS`` colour key): composited
      over white (see :func:`_composite_on_background`);
    * ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``1``, ``L``, ``P``, ``RGBX``: Pillow's conversion.

    Raises ``ValueError`` for a mode Pillow cannot convert.
    """
    mode = img.mode
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(img)
        grey = _scale_floats(arr) if mode == "F" else _scale_integers(arr)
        key = img.info.get("transparency")
        if isinstance(key, int) and not isinstance(key, bool):
            grey = np.where(arr == key, 255, grey).astype(np.uint8)  # PNG tRNS grey key
        return Image.fromarray(grey).convert("RGB")
    if mode == "La":
        img, mode = img.convert("LA"), "LA"  # Pillow cannot go from La straight to RGBA
    if img.has_transparency_data:
        return _composite_on_background(img.convert("RGBA"))
    return img.convert("RGB")  # also copies an RGB image, detaching it from its file


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB image as a contiguous, writable ``uint8`` tensor of shape ``[3, H, W]``."""
    if img.mode != "RGB":
        raise ValueError(f"expected an RGB image (use load_image or to_rgb), got mode {img.mode!r}")
    # np.array copies into a fresh C-ordered buffer (np.asarray alone is read-only, torch warns).
    chw = np.array(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1), order="C")
    return torch.from_numpy(chw)
