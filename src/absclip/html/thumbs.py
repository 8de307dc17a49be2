"""Small JPEG thumbnails for the HTML reports: decoded like any absclip input, a few KB each."""

from __future__ import annotations

import base64
import io
import os
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..images import ImageLoadError, load_image

DEFAULT_THUMB_SIZE = 128
# JPEG quality 75 keeps a 128 px photo near 3-5 KB: 10,000 images stay a few tens of MB embedded
JPEG_QUALITY = 75


@dataclass(frozen=True)
class Thumbnail:
    """A JPEG of at most ``size`` px on its longer side, or why there is none (``error``).

    ``width``/``height`` are the decoded image's size (EXIF rotation applied) before shrinking: the size
    crop plans are given in, when the file was decoded whole."""

    jpeg: bytes | None
    width: int
    height: int
    error: str | None = None

    def data_uri(self) -> str | None:
        if self.jpeg is None:
            return None
        return "data:image/jpeg;base64," + base64.b64encode(self.jpeg).decode("ascii")


def make_thumbnail(path: str | os.PathLike[str], size: int = DEFAULT_THUMB_SIZE) -> Thumbnail:
    """Decode ``path`` (every format, mode and EXIF rotation classify accepts) and shrink it.

    The decoder may work at reduced scale: JPEGs are drafted at the smallest DCT scale still at least
    twice the thumbnail, so 10,000 camera photos take minutes, not an hour."""
    try:
        image = load_image(path, max_pixels=(2 * size) ** 2)
    except ImageLoadError as exc:
        return Thumbnail(None, 0, 0, exc.reason)
    width, height = _decoded_size(Path(path), image)
    image.thumbnail((size, size), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return Thumbnail(buffer.getvalue(), width, height)


def _decoded_size(path: Path, image: Image.Image) -> tuple[int, int]:
    """The full-resolution size with EXIF rotation applied (``image`` may have been decoded smaller)."""
    try:
        with Image.open(path) as raw:
            width, height = raw.size
            orientation = raw.getexif().get(0x0112, 1)
    except Exception:  # it decoded a moment ago; if the header now fails, the decoded size will do
        return image.size
    if orientation in (5, 6, 7, 8):  # rotated by 90 or 270 degrees
        width, height = height, width
    return width, height


def make_thumbnails(paths: Sequence[Path | None], size: int = DEFAULT_THUMB_SIZE,
                    workers: int | None = None) -> list[Thumbnail | None]:
    """Thumbnails in the order of ``paths`` (None stays None). Pillow releases the GIL while it decodes
    and resizes, so threads use every core without pickling images between processes."""
    workers = workers or min(8, os.cpu_count() or 1)
    todo = [(i, p) for i, p in enumerate(paths) if p is not None]
    out: list[Thumbnail | None] = [None] * len(paths)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for (i, _), thumb in zip(todo, pool.map(lambda ip: make_thumbnail(ip[1], size), todo), strict=True):
            out[i] = thumb
    return out


def write_thumbnail_folder(folder: Path, thumbs: Sequence[Thumbnail | None]) -> list[str | None]:
    """Write ``folder/NNNNNN.jpg`` for each thumbnail and return the names, relative to the folder's
    parent (what the page links to). The folder is filled under a temporary name and then swapped in,
    so a report never links into a half-written folder."""
    parent = folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=parent))
    names: list[str | None] = []
    try:
        for i, thumb in enumerate(thumbs):
            if thumb is None or thumb.jpeg is None:
                names.append(None)
                continue
            name = f"{i:06d}.jpg"
            (staging / name).write_bytes(thumb.jpeg)
            names.append(f"{folder.name}/{name}")
        staging.chmod(0o755)  # mkdtemp makes it private; a report folder is read like the page beside it
        old = None
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=parent))
            os.replace(folder, old / folder.name)
        os.replace(staging, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return names
