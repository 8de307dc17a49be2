"""Evaluation datasets as ``(image path, label)`` lists with class names in label order.

``create_dataset(name, root, class_names=..., data_dir=...)`` lists a dataset's evaluation split
(``split="train"``: its train split, where the dataset registers one with ``@register_train_split``);
``dataset_resources(name, data_dir)`` finds its class-name and description files in the shared data
directory. Adding a dataset = one small module with a ``@register_dataset("name", layout=...)``
loader, imported below so it registers.
"""

from . import (  # noqa: F401  (imported to register their datasets)
    cub,
    dtd,
    folder,
    food101,
    imagenet,
    imagenet_sketch,
    imagenet_subsets,
    imagenet_v2,
    oxford_pet,
    places365,
    webdataset,
)
from .base import (
    DESCRIPTION_KINDS,
    DatasetInfo,
    DatasetRequest,
    LabelledImages,
    create_dataset,
    dataset_info,
    dataset_resources,
    list_datasets,
    register_dataset,
    register_train_split,
    train_split_datasets,
)
from .files import DataFiles

__all__ = [
    "DESCRIPTION_KINDS",
    "DataFiles",
    "DatasetInfo",
    "DatasetRequest",
    "LabelledImages",
    "create_dataset",
    "dataset_info",
    "dataset_resources",
    "list_datasets",
    "register_dataset",
    "register_train_split",
    "train_split_datasets",
]
