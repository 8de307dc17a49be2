"""CUB-200-2011 test split (and train split), read from the dataset's own index files (no folder scan).

The test split is every image with ``is_training_image == 0`` in ``train_test_split.txt`` (5794
images), the train split every image with 1 (5994, few-shot support sets); labels in
``image_class_labels.txt`` are 1-based and become 0-based. Class ids such as
``001.Black_footed_Albatross`` are not the names used by the papers, so names come from the data
dir's ``classnames/cub.json`` or from ``--classes``.
"""

from __future__ import annotations

from pathlib import Path

from .base import DatasetRequest, LabelledImages, register_dataset, register_train_split

FOLDER = "CUB_200_2011"
INDEX_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")
LAYOUT = (f"ROOT/{FOLDER}/{{{','.join(INDEX_FILES)}}} and ROOT/{FOLDER}/images/<class>/<image> "
          f"(or ROOT being {FOLDER})")


def read_pairs(req: DatasetRequest, path: Path) -> dict[int, str]:
    """``<id> <value>`` lines -> {id: value}; any malformed line is an error naming file and line."""
    pairs: dict[int, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise req.error(f"cannot read {path} ({exc})") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        key, _, value = line.strip().partition(" ")
        if not key.isdigit() or not value.strip():
            raise req.error(f"{path}:{number}: expected '<id> <value>', got {line.strip()!r}")
        pairs[int(key)] = value.strip()
    return pairs


@register_dataset(
    "cub",
    layout=LAYOUT,
    num_classes=200,
    classnames="classnames/cub.json",
    descriptions="descriptions/cub",
    names_from_data_dir=True,
)
def load_cub(req: DatasetRequest) -> LabelledImages:
    return load_cub_split(req, train=False)


@register_train_split("cub", layout=f"{LAYOUT}; the train split: is_training_image 1 in train_test_split.txt")
def load_cub_train(req: DatasetRequest) -> LabelledImages:
    return load_cub_split(req, train=True)


def load_cub_split(req: DatasetRequest, train: bool) -> LabelledImages:
    """The images whose ``is_training_image`` flag is 1 (``train``) or 0, in image-id order."""
    flag, what = ("1", "train") if train else ("0", "test")
    directory = req.find_dir(
        [req.root / FOLDER, req.root], lambda d: (d / "images.txt").is_file(), "images.txt"
    )
    missing = [name for name in INDEX_FILES if not (directory / name).is_file()]
    if missing:
        raise req.error(f"{directory} lacks {', '.join(missing)}")
    images, labels, split, class_ids = (read_pairs(req, directory / name) for name in INDEX_FILES)
    req.check_count(len(class_ids), "classes in classes.txt", directory)
    ids = sorted(i for i, value in split.items() if value == flag)
    unlabelled = [i for i in ids if i not in images or i not in labels]
    if unlabelled:
        raise req.error(f"{what} image id {unlabelled[0]} is missing from images.txt or image_class_labels.txt")
    bad = [i for i in ids if not labels[i].isdigit() or not 1 <= int(labels[i]) <= len(class_ids)]
    if bad:
        raise req.error(f"image {bad[0]} has class {labels[bad[0]]!r}, outside 1..{len(class_ids)}")
    samples = [(directory / "images" / images[i], int(labels[i]) - 1) for i in ids]
    req.check_files(samples, f"{directory / 'images.txt'} ({what} split)")
    return req.make(samples, req.resolve_classes(len(class_ids), None))
