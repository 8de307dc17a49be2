"""Image preprocessing shared by the backbones, the saliency sources and the views: the model's
pixel spec, where its input sits on the original image, and Pillow-exact batched crop + resize."""

from .geometry import box_to_window, crop_extents, resized_geometry
from .resample import crop_resize, full_box, preprocess_images
from .spec import OPENAI_MEAN, OPENAI_STD, PreprocessSpec

__all__ = [
    "OPENAI_MEAN",
    "OPENAI_STD",
    "PreprocessSpec",
    "box_to_window",
    "crop_extents",
    "crop_resize",
    "full_box",
    "preprocess_images",
    "resized_geometry",
]
