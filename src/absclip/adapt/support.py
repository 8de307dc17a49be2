"""Few-shot support sets: which support folder holds which evaluated class, and the seeded K-shot draw.

Class matching, in this order (the first rule that covers every class wins, so nothing is matched by a
guess):

1. ImageNet's convention: when the evaluated dataset is ImageNet-labelled and the support folder holds
   the 1000 WordNet-id folders, label k is the k-th sorted wnid (what torchvision and absclip's ImageNet
   loaders assume); ImageNet-R/-A classes go through their ImageNet indices. So ImageNet's train split
   is the support of ImageNet, -V2, -Sketch, -R and -A alike (ABS Table 3's protocol).
2. Per class, the folder named like the class's own folder in the evaluated dataset (``train/dog`` for
   ``test/dog``, CUB's ``001.Black_footed_Albatross`` ...), else the folder whose name, with ``_`` read
   as a space, is the class name (case-insensitive).

A class with no folder, or fewer images than asked, is an error naming it. Support images that are also
evaluated images are left out (and counted), so a folder holding both splits never leaks test images.

``adapt.support = "split:train"`` (``--support-split train``) draws from the evaluated dataset's own train
split instead, listed by the dataset's train-split loader from the same ROOT with the same class list, so
the labels need no matching (:func:`split_pool`).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data import LabelledImages, create_dataset, dataset_info, train_split_datasets
from ..data.base import class_folders, list_images
from ..errors import InputFileError, UnsupportedError
from ..views import ViewSet
from .options import SPLIT_PREFIX

WNID = re.compile(r"^n\d{8}$")
IMAGENET_CLASSNAMES = "classnames/imagenet.json"


@dataclass
class SupportPool:
    """Every usable support image per evaluated class (sorted paths), and what was left out.

    ``split`` is None for a support folder (``root``), else the evaluated dataset's split drawn from
    (``root`` is then the dataset's ROOT); ``folders`` name each class's folder ('' where a split keeps
    the images of several classes in one folder, as Oxford Pets does)."""

    root: Path
    candidates: list[list[Path]]
    folders: list[str]
    excluded_test_images: int = 0
    unmatched_folders: list[str] = field(default_factory=list)
    split: str | None = None

    @property
    def source(self) -> str:
        """The option that chose this pool, as error messages name it."""
        return f"--support {self.root}" if self.split is None else f"--support-split {self.split} ({self.root})"

    def describe(self, label: int, classes: Sequence[str]) -> str:
        """``class 'bird' (bird/)``: the class and where its support images are."""
        folder = self.folders[label]
        return f"class {classes[label]!r}" + (f" ({folder}/)" if folder else "")


@dataclass
class SupportDraw:
    """The K shots (and GDA's held-out validation images) drawn for one seed, as labelled image lists."""

    shots: LabelledImages
    validation: LabelledImages | None
    seed: int
    requested: int
    pool: SupportPool

    @property
    def digest(self) -> str:
        return self.shots.name.rsplit(":", 1)[-1]


@dataclass
class LabelledViews:
    """Support views (rows in draw order) with their labels [N] in the evaluated class indices."""

    views: ViewSet
    labels: torch.Tensor
    paths: list[str]

    def counts(self, num_classes: int) -> list[int]:
        return torch.bincount(self.labels, minlength=num_classes).tolist()


def _is_imagenet_labelled(dataset: LabelledImages) -> bool:
    try:
        return dataset_info(dataset.name).classnames == IMAGENET_CLASSNAMES
    except UnsupportedError:  # a dataset built in code, not through the registry
        return False


def _own_folders(dataset: LabelledImages) -> list[str | None]:
    """The folder name of each class's images in the evaluated dataset (None if they differ)."""
    seen: dict[int, set[str]] = {}
    for path, label in dataset.samples:
        seen.setdefault(label, set()).add(Path(path).parent.name)
    return [next(iter(seen[c])) if len(seen.get(c, ())) == 1 else None for c in range(len(dataset.classes))]


def match_support(root: str | Path, evaluated: LabelledImages,
                  warn: Callable[[str], None] | None = None) -> SupportPool:
    """The support folder's images of every class of ``evaluated``; raises naming the first class it lacks.

    ``root`` = ``split:train``: the evaluated dataset's own train split (:func:`split_pool`)."""
    if str(root).startswith(SPLIT_PREFIX):
        return split_pool(str(root)[len(SPLIT_PREFIX):], evaluated, warn)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputFileError(f"--support {root} is not a directory (expected <class folder>/<image>)")
    folders = class_folders(root)
    if not folders:
        raise InputFileError(f"--support {root} has no class folders (expected <class folder>/<image>)")
    classes = evaluated.classes
    chosen: list[str | None]
    if _is_imagenet_labelled(evaluated) and len(folders) == 1000 and all(WNID.match(f) for f in folders):
        indices = evaluated.imagenet_indices or list(range(len(classes)))
        if len(indices) != len(classes) or max(indices) >= 1000:
            raise InputFileError(f"--support {root}: 1000 wnid folders, but {evaluated.name}'s {len(classes)} "
                                 "classes are not ImageNet-1k indices")
        chosen = [folders[i] for i in indices]
    else:
        by_name = {f.replace("_", " ").strip().casefold(): f for f in folders}
        own = _own_folders(evaluated)
        chosen = [own[c] if own[c] in folders else by_name.get(classes[c].strip().casefold())
                  for c in range(len(classes))]
    missing = [c for c, f in enumerate(chosen) if f is None]
    if missing:
        shown = ", ".join(f"{classes[c]!r} (class {c})" for c in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise InputFileError(f"--support {root} has no class folder for {len(missing)} of {len(classes)} classes: "
                             f"{shown}; folders are matched to the evaluated classes by folder name or class name")
    repeated = {f for f in chosen if chosen.count(f) > 1}
    if repeated:
        f = sorted(str(r) for r in repeated)[0]
        names = [classes[c] for c, g in enumerate(chosen) if g == f]
        raise InputFileError(f"--support {root}: folder {f!r} matches several classes ({names}); rename them")
    test_images = {Path(p).resolve() for p, _ in evaluated.samples}
    candidates, excluded = [], 0
    for folder in chosen:
        assert folder is not None
        images = list_images(root / folder)
        kept = [p for p in images if p.resolve() not in test_images]
        excluded += len(images) - len(kept)
        candidates.append(kept)
    unmatched = sorted(set(folders) - {f for f in chosen if f is not None})
    if warn is not None and unmatched:
        warn(f"--support {root}: {len(unmatched)} class folders match no evaluated class and are not used "
             f"({', '.join(unmatched[:5])}{' ...' if len(unmatched) > 5 else ''})")
    if warn is not None and excluded:
        warn(f"--support {root}: {excluded} images are also evaluated images and are left out of the support set")
    return SupportPool(root, candidates, [str(f) for f in chosen], excluded, unmatched)


IMAGENET_TRAIN_HINT = ("; ImageNet's train split serves every ImageNet-labelled set (ABS Table 3's protocol): "
                       "pass --support IMAGENET_ROOT/train")


def split_pool(split: str, evaluated: LabelledImages, warn: Callable[[str], None] | None = None) -> SupportPool:
    """The images of ``split`` of the evaluated dataset itself, per class (``--support-split train``).

    Listed by the dataset's own split loader from the evaluated ROOT with the evaluated class list, so label
    k is class k in both splits; evaluated images found in it too are left out (and counted)."""
    option = f"--support-split {split}"
    if split != "train":
        raise InputFileError(f"{option}: unknown split; the support set can come from: train")
    if evaluated.name not in train_split_datasets() or evaluated.root is None:
        hint = IMAGENET_TRAIN_HINT if _is_imagenet_labelled(evaluated) else ""
        raise InputFileError(f"{option}: dataset {evaluated.name!r} has no train split absclip can list "
                             f"(datasets with one: {', '.join(train_split_datasets())}); pass --support DIR, an "
                             f"ImageFolder of labelled images, instead{hint}")
    train = create_dataset(evaluated.name, evaluated.root, class_names=evaluated.classes, split=split)
    if train.classes.names != evaluated.classes.names:
        raise InputFileError(f"{option}: {evaluated.name}'s train split has other classes than its evaluated split "
                             f"({len(train.classes)} vs {len(evaluated.classes)})")
    test_images = {Path(p) for p, _ in evaluated.samples}
    candidates: list[list[Path]] = [[] for _ in evaluated.classes.names]
    excluded = 0
    for path, label in train.samples:
        if Path(path) in test_images:
            excluded += 1
        else:
            candidates[label].append(Path(path))
    own = _own_folders(train)
    folders = [f if f is not None and own.count(f) == 1 else "" for f in own]  # '' where classes share one
    if warn is not None and excluded:
        warn(f"{option}: {excluded} train-split images are also evaluated images and are left out")
    return SupportPool(evaluated.root, [sorted(c) for c in candidates], folders, excluded, split=split)


def draw_support(pool: SupportPool, evaluated: LabelledImages, shots: int, seed: int,
                 validation: int = 0) -> SupportDraw:
    """``shots`` images per class (and ``validation`` more, disjoint) drawn with ``seed``.

    Each class is drawn by its own generator seeded with (seed, class index), so a class's shots do not
    depend on the other classes or on their order; raises naming the first class with too few images.
    """
    need = shots + validation
    short = [c for c, images in enumerate(pool.candidates) if len(images) < need]
    if short:
        c = short[0]
        what = f"{shots} shots" + (f" + {validation} validation images (GDA's α search)" if validation else "")
        raise InputFileError(
            f"{pool.source}: {pool.describe(c, evaluated.classes.names)} has "
            f"{len(pool.candidates[c])} usable images, fewer than the {need} needed for {what}"
            + (f"; {len(short) - 1} more classes are short" if len(short) > 1 else "")
            + ("; pass --gda-alpha A to skip the search" if validation else ""))
    train: list[tuple[Path, int]] = []
    held: list[tuple[Path, int]] = []
    for c, images in enumerate(pool.candidates):
        picked = random.Random(f"absclip-support:{seed}:{c}").sample(images, need)
        train.extend((p, c) for p in picked[:shots])
        held.extend((p, c) for p in picked[shots:])
    base = f"{evaluated.name}:support"
    shots_ds = LabelledImages(f"{base}:{_digest(train)}", train, evaluated.classes, root=pool.root)
    val_ds = (LabelledImages(f"{base}-val:{_digest(held)}", held, evaluated.classes, root=pool.root)
              if validation else None)
    return SupportDraw(shots_ds, val_ds, seed, shots, pool)


def _digest(samples: Sequence[tuple[Path, int]]) -> str:
    """Names the draw in the view cache's key: another draw is another cache entry, the same draw a hit."""
    text = "\n".join(f"{label}\t{path}" for path, label in samples)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def check_counts(views: LabelledViews, draw: SupportDraw, what: str) -> list[int]:
    """Shots actually used per class; a class left with none (all its drawn images unreadable) is an error."""
    counts = views.counts(len(draw.shots.classes))
    empty = [c for c, n in enumerate(counts) if n == 0]
    if empty:
        raise InputFileError(f"{draw.pool.source}: no readable {what} image left for "
                             f"{draw.pool.describe(empty[0], draw.shots.classes.names)}")
    return counts


def support_record(draw: SupportDraw, used: list[int], val_used: list[int] | None) -> dict[str, Any]:
    """What a record states about the support set: where, how many asked and used per class, which draw."""
    return {
        "root": str(draw.pool.root),
        "split": draw.pool.split,
        "shots": draw.requested,
        "seed": draw.seed,
        "draw": draw.digest,
        "shots_used": used,
        "validation_used": val_used,
        "excluded_test_images": draw.pool.excluded_test_images,
    }
