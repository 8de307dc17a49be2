"""ImageNet-R and ImageNet-A: 200-class ImageNet subsets stored as 200 wnid folders.

Labels are positions in the sorted folder list (0..199). ``imagenet_indices`` maps each to its
ImageNet-1k index (from ``classnames/imagenet_{r,a}_indices.json``), so an evaluator can reuse
ImageNet-1k text features and predict among just these 200 classes, as the published numbers do.
Sorted wnids are ImageNet-1k's own order, so the indices must be strictly increasing; that is checked.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

from ..errors import InputFileError
from ..text.classes import load_classes
from .base import DatasetRequest, LabelledImages, read_json, register_dataset
from .imagenet import IMAGENET_EXTRA, IMAGENET_LABELLED, wnid_samples

IMAGENET_CLASSES = 1000


def read_subset_indices(path: Path, count: int) -> list[int]:
    data = read_json(path)
    if not (isinstance(data, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in data)):
        raise InputFileError(f"{path}: expected a JSON list of ImageNet class indices")
    if len(data) != count:
        raise InputFileError(f"{path}: {len(data)} indices, but the dataset has {count} classes")
    if any(not 0 <= i < IMAGENET_CLASSES for i in data) or any(a >= b for a, b in pairwise(data)):
        raise InputFileError(
            f"{path}: indices must be strictly increasing within 0..{IMAGENET_CLASSES - 1} "
            "(sorted wnid folders follow ImageNet's own order)"
        )
    return data


def load_subset(req: DatasetRequest, folder: str) -> LabelledImages:
    _, folders, samples = wnid_samples(req, folder)
    count = len(folders)
    indices = read_subset_indices(req.resource("indices"), count) if req.data_dir is not None else None
    names = req.class_names
    if names is None:
        if req.data_dir is None:
            return req.make(samples, req.resolve_classes(count, None))  # raises: explains the options
        names = load_classes(req.resource("classnames"))
    if len(names) == IMAGENET_CLASSES:  # a full ImageNet list: keep this dataset's classes
        if indices is None:
            raise InputFileError(
                f"{req.name}: {names.source} lists all {IMAGENET_CLASSES} ImageNet classes; pass "
                f"--data-dir DIR holding {req.info.extra['indices']} to pick this dataset's {count}, "
                f"or --classes with {count} names"
            )
        names = names.subset(indices)
    if len(names) != count:
        raise InputFileError(f"{req.name}: {names.source} has {len(names)} class names for {count} classes")
    return req.make(samples, names, imagenet_indices=indices)


def _info(short: str) -> dict[str, object]:
    return {
        **IMAGENET_LABELLED,
        "layout": f"ROOT/imagenet-{short}/<wnid>/<image> or ROOT/<wnid>/<image> with 200 wnid folders",
        "num_classes": 200,
        "extra": {**IMAGENET_EXTRA, "indices": f"classnames/imagenet_{short}_indices.json"},
    }


@register_dataset("imagenet-r", **_info("r"))
def load_imagenet_r(req: DatasetRequest) -> LabelledImages:
    return load_subset(req, "imagenet-r")


@register_dataset("imagenet-a", **_info("a"))
def load_imagenet_a(req: DatasetRequest) -> LabelledImages:
    return load_subset(req, "imagenet-a")
