"""WebDataset input: images (and optional ``.cls`` labels) in tar shards, as big corpora are shipped.

A shard is an uncompressed tar whose members are grouped into samples by key: the member name up to
the first dot of its base name (``shard/000123.jpg`` and ``shard/000123.cls`` are one sample), as the
``webdataset`` library groups them. Shards are indexed once by reading their headers only; each image
is then addressed as a :class:`TarMember` (shard, byte offset, size), which is small, picklable and
read with one seek, so DataLoader workers, torchrun ranks and Ray actors can decode any sample on
their own.
"""

from __future__ import annotations

import glob
import itertools
import os
import re
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputFileError

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "ppm", "gif")
_BRACE = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True)
class TarMember:
    """One member of a tar shard; ``str()`` is its key in results: ``SHARD::MEMBER``."""

    shard: str
    name: str
    offset: int
    size: int

    def __str__(self) -> str:
        return f"{self.shard}::{self.name}"

    def load_image(self, max_pixels: int) -> Any:
        """The member decoded exactly as an image file is (:func:`absclip.images.load_image`, every odd
        mode and size handled the same way), through a private temporary file in memory-backed storage."""
        from .images import ImageLoadError, load_image

        try:
            data = self.read_bytes()
        except OSError as exc:
            raise ImageLoadError(str(self), f"cannot read the shard ({exc})") from None
        scratch = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        with tempfile.NamedTemporaryFile(dir=scratch, suffix=Path(self.name).suffix) as handle:
            handle.write(data)
            handle.flush()
            try:
                return load_image(handle.name, max_pixels=max_pixels)
            except ImageLoadError as exc:
                raise ImageLoadError(str(self), exc.reason) from None

    def read_bytes(self) -> bytes:
        with open(self.shard, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read(self.size)
        if len(data) != self.size:
            raise OSError(f"{self.shard} is truncated: {self.name} needs {self.size} bytes, found {len(data)}")
        return data


@dataclass(frozen=True)
class WdsSample:
    key: str
    image: TarMember
    label: int | None = None


def expand_braces(pattern: str) -> list[str]:
    """``shards/{000..002}.tar`` -> three names (zero padding kept); ``{a,b}`` -> two; nested ranges multiply."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body = match.group(1)
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        lo, hi = numeric.groups()
        width = len(lo) if lo.startswith("0") else 0
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [name for option in options for name in expand_braces(head + option + tail)]


def shard_paths(pattern: str) -> list[str]:
    """The shards a pattern names (braces, then globs), each existing, in order."""
    names = list(itertools.chain.from_iterable(sorted(glob.glob(n)) if glob.has_magic(n) else [n]
                                               for n in expand_braces(pattern)))
    if not names:
        raise InputFileError(f"--webdataset {pattern!r} names no shard")
    missing = [n for n in names if not Path(n).is_file()]
    if missing:
        raise InputFileError(f"--webdataset: shard {missing[0]} not found ({len(missing)} of {len(names)} missing)")
    return names


def _sample_key(name: str) -> tuple[str, str]:
    """(key, suffix) of a member name, webdataset-style: the suffix is everything after the first dot
    of the base name."""
    directory, _, base = name.rpartition("/")
    stem, _, suffix = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), suffix.lower()


def iter_shard(shard: str) -> Iterator[WdsSample]:
    """The samples of one shard with an image, in tar order; a sample's ``.cls`` member is its label."""
    try:
        archive = tarfile.open(shard, mode="r:")  # noqa: SIM115  (closed below; uncompressed: addressable by offset)
    except (tarfile.TarError, OSError) as exc:
        raise InputFileError(f"{shard}: not an uncompressed tar shard ({exc})") from None
    with archive:
        current: str | None = None
        image: TarMember | None = None
        label: int | None = None
        for member in archive:
            if not member.isfile():
                continue
            key, suffix = _sample_key(member.name)
            if key != current:
                if image is not None and current is not None:
                    yield WdsSample(current, image, label)
                current, image, label = key, None, None
            if suffix in IMAGE_SUFFIXES and image is None:
                image = TarMember(shard, member.name, member.offset_data, member.size)
            elif suffix == "cls":
                handle = archive.extractfile(member)
                text = handle.read().decode("utf-8", "replace").strip() if handle else ""
                try:
                    label = int(text)
                except ValueError:
                    raise InputFileError(f"{shard}: {member.name} holds {text[:20]!r}, not a class index") from None
        if image is not None and current is not None:
            yield WdsSample(current, image, label)


def index_shards(pattern: str | Sequence[str]) -> list[WdsSample]:
    """Every sample of every shard of ``pattern`` (one pattern or several), in order."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    return [s for p in patterns for shard in shard_paths(p) for s in iter_shard(shard)]
