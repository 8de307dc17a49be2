"""Shared glue for datasets read through torchvision's classes (``download=False``).

torchvision knows each layout and split file, but its classes decode images in ``__getitem__``; we
only want ``(path, label)`` lists, which some classes keep in private attributes (``_images``,
``_image_files``, ``_labels``). Those reads are isolated here so a torchvision change fails with a
clear message instead of an AttributeError deep in an evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ..errors import UnsupportedError
from .base import DatasetRequest, LabelledImages

T = TypeVar("T")


def locate_root(req: DatasetRequest, marker: str) -> Path:
    """The directory to hand torchvision: ROOT, or a parent of it, that contains ``marker``.

    Accepting a parent lets users point ROOT inside the layout (at ``oxford-iiit-pet/`` itself, say).
    """
    if not req.root.is_dir():
        raise req.error(f"dataset root {req.root} does not exist or is not a directory")
    for candidate in (req.root, *req.root.resolve().parents[:2]):
        if (candidate / marker).exists():
            return candidate
    raise req.error(f"{marker} not found in {req.root} or its two parent directories")


def build(req: DatasetRequest, tv_root: Path, make: Callable[[], T]) -> T:
    """Run a torchvision constructor; its 'Dataset not found' and parse errors become one clear line."""
    try:
        return make()
    except (RuntimeError, OSError, ValueError, KeyError, IndexError) as exc:
        problem = f"torchvision could not read the dataset in {tv_root} ({type(exc).__name__}: {exc})"
        raise req.error(problem) from exc


def attribute(dataset: object, name: str) -> Any:
    """Read a (possibly private) attribute torchvision 0.29 has, failing clearly if it was renamed."""
    try:
        return getattr(dataset, name)
    except AttributeError:
        import torchvision

        raise UnsupportedError(
            f"torchvision {torchvision.__version__}: {type(dataset).__name__} has no attribute {name!r}, "
            "which absclip reads to list images without decoding them (written against torchvision 0.29)"
        ) from None


def pair_up(req: DatasetRequest, paths: Sequence[object], labels: Sequence[object]) -> list[tuple[Path, int]]:
    if len(paths) != len(labels):
        raise UnsupportedError(f"{req.name}: torchvision gave {len(paths)} images but {len(labels)} labels")
    return [(Path(str(p)), int(label)) for p, label in zip(paths, labels, strict=True)]  # type: ignore[call-overload]


def load_listed_split(
    req: DatasetRequest, marker: str, split_file: str, make: Callable[[Path], object], *, images: str, what: str
) -> LabelledImages:
    """The usual torchvision dataset: ``make(tv_root)`` lists images (attribute ``images``) and ``_labels``
    from ``marker/split_file``, and its ``classes`` are usable class names.

    ``what`` names the classes in errors ("breeds in annotations/test.txt"), so a short class count
    points at the file that defines them.
    """
    tv_root = locate_root(req, marker)
    ds = build(req, tv_root, lambda: make(tv_root))
    samples = pair_up(req, attribute(ds, images), attribute(ds, "_labels"))
    classes = attribute(ds, "classes")
    data = tv_root / marker
    req.check_count(len(classes), f"{what} in {split_file}", data)
    req.check_files(samples, str(data / split_file))
    return req.make(samples, req.resolve_classes(len(classes), classes))
