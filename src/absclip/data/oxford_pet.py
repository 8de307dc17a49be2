"""Oxford-IIIT Pet test split (3669 images, 37 breeds) via torchvision's ``OxfordIIITPet``; its trainval
split (``annotations/trainval.txt``, 3680 images, the dataset's only other split) is the train split."""

from __future__ import annotations

from ._torchvision import load_listed_split
from .base import DatasetRequest, LabelledImages, register_dataset, register_train_split

FOLDER = "oxford-iiit-pet"
SPLIT_FILE = "annotations/test.txt"
TRAIN_FILE = "annotations/trainval.txt"


@register_dataset(
    "oxford-pet",
    layout=f"ROOT/{FOLDER}/images/<image>.jpg and ROOT/{FOLDER}/{SPLIT_FILE} (torchvision layout)",
    num_classes=37,
    classnames="classnames/oxford_pet.json",
    descriptions="descriptions/oxford_pet",
)
def load_oxford_pet(req: DatasetRequest) -> LabelledImages:
    from torchvision.datasets import OxfordIIITPet

    return load_listed_split(
        req,
        FOLDER,
        SPLIT_FILE,
        lambda root: OxfordIIITPet(root, split="test", download=False),
        images="_images",
        what="breeds",
    )


@register_train_split("oxford-pet", layout=f"ROOT/{FOLDER}/images/<image>.jpg and ROOT/{FOLDER}/{TRAIN_FILE} "
                      "(torchvision layout)")
def load_oxford_pet_train(req: DatasetRequest) -> LabelledImages:
    from torchvision.datasets import OxfordIIITPet

    return load_listed_split(req, FOLDER, TRAIN_FILE,
                             lambda root: OxfordIIITPet(root, split="trainval", download=False),
                             images="_images", what="breeds")
