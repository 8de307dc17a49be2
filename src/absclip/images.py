"""Image discovery and decoding that turns every bad input into a per-file error, never a crash.

A zero-shot run over thousands of user images must not die on the one truncated JPEG or on a
16-bit scan, so this module:

* finds images deterministically (:func:`discover_images`);
* decodes any mode Pillow can open into 8-bit RGB with the *meaning* of the pixels preserved
  (:func:`load_image`, :func:`to_rgb`) -- e.g. a 16-bit grey value of 32768 becomes 128, not 255
  as ``Image.convert("RGB")`` would make it;
* reports unreadable files as :class:`ImageLoadError` naming the file and a readable reason;
* bounds memory: images above ``max_pixels`` are downscaled, cheaply via JPEG DCT scaling where
  possible, without touching Pillow's global ``MAX_IMAGE_PIXELS`` or ``LOAD_TRUNCATED_IMAGES``.
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from .errors import InputFileError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ImageLoadError",
    "discover_images",
    "image_to_tensor",
    "iter_loaded",
    "load_image",
    "to_rgb",
]

#: Default pixel budget of a decoded image (64 MP = 192 MB as RGB); larger images are downscaled.
DEFAULT_MAX_PIXELS = 64_000_000

#: Extensions (lower-case, with the dot) picked up when walking a directory. Only formats the
#: Pillow build we depend on decodes; explicitly named files are tried whatever their extension.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif",
        ".png", ".apng",
        ".bmp", ".dib",
        ".gif",
        ".webp",
        ".tif", ".tiff",
        ".ppm", ".pgm", ".pbm", ".pnm", ".pfm",
        ".tga", ".ico", ".pcx", ".sgi",
        ".jp2", ".j2k",
        ".avif",
    }
)  # fmt: skip

#: Background for transparent pixels (see :func:`to_rgb`).
_BACKGROUND = (255, 255, 255)

# Leading bytes of common formats: lets a file Pillow cannot identify be reported as "corrupt X"
# rather than "not an image".
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)


class ImageLoadError(InputFileError):
    """One image could not be read; ``path`` and ``reason`` let a batch report it and go on.

    Subclasses :class:`InputFileError` (an :class:`AbsclipError`) since a bad image *is* a
    malformed input file.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot load image {self.path}: {reason}")

    def __reduce__(self) -> tuple[type[ImageLoadError], tuple[Path, str]]:
        # Default exception pickling replays ``self.args`` (the message) into ``__init__``, which
        # would fail; DataLoader workers need to send these errors back to the parent process.
        return (type(self), (self.path, self.reason))


# --------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _walk_directory(root: Path, recursive: bool) -> list[Path]:
    """Image files under ``root``, sorted by relative path; hidden entries skipped.

    Symlinked directories are followed (datasets are often assembled from links) but each real
    directory is visited once, so link cycles cannot loop forever.
    """
    found: list[Path] = []
    seen_dirs: set[tuple[int, int]] = set()
    pending = [root]
    while pending:
        directory = pending.pop()
        try:
            st = directory.stat()
            key = (st.st_dev, st.st_ino)
            if key in seen_dirs:
                continue
            seen_dirs.add(key)
            with os.scandir(directory) as entries:
                listing = list(entries)
        except OSError as exc:
            # Skipping silently would give incomplete results that look complete.
            raise InputFileError(f"cannot list image directory {directory}: {exc.strerror or exc}") from exc
        for entry in listing:
            if _is_hidden(entry.name):
                continue
            try:
                is_dir = entry.is_dir()  # follows symlinks
            except OSError:
                is_dir = False
            if is_dir:
                if recursive:
                    pending.append(Path(entry.path))
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                # Broken links are kept: load_image then reports them instead of losing them here.
                found.append(Path(entry.path))
    found.sort(key=lambda p: p.relative_to(root).parts)
    return found


def discover_images(paths: Sequence[str | os.PathLike[str]], recursive: bool = True) -> list[Path]:
    """Expand files and directories into a deterministic list of image paths.

    * A file named explicitly is kept whatever its extension or name, so a bad file the user asked
      for is reported by :func:`load_image` rather than silently dropped.
    * A directory contributes its files with an :data:`IMAGE_EXTENSIONS` extension
      (case-insensitive), recursively unless ``recursive=False``, skipping hidden files and
      directories (names starting with ``.``), sorted by relative path.
    * Argument order is preserved; a path reached twice is kept at its first position only.

    Raises :class:`InputFileError` if a path does not exist or a directory cannot be listed.
    """
    result: list[Path] = []
    seen: set[str] = set()

    def add(path: Path) -> None:
        key = os.path.normcase(os.path.abspath(path))
        if key not in seen:
            seen.add(key)
            result.append(path)

    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for found in _walk_directory(path, recursive):
                add(found)
        elif path.exists():
            add(path)
        else:
            raise InputFileError(f"image path not found: {path}")
    return result


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def _target_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """Largest size with the same aspect ratio (to rounding) and at most ``max_pixels`` pixels."""
    scale = math.sqrt(max_pixels / (width * height))
    w = max(1, math.floor(width * scale))
    h = max(1, min(math.floor(height * scale), max_pixels // w))
    w = max(1, min(w, max_pixels // h))
    return w, h


def _downscale(img: Image.Image, max_pixels: int) -> Image.Image:
    """Shrink ``img`` under ``max_pixels``; ``reducing_gap`` box-reduces first, keeping it fast."""
    width, height = img.size
    if width * height <= max_pixels:
        return img
    return img.resize(_target_size(width, height, max_pixels), Image.Resampling.LANCZOS, reducing_gap=3.0)


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


def _open_oversized_jpeg(path: Path, bomb: Exception) -> Image.Image:
    """Open a JPEG that Pillow's decompression-bomb check refuses, so it can be drafted small.

    ``Image.open`` refuses images above ``2 * Image.MAX_IMAGE_PIXELS``. JPEG alone can be decoded
    directly at 1/2, 1/4 or 1/8 scale, so for it we bypass the check by constructing the JPEG
    plugin ourselves (the global limit stays untouched) and re-apply the limit to the drafted size
    in :func:`_decode`. Any other format would need full-size memory, so it is refused.
    """
    with open(path, "rb") as handle:
        head = handle.read(3)
    if head != b"\xff\xd8\xff":
        raise ImageLoadError(path, f"image too large to decode safely ({bomb})")
    return JpegImagePlugin.JpegImageFile(os.fspath(path))


def _decode(path: Path, max_pixels: int) -> Image.Image:
    with warnings.catch_warnings():
        # Between MAX_IMAGE_PIXELS and twice that Pillow only warns; we downscale such images
        # below anyway, so the "possible DOS attack" warning would only alarm the user.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        bypassed_bomb_check = False
        try:
            img = Image.open(path)
        except Image.DecompressionBombError as bomb:
            img = _open_oversized_jpeg(path, bomb)
            bypassed_bomb_check = True
        with img:
            width, height = img.size
            if width * height > max_pixels:
                # JPEG: decode at the smallest DCT scale still >= the target (no-op elsewhere).
                img.draft(None, _target_size(width, height, max_pixels))
            limit = Image.MAX_IMAGE_PIXELS
            if bypassed_bomb_check and limit is not None and img.width * img.height > 2 * limit:
                raise ImageLoadError(
                    path, f"image too large to decode safely ({width}x{height} pixels, even at 1/8 scale)"
                )
            img.load()  # decode fully now, so truncation surfaces here and not in a later step
            # A corrupt EXIF block should not cost us otherwise fine pixels: keep them as stored.
            with contextlib.suppress(Exception):
                ImageOps.exif_transpose(img, in_place=True)
            rgb = to_rgb(img)
    return _downscale(rgb, max_pixels)


def _describe(path: Path, exc: BaseException) -> str:
    """A one-line, user-facing reason for a decoding failure."""
    if isinstance(exc, Image.DecompressionBombError):
        return f"image too large to decode safely ({exc})"
    if isinstance(exc, UnidentifiedImageError):
        try:
            with open(path, "rb") as handle:
                head = handle.read(16)
        except OSError:
            head = b""
        for signature, name in _SIGNATURES:
            if head.startswith(signature):
                return f"corrupt or truncated {name} header"
        return "not an image file (or an unsupported image format)"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, MemoryError):
        return "not enough memory to decode"
    if "truncated" in str(exc).lower():
        return "truncated image data"
    if isinstance(exc, ValueError) and "conversion" in str(exc):
        return f"unsupported colour mode ({exc})"
    return f"corrupt or unsupported image data ({type(exc).__name__}: {exc})"


def _check_file(path: Path) -> None:
    """Fail early on what is not a non-empty regular file (opening a FIFO would block forever)."""
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise ImageLoadError(path, "file not found") from exc
    except OSError as exc:
        raise ImageLoadError(path, f"cannot access file ({exc.strerror or exc})") from exc
    if stat.S_ISDIR(st.st_mode):
        raise ImageLoadError(path, "is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise ImageLoadError(path, "not a regular file")
    if st.st_size == 0:
        raise ImageLoadError(path, "empty file")


def load_image(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode ``path`` into a new 8-bit RGB image, or raise :class:`ImageLoadError`.

    Applies the EXIF orientation, converts every mode with :func:`to_rgb` and takes the first
    frame of animations. An image with more than ``max_pixels`` pixels is downscaled, aspect ratio
    kept, to at most ``max_pixels``: JPEGs are decoded directly at reduced scale (``draft``), other
    formats are decoded in full and then resized. A classifier resizes to a few hundred pixels
    anyway, so nothing is lost, but memory stays bounded. Pillow's decompression-bomb limit is
    respected for formats that must be decoded at full size.

    Truncated files are reported, never half-decoded: ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left
    alone (if the application sets it, truncated files will decode with grey fill).
    """
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    path = Path(path)
    _check_file(path)
    try:
        return _decode(path, max_pixels)
    except ImageLoadError:
        raise
    except Exception as exc:  # MemoryError included
        # Any decoder failure is a property of this one file: report it, let the batch go on.
        raise ImageLoadError(path, _describe(path, exc)) from exc


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB image as a contiguous, writable ``uint8`` tensor of shape ``[3, H, W]``."""
    if img.mode != "RGB":
        raise ValueError(f"expected an RGB image (use load_image or to_rgb), got mode {img.mode!r}")
    # np.array copies into a fresh C-ordered buffer (np.asarray alone is read-only, torch warns).
    chw = np.array(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1), order="C")
    return torch.from_numpy(chw)


def iter_loaded(
    paths: Sequence[Path], strict: bool = False, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Iterator[tuple[Path, Image.Image | None, ImageLoadError | None]]:
    """Yield ``(path, image, None)`` or ``(path, None, error)`` for each path, in order.

    A bad file does not stop the iteration unless ``strict`` is true, in which case its
    :class:`ImageLoadError` is raised.
    """
    for path in paths:
        try:
            img = load_image(path, max_pixels=max_pixels)
        except ImageLoadError as exc:
            if strict:
                raise
            yield Path(path), None, exc
        else:
            yield Path(path), img, None
