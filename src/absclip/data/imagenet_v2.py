"""ImageNetV2 (matched frequency): folders named by ImageNet class index, ``0`` .. ``999``.

The folder name *is* the label, so folders are sorted numerically ("10" after "9"); a lexicographic
sort (ImageFolder's) would scramble the labels of 990 classes.
"""

from __future__ import annotations

from pathlib import Path

from .base import DatasetRequest, LabelledImages, class_folders, folder_samples, register_dataset
from .imagenet import IMAGENET_LABELLED

FOLDER = "imagenetv2-matched-frequency-format-val"


def has_index_folder(directory: Path) -> bool:
    return any(name.isdigit() for name in class_folders(directory))


@register_dataset(
    "imagenet-v2",
    layout=f"ROOT/{FOLDER}/<class index 0..999>/<image> or ROOT/<class index>/<image>",
    num_classes=1000,
    **IMAGENET_LABELLED,
)
def load_imagenet_v2(req: DatasetRequest) -> LabelledImages:
    directory = req.find_dir([req.root / FOLDER, req.root], has_index_folder, "class-index folders (0..999)")
    folders = class_folders(directory)
    strays = [f for f in folders if not f.isdigit()]
    if strays:
        raise req.error(f"{directory} holds folders that are not class indices: {', '.join(strays[:5])}")
    req.check_count(len(folders), "class-index folders", directory)
    folders.sort(key=int)
    if [int(f) for f in folders] != list(range(len(folders))):
        gaps = sorted(set(range(len(folders))) - {int(f) for f in folders})
        raise req.error(f"class-index folders in {directory} skip {gaps[:5]} (want 0..{len(folders) - 1})")
    samples = folder_samples(req, directory, folders)
    return req.make(samples, req.resolve_classes(len(folders), None))
