"""Places365-Standard validation split (36500 images, 365 scenes) via torchvision's ``Places365``.

Whichever image set is extracted is used: ``val_256/`` (the small 256x256 images, preferred when
both exist) or ``val_large/``. torchvision checks the devkit files' MD5 sums, so a damaged or
re-generated ``places365_val.txt`` is rejected. Category ids like ``/a/airfield`` are not the
papers' names: names come from the data dir's ``classnames/place365.json`` or ``--classes``. The train
split (few-shot support sets) is Places365-Standard's, from ``places365_train_standard.txt`` and
``data_256_standard/`` (or ``data_large_standard/``), torchvision's names for the extracted archives.
"""

from __future__ import annotations

from ._torchvision import attribute, build, locate_root, pair_up
from .base import DatasetRequest, LabelledImages, register_dataset, register_train_split

CATEGORIES = "categories_places365.txt"
FILE_LIST = "places365_val.txt"
TRAIN_LIST = "places365_train_standard.txt"


@register_dataset(
    "places365",
    layout=f"ROOT/{CATEGORIES}, ROOT/{FILE_LIST} and ROOT/val_256/<image> or ROOT/val_large/<image> "
    "(torchvision layout: filelist_places365-standard.tar and val_256.tar extracted into ROOT)",
    num_classes=365,
    classnames="classnames/place365.json",
    descriptions="descriptions/place365",
    names_from_data_dir=True,
)
def load_places365(req: DatasetRequest) -> LabelledImages:
    return load_places_split(req, "val", ("val_256", "val_large"), FILE_LIST)


@register_train_split("places365", layout=f"ROOT/{CATEGORIES}, ROOT/{TRAIN_LIST} and ROOT/data_256_standard/... "
                      "or ROOT/data_large_standard/... (torchvision's names for the extracted train archive)")
def load_places365_train(req: DatasetRequest) -> LabelledImages:
    return load_places_split(req, "train-standard", ("data_256_standard", "data_large_standard"), TRAIN_LIST)


def load_places_split(req: DatasetRequest, split: str, image_dirs: tuple[str, str], file_list: str) -> LabelledImages:
    """torchvision's ``split`` with whichever of the (small, large) image folders is extracted."""
    from torchvision.datasets import Places365

    tv_root = locate_root(req, CATEGORIES)
    if (tv_root / image_dirs[0]).is_dir():
        small = True
    elif (tv_root / image_dirs[1]).is_dir():
        small = False
    else:
        raise req.error(f"neither {image_dirs[0]}/ nor {image_dirs[1]}/ in {tv_root} (image archive not extracted?)")
    ds = build(req, tv_root, lambda: Places365(tv_root, split=split, small=small, download=False))
    images = attribute(ds, "imgs")
    samples = pair_up(req, [p for p, _ in images], [label for _, label in images])
    req.check_count(len(ds.classes), f"categories in {CATEGORIES}", tv_root)
    req.check_files(samples, str(tv_root / file_list))
    return req.make(samples, req.resolve_classes(len(ds.classes), None))
