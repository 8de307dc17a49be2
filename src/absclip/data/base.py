"""Core of the dataset layer: the ``LabelledImages`` type, the dataset registry and shared-data lookups.

Each dataset family lives in its own small module that registers a loader with
``@register_dataset(name, layout=..., ...)``. Loaders only *list* ``(path, label)`` pairs and never
decode images: listing a 50k-image validation set then costs one directory scan, and unreadable
images are handled once, by the caller's robust loader (``absclip.images.load_image``).

Every problem with the files on disk is reported as one :class:`InputFileError` line naming the
dataset, the root that was searched and the layout that was expected, because the typical failure is
a dataset that is missing, half-extracted or pointed at one directory too high or too low.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import Dataset

from ..errors import InputFileError, UnsupportedError
from ..images import walk_image_files
from ..registry import Registry
from ..text.classes import ClassList, load_classes

DATASET_IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"})
"""Same suffixes torchvision's ImageFolder accepts (compared case-insensitively).

Narrower than :data:`absclip.images.IMAGE_EXTENSIONS` on purpose: a dataset split must count
exactly the images torchvision (and the published numbers) count, whatever else lies in its folders.
"""

DESCRIPTION_KINDS = ("cupl", "clip-d", "clip-e")
"""Description files every dataset with a ``descriptions`` folder is expected to have."""


class LabelledImages(Dataset):
    """A labelled evaluation split as ``(image path, class index)`` pairs.

    Items are paths, not decoded images, so the caller decides how to decode (and how to survive a
    corrupt file). ``imagenet_indices`` is set for ImageNet subsets (ImageNet-R/-A): entry ``k`` is
    the ImageNet-1k index of local label ``k``, so an evaluator can score among the subset classes
    with ImageNet-1k text features.
    """

    def __init__(
        self,
        name: str,
        samples: list[tuple[Path, int]],
        classes: ClassList,
        *,
        root: Path | None = None,
        imagenet_indices: list[int] | None = None,
    ) -> None:
        bad = [label for _, label in samples if not 0 <= label < len(classes)]
        if bad:
            raise InputFileError(
                f"{name}: {len(bad)} samples have labels outside 0..{len(classes) - 1} (e.g. {bad[0]}); "
                f"the class list ({classes.source}) does not fit this dataset"
            )
        if imagenet_indices is not None and len(imagenet_indices) != len(classes):
            raise InputFileError(
                f"{name}: {len(imagenet_indices)} ImageNet indices for {len(classes)} classes"
            )
        self.name = name
        self.samples = samples
        self.classes = classes
        self.root = root
        self.imagenet_indices = imagenet_indices

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Path, int]:
        return self.samples[index]

    @property
    def targets(self) -> list[int]:
        """All labels in sample order (what torchvision calls ``targets``)."""
        return [label for _, label in self.samples]

    def __repr__(self) -> str:
        return (
            f"LabelledImages({self.name!r}, {len(self)} images, {len(self.classes)} classes, "
            f"root={self.root})"
        )


@dataclass(frozen=True)
class DatasetInfo:
    """What absclip knows about a dataset, as data: layout text, class count and shared-data files.

    Paths in ``classnames``, ``descriptions`` and ``extra`` are relative to the shared data directory
    (``--data-dir``), which absclip never ships: the files are public research data the user fetches.
    """

    name: str
    layout: str  # expected on-disk layout, shown in every error, e.g. "ROOT/val/<wnid>/<image>"
    num_classes: int | None = None  # fixed class count, checked against what is found on disk
    classnames: str | None = None  # e.g. "classnames/imagenet.json" (names in label order)
    descriptions: str | None = None  # folder holding cupl.json, clip-d.json, clip-e.json
    names_from_data_dir: bool = False  # the dataset's own class ids are not human names (wnids, ...)
    extra: dict[str, str] = field(default_factory=dict)  # other files, kind -> relative path

    def resources(self) -> dict[str, str]:
        """Every shared-data file this dataset can use, kind -> path relative to the data dir."""
        out: dict[str, str] = {}
        if self.classnames:
            out["classnames"] = self.classnames
        if self.descriptions:
            out.update({kind: f"{self.descriptions}/{kind}.json" for kind in DESCRIPTION_KINDS})
        out.update(self.extra)
        return out


Loader = Callable[["DatasetRequest"], LabelledImages]

DATASETS: Registry[LabelledImages] = Registry("dataset")
_INFO: dict[str, DatasetInfo] = {}


def register_dataset(name: str, *, layout: str, **info: object) -> Callable[[Loader], Loader]:
    """Register ``loader(request) -> LabelledImages`` under ``name``; ``info`` fills :class:`DatasetInfo`."""
    dataset_info = DatasetInfo(name=name, layout=layout, **info)  # type: ignore[arg-type]

    def decorator(loader: Loader) -> Loader:
        DATASETS.register(name)(loader)
        _INFO[name] = dataset_info
        return loader

    return decorator


def register_train_split(name: str, *, layout: str) -> Callable[[Loader], Loader]:
    """Register the loader of dataset ``name``'s train split (few-shot support sets, ``--support-split
    train``); it gets the same request as the evaluation loader (same ROOT and class names, so the labels
    agree), with ``layout`` in its errors."""
    def decorator(loader: Loader) -> Loader:
        TRAIN_SPLITS.register(name)(loader)
        _TRAIN_LAYOUTS[name] = layout
        return loader

    return decorator


TRAIN_SPLITS: Registry[LabelledImages] = Registry("train split")
_TRAIN_LAYOUTS: dict[str, str] = {}
SPLITS = ("eval", "train")
"""``create_dataset`` splits: ``eval`` (what the published numbers are measured on: test or val) and ``train``."""


def list_datasets() -> list[str]:
    return DATASETS.names()


def train_split_datasets() -> list[str]:
    """The datasets whose train split absclip can list (``create_dataset(..., split="train")``)."""
    return TRAIN_SPLITS.names()


def dataset_info(name: str) -> DatasetInfo:
    if name not in _INFO:
        known = ", ".join(list_datasets())
        raise UnsupportedError(f"unknown dataset {name!r}; known: {known}")
    return _INFO[name]


def dataset_resources(name: str, data_dir: str | Path, kinds: Iterable[str] | None = None) -> dict[str, Path]:
    """Absolute paths of the shared-data files of ``name`` (all it declares, or just ``kinds``).

    Raises :class:`InputFileError` naming the first missing file, where it was expected and which
    of the dataset's files *are* present, so a wrong ``--data-dir`` is obvious at once.
    """
    info = dataset_info(name)
    declared = info.resources()
    wanted = list(declared) if kinds is None else list(kinds)
    unknown = [k for k in wanted if k not in declared]
    if unknown:
        have = ", ".join(declared) or "none"
        raise UnsupportedError(f"{name}: no shared-data file of kind {unknown[0]!r} (it has: {have})")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputFileError(f"--data-dir {data_dir} is not a directory (it should hold classnames/ ...)")
    paths = {kind: data_dir / declared[kind] for kind in wanted}
    for kind, path in paths.items():
        if not path.is_file():
            present = [k for k, rel in declared.items() if (data_dir / rel).is_file()]
            raise InputFileError(
                f"{name}: {kind} file not found: expected {path} (under --data-dir {data_dir}); "
                f"present for {name}: {', '.join(present) or 'nothing'}"
            )
    return paths


def create_dataset(
    name: str,
    root: str | Path,
    *,
    class_names: ClassList | None = None,
    data_dir: str | Path | None = None,
    split: str = "eval",
) -> LabelledImages:
    """List the evaluation split (or with ``split="train"`` the train split) of dataset ``name`` under ``root``.

    Class names come from ``class_names`` if given, else from the dataset's class-name file under
    ``data_dir``, else (only where they are human-readable) from the dataset's own folder names. Both
    splits are listed from the same ``root`` and get the same class list, so their labels agree.
    """
    info = dataset_info(name)
    loader = DATASETS.get(name)
    if split == "train":
        if name not in TRAIN_SPLITS:
            raise UnsupportedError(
                f"dataset {name!r} has no train split absclip can list (datasets with one: "
                f"{', '.join(train_split_datasets())}); pass --support DIR, an ImageFolder of labelled images"
            )
        info = dataclasses.replace(info, layout=_TRAIN_LAYOUTS[name])
        loader = TRAIN_SPLITS.get(name)
    elif split != "eval":
        raise UnsupportedError(f"unknown split {split!r} of dataset {name!r}; known: {', '.join(SPLITS)}")
    request = DatasetRequest(
        info=info,
        root=Path(root).expanduser(),
        class_names=class_names,
        data_dir=None if data_dir is None else Path(data_dir).expanduser(),
    )
    return loader(request)


@dataclass(frozen=True)
class DatasetRequest:
    """Everything a loader needs, plus the helpers that keep loaders small and errors uniform."""

    info: DatasetInfo
    root: Path
    class_names: ClassList | None = None
    data_dir: Path | None = None

    @property
    def name(self) -> str:
        return self.info.name

    def error(self, problem: str) -> InputFileError:
        """One-line error: dataset, problem (with the paths searched), expected layout."""
        return InputFileError(f"{self.name}: {problem}; expected {self.info.layout} (ROOT={self.root})")

    def find_dir(self, candidates: Sequence[Path], accept: Callable[[Path], bool], what: str) -> Path:
        """The first candidate directory that ``accept`` likes (ROOT itself or a known sub-folder)."""
        if not self.root.is_dir():
            raise self.error(f"dataset root {self.root} does not exist or is not a directory")
        for candidate in candidates:
            if candidate.is_dir() and accept(candidate):
                return candidate
        searched = " or ".join(str(c) for c in dict.fromkeys(candidates))
        raise self.error(f"no {what} in {searched}")

    def check_count(self, found: int, what: str, where: Path) -> None:
        expected = self.info.num_classes
        if expected is not None and found != expected:
            raise self.error(
                f"found {found} {what} in {where} but expected {expected}; the dataset looks "
                "incomplete (half-extracted?) or ROOT points at the wrong directory"
            )

    def resource(self, kind: str) -> Path:
        if self.data_dir is None:
            file = self.info.resources().get(kind, kind)
            raise InputFileError(f"{self.name}: needs {file}; pass --data-dir DIR holding it")
        return dataset_resources(self.name, self.data_dir, [kind])[kind]

    def resolve_classes(self, count: int, own_names: Sequence[str] | None) -> ClassList:
        """Class names for ``count`` classes: ``--classes``, then the data-dir file, then own names.

        ``own_names`` is None where the dataset's ids are not human names (then a file is required).
        """
        if self.class_names is not None:
            classes = self.class_names
        elif self.data_dir is not None and self.info.classnames:
            classes = load_classes(self.resource("classnames"))
        elif own_names is not None and not self.info.names_from_data_dir:
            names = tuple(n.replace("_", " ").strip() for n in own_names)
            return ClassList(names, source=f"{self.name} own class names")
        else:
            file = self.info.classnames or "a class-name file"
            raise InputFileError(
                f"{self.name}: the dataset's own class ids are not usable class names; pass --data-dir "
                f"DIR holding {file}, or --classes FILE with {count} names in label order"
            )
        if len(classes) != count:
            raise InputFileError(
                f"{self.name}: {classes.source} has {len(classes)} class names but the dataset has "
                f"{count} classes"
            )
        return classes

    def check_files(self, samples: Sequence[tuple[Path, int]], listed_in: str) -> None:
        """Fail if listed image files are missing: that is how a half-extracted archive shows."""
        if not samples:
            raise self.error(f"{listed_in} lists no images")
        missing = [p for p, _ in samples if not p.is_file()]
        if missing:
            raise self.error(
                f"{len(missing)} of {len(samples)} images listed in {listed_in} are missing "
                f"(first: {missing[0]}); the dataset looks half-extracted"
            )

    def make(
        self, samples: list[tuple[Path, int]], classes: ClassList, imagenet_indices: list[int] | None = None
    ) -> LabelledImages:
        return LabelledImages(self.name, samples, classes, root=self.root, imagenet_indices=imagenet_indices)


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively and sorted; hidden entries skipped.

    Symlinked directories are followed like ImageFolder does, but each real directory is listed once,
    so a link cycle neither hangs the listing nor counts an image twice.
    """
    return walk_image_files(folder, recursive=True, extensions=DATASET_IMAGE_EXTENSIONS)


def class_folders(directory: Path) -> list[str]:
    """Names of the non-hidden sub-directories of ``directory``, sorted lexicographically."""
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))


def folder_samples(req: DatasetRequest, directory: Path, folders: Sequence[str]) -> list[tuple[Path, int]]:
    """``(path, label)`` for every image, label = position of its folder in ``folders``.

    An empty class folder is an error: every real evaluation split has images in every class, so an
    empty one means an interrupted extraction, which would silently lower accuracy.
    """
    samples: list[tuple[Path, int]] = []
    empty: list[str] = []
    for label, folder in enumerate(folders):
        images = list_images(directory / folder)
        if not images:
            empty.append(folder)
        samples.extend((p, label) for p in images)
    if empty:
        shown = ", ".join(empty[:5]) + (" ..." if len(empty) > 5 else "")
        raise req.error(
            f"{len(empty)} of {len(folders)} class folders in {directory} hold no images ({shown}); "
            "the dataset looks half-extracted"
        )
    return samples


def read_json(path: Path) -> object:
    """Parse a JSON file, turning every failure into an :class:`InputFileError` naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputFileError(f"{path}: not a readable JSON file ({exc})") from exc
