"""Decoding one file into a bounded-size RGB image, or a per-file :class:`ImageLoadError`."""

from __future__ import annotations

import contextlib
import math
import os
import stat
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from ..errors import InputFileError
from .convert import to_rgb

#: Default pixel budget of a decoded image (64 MP = 192 MB as RGB); larger images are downscaled.
DEFAULT_MAX_PIXELS = 64_000_000

_JPEG_MAGIC = b"\xff\xd8\xff"

# Leading bytes of common formats: lets a file Pillow cannot identify be reported as "corrupt X"
# rather than "not an image".
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (_JPEG_MAGIC, "JPEG"),
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


def _open_oversized_jpeg(path: Path, bomb: Exception) -> Image.Image:
    """Open a JPEG that Pillow's decompression-bomb check refuses, so it can be drafted small.

    ``Image.open`` refuses images above ``2 * Image.MAX_IMAGE_PIXELS``. JPEG alone can be decoded
    directly at 1/2, 1/4 or 1/8 scale, so for it we bypass the check by constructing the JPEG
    plugin ourselves (the global limit stays untouched) and re-apply the limit to the drafted size
    in :func:`_decode`. Any other format would need full-size memory, so it is refused.
    """
    with open(path, "rb") as handle:
        head = handle.read(len(_JPEG_MAGIC))
    if head != _JPEG_MAGIC:
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
