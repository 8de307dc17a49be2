"""Food-101 test split (25250 images, 101 dishes) via torchvision's ``Food101``."""

from __future__ import annotations

from ._torchvision import attribute, build, locate_root, pair_up
from .base import DatasetRequest, LabelledImages, register_dataset

FOLDER = "food-101"


@register_dataset(
    "food101",
    layout=f"ROOT/{FOLDER}/images/<class>/<image>.jpg and ROOT/{FOLDER}/meta/test.json (torchvision layout)",
    num_classes=101,
    classnames="classnames/food101.json",
    descriptions="descriptions/food101",
)
def load_food101(req: DatasetRequest) -> LabelledImages:
    from torchvision.datasets import Food101

    tv_root = locate_root(req, FOLDER)
    ds = build(req, tv_root, lambda: Food101(tv_root, split="test", download=False))
    samples = pair_up(req, attribute(ds, "_image_files"), attribute(ds, "_labels"))
    req.check_count(len(ds.classes), "classes in meta/test.json", tv_root / FOLDER)
    req.check_files(samples, str(tv_root / FOLDER / "meta" / "test.json"))
    return req.make(samples, req.resolve_classes(len(ds.classes), ds.classes))
