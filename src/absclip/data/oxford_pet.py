"""Oxford-IIIT Pet test split (3669 images, 37 breeds) via torchvision's ``OxfordIIITPet``."""

from __future__ import annotations

from ._torchvision import load_listed_split
from .base import DatasetRequest, LabelledImages, register_dataset

FOLDER = "oxford-iiit-pet"
SPLIT_FILE = "annotations/test.txt"


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
