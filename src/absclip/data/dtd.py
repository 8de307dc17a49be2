"""Describable Textures (DTD) test split of partition 1 (1880 images, 47 classes) via torchvision's ``DTD``;
its train split (``labels/train1.txt``, 1880 images) serves few-shot support sets.

torchvision nests the archive's ``dtd/`` folder in another ``dtd/``; that layout is required.
"""

from __future__ import annotations

from ._torchvision import load_listed_split
from .base import DatasetRequest, LabelledImages, register_dataset, register_train_split

FOLDER = "dtd/dtd"
SPLIT_FILE = "labels/test1.txt"
TRAIN_FILE = "labels/train1.txt"


@register_dataset(
    "dtd",
    layout=f"ROOT/{FOLDER}/images/<class>/<image> and ROOT/{FOLDER}/{SPLIT_FILE} (torchvision layout: "
    "the archive's dtd/ folder inside ROOT/dtd/)",
    num_classes=47,
    classnames="classnames/dtd.json",
    descriptions="descriptions/dtd",
)
def load_dtd(req: DatasetRequest) -> LabelledImages:
    from torchvision.datasets import DTD

    return load_listed_split(
        req,
        FOLDER,
        SPLIT_FILE,
        lambda root: DTD(root, split="test", partition=1, download=False),
        images="_image_files",
        what="classes",
    )


@register_train_split("dtd", layout=f"ROOT/{FOLDER}/images/<class>/<image> and ROOT/{FOLDER}/{TRAIN_FILE} "
                      "(torchvision layout)")
def load_dtd_train(req: DatasetRequest) -> LabelledImages:
    from torchvision.datasets import DTD

    return load_listed_split(req, FOLDER, TRAIN_FILE, lambda root: DTD(root, split="train", partition=1,
                                                                        download=False),
                             images="_image_files", what="classes")
