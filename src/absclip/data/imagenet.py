"""ImageNet-1k validation set in the torchvision/ImageFolder layout (1000 wnid folders, sorted = labels);
the train split (``train/`` beside ``val/``) serves few-shot support sets.

The wnid folder names (``n01440764``) are not class names, so names come from ``--classes`` or the
data dir's ``classnames/imagenet.json``. ImageNet-Sketch and ImageNet-R/-A reuse these helpers.
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import (
    DatasetRequest,
    LabelledImages,
    class_folders,
    folder_samples,
    register_dataset,
    register_train_split,
)

WNID = re.compile(r"^n\d{8}$")

# Files every ImageNet-labelled dataset shares (alternative name lists, synonyms, CuPL base prompts).
IMAGENET_EXTRA = {
    "classnames-openai": "classnames/imagenet_openai.json",
    "synonyms": "classnames/imagenet_synonyms.json",
    "cupl-base": "descriptions/imagenet/cupl-base.json",
}

# DatasetInfo fields of every dataset labelled with ImageNet classes: they share ImageNet's names and
# descriptions, and wnid / index folder names are never human-readable.
IMAGENET_LABELLED: dict[str, object] = {
    "classnames": "classnames/imagenet.json",
    "descriptions": "descriptions/imagenet",
    "names_from_data_dir": True,
    "extra": IMAGENET_EXTRA,
}


def has_wnid_folder(directory: Path) -> bool:
    return any(WNID.match(name) for name in class_folders(directory))


def wnid_samples(req: DatasetRequest, folder: str) -> tuple[Path, list[str], list[tuple[Path, int]]]:
    """Find the wnid folders in ``ROOT/folder`` or ROOT itself; check names and count; list images."""
    directory = req.find_dir(
        [req.root / folder, req.root], has_wnid_folder, "WordNet-id class folders (n01440764, ...)"
    )
    return wnid_folder_samples(req, directory)


def wnid_folder_samples(req: DatasetRequest, directory: Path) -> tuple[Path, list[str], list[tuple[Path, int]]]:
    """Check the wnid folders of ``directory`` (names and count) and list their images."""
    folders = class_folders(directory)
    strays = [f for f in folders if not WNID.match(f)]
    if strays:
        raise req.error(f"{directory} holds folders that are not WordNet ids: {', '.join(strays[:5])}")
    req.check_count(len(folders), "wnid class folders", directory)
    return directory, folders, folder_samples(req, directory, folders)


@register_dataset(
    "imagenet",
    layout="ROOT/val/<wnid>/<image> or ROOT/<wnid>/<image> with 1000 wnid folders (torchvision layout; "
    "the flat ILSVRC val archive must first be sorted into wnid folders, e.g. with valprep.sh)",
    num_classes=1000,
    **IMAGENET_LABELLED,
)
def load_imagenet(req: DatasetRequest) -> LabelledImages:
    directory, folders, samples = wnid_samples(req, "val")
    if directory.name == "train":  # same layout, so only the name tells: never score on training images
        raise req.error(f"{directory} is the training split; point ROOT at the val split or its parent")
    return req.make(samples, req.resolve_classes(len(folders), None))


@register_train_split("imagenet", layout="ROOT/train/<wnid>/<image> with 1000 wnid folders, ROOT being the folder "
                      "that holds val/ (or ROOT the val folder itself, train/ beside it)")
def load_imagenet_train(req: DatasetRequest) -> LabelledImages:
    candidates = [req.root / "train"]
    if req.root.is_dir() and (req.root.name == "val" or has_wnid_folder(req.root)):
        candidates.append(req.root.parent / "train")  # ROOT is the val folder itself
    directory = req.find_dir(candidates, has_wnid_folder, "train split's WordNet-id class folders")
    _, folders, samples = wnid_folder_samples(req, directory)
    return req.make(samples, req.resolve_classes(len(folders), None))
