"""Describable Textures (DTD) test split of partition 1 (1880 images, 47 classes) via torchvision's ``DTD``.

torchvision nests the archive's ``dtd/`` folder in another ``dtd/``; that layout is required.
"""

from __future__ import annotations

from ._torchvision import attribute, build, locate_root, pair_up
from .base import DatasetRequest, LabelledImages, register_dataset

SPLIT_FILE = "labels/test1.txt"


@register_dataset(
    "dtd",
    layout=f"ROOT/dtd/dtd/images/<class>/<image> and ROOT/dtd/dtd/{SPLIT_FILE} (torchvision layout: "
    "the archive's dtd/ folder inside ROOT/dtd/)",
    num_classes=47,
    classnames="classnames/dtd.json",
    descriptions="descriptions/dtd",
)
def load_dtd(req: DatasetRequest) -> LabelledImages:
    from torchvision.datasets import DTD

    tv_root = locate_root(req, "dtd/dtd")
    ds = build(req, tv_root, lambda: DTD(tv_root, split="test", partition=1, download=False))
    samples = pair_up(req, attribute(ds, "_image_files"), attribute(ds, "_labels"))
    req.check_count(len(ds.classes), f"classes in {SPLIT_FILE}", tv_root / "dtd" / "dtd")
    req.check_files(samples, str(tv_root / "dtd" / "dtd" / SPLIT_FILE))
    return req.make(samples, req.resolve_classes(len(ds.classes), ds.classes))
