"""Oxford-IIIT Pet test split (3669 images, 37 breeds) via torchvision's ``OxfordIIITPet``."""

from __future__ import annotations

from ._torchvision import attribute, build, locate_root, pair_up
from .base import DatasetRequest, LabelledImages, register_dataset

FOLDER = "oxford-iiit-pet"


@register_dataset(
    "oxford-pet",
    layout=f"ROOT/{FOLDER}/images/<image>.jpg and ROOT/{FOLDER}/annotations/test.txt (torchvision layout)",
    num_classes=37,
    classnames="classnames/oxford_pet.json",
    descriptions="descriptions/oxford_pet",
)
def load_oxford_pet(req: DatasetRequest) -> LabelledImages:
    from torchvision.datasets import OxfordIIITPet

    tv_root = locate_root(req, FOLDER)
    ds = build(req, tv_root, lambda: OxfordIIITPet(tv_root, split="test", download=False))
    samples = pair_up(req, attribute(ds, "_images"), attribute(ds, "_labels"))
    req.check_count(len(ds.classes), "breeds in annotations/test.txt", tv_root / FOLDER)
    req.check_files(samples, f"{tv_root / FOLDER / 'annotations' / 'test.txt'}")
    return req.make(samples, req.resolve_classes(len(ds.classes), ds.classes))
