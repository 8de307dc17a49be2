"""Food-101 test split (25250 images, 101 dishes) via torchvision's ``Food101``; its train split
(``meta/train.json``, 75750 images) serves few-shot support sets."""

from __future__ import annotations

from ._torchvision import load_listed_split
from .base import DatasetRequest, LabelledImages, register_dataset, register_train_split

FOLDER = "food-101"
SPLIT_FILE = "meta/test.json"
TRAIN_FILE = "meta/train.json"


@register_dataset(
    "food101",
    layout=f"ROOT/{FOLDER}/images/<class>/<image>.jpg and ROOT/{FOLDER}/{SPLIT_FILE} (torchvision layout)",
    num_classes=101,
    classnames="classnames/food101.json",
    descriptions="descriptions/food101",
)
def load_food101(req: DatasetRequest) -> LabelledImages:
    from torchvision.datasets import Food101

    return load_listed_split(
        req,
        FOLDER,
        SPLIT_FILE,
        lambda root: Food101(root, split="test", download=False),
        images="_image_files",
        what="classes",
    )


@register_train_split("food101", layout=f"ROOT/{FOLDER}/images/<class>/<image>.jpg and ROOT/{FOLDER}/{TRAIN_FILE} "
                      "(torchvision layout)")
def load_food101_train(req: DatasetRequest) -> LabelledImages:
    from torchvision.datasets import Food101

    return load_listed_split(req, FOLDER, TRAIN_FILE, lambda root: Food101(root, split="train", download=False),
                             images="_image_files", what="classes")
