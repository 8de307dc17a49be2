"""Finding image files: explicit paths and directory walks, in a deterministic order."""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from pathlib import Path

from ..errors import InputFileError

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


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def walk_image_files(
    root: str | os.PathLike[str], recursive: bool = True, extensions: Collection[str] = IMAGE_EXTENSIONS
) -> list[Path]:
    """Files under ``root`` whose extension (lower-cased, with the dot) is in ``extensions``.

    Hidden files and directories (names starting with ``.``) are skipped; the result is sorted by
    path relative to ``root``. Symlinked directories are followed (datasets are often assembled
    from links) but each real directory is visited once, so link cycles cannot loop forever.
    Raises :class:`InputFileError` if a directory cannot be listed.
    """
    root = Path(root)
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
            elif os.path.splitext(entry.name)[1].lower() in extensions:
                # Broken links are kept: load_image then reports them instead of losing them here.
                found.append(Path(entry.path))
    found.sort(key=lambda p: p.relative_to(root).parts)
    return found


def discover_images(paths: Sequence[str | os.PathLike[str]], recursive: bool = True) -> list[Path]:
    """Expand files and directories into a deterministic list of image paths.

    * A file named explicitly is kept whatever its extension or name, so a bad file the user asked
      for is reported by :func:`~absclip.images.load_image` rather than silently dropped.
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
            for found in walk_image_files(path, recursive):
                add(found)
        elif path.exists():
            add(path)
        else:
            raise InputFileError(f"image path not found: {path}")
    return result
