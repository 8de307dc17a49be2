"""WebDataset tar shards as an evaluation split: each sample's image with its ``.cls`` class index."""

from __future__ import annotations

from ..webdataset import index_shards
from .base import DatasetRequest, LabelledImages, register_dataset


@register_dataset("webdataset", layout="--root 'SHARDS/{000..099}.tar': uncompressed tars of KEY.jpg (or .png ...) "
                                       "+ KEY.cls (class index) samples; class names from --classes")
def load_webdataset(req: DatasetRequest) -> LabelledImages:
    samples = index_shards(str(req.root))
    unlabelled = [s.key for s in samples if s.label is None]
    if unlabelled:
        raise req.error(f"{len(unlabelled)} samples have no .cls label (first: {unlabelled[0]})")
    if req.class_names is None:
        raise req.error("the shards hold class indices only: pass --classes FILE with the names in label order")
    return LabelledImages(req.name, [(s.image, s.label) for s in samples if s.label is not None],  # type: ignore[misc]
                          req.class_names, root=req.root)
