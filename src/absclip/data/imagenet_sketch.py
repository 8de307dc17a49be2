"""ImageNet-Sketch: 1000 wnid folders of sketches, labelled like ImageNet-1k."""

from __future__ import annotations

from .base import DatasetRequest, LabelledImages, register_dataset
from .imagenet import IMAGENET_LABELLED, wnid_samples


@register_dataset(
    "imagenet-sketch",
    layout="ROOT/sketch/<wnid>/<image> or ROOT/<wnid>/<image> with 1000 wnid folders",
    num_classes=1000,
    **IMAGENET_LABELLED,
)
def load_imagenet_sketch(req: DatasetRequest) -> LabelledImages:
    _, folders, samples = wnid_samples(req, "sketch")
    return req.make(samples, req.resolve_classes(len(folders), None))
