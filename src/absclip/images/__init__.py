"""Image discovery and decoding that turns every bad input into a per-file error, never a crash.

A zero-shot run over thousands of user images must not die on the one truncated JPEG or on a
16-bit scan, so this package:

* finds images deterministically (:func:`discover_images`, :func:`walk_image_files`; in
  :mod:`.discovery`);
* decodes any mode Pillow can open into 8-bit RGB with the *meaning* of the pixels preserved
  (:func:`load_image` in :mod:`.load`, :func:`to_rgb` in :mod:`.convert`) -- e.g. a 16-bit grey
  value of 32768 becomes 128, not 255 as ``Image.convert("RGB")`` would make it;
* reports unreadable files as :class:`ImageLoadError` naming the file and a readable reason;
* bounds memory: images above ``max_pixels`` are downscaled, cheaply via JPEG DCT scaling where
  possible, without touching Pillow's global ``MAX_IMAGE_PIXELS`` or ``LOAD_TRUNCATED_IMAGES``.
"""

from .convert import image_to_tensor, to_rgb
from .discovery import IMAGE_EXTENSIONS, discover_images, walk_image_files
from .load import DEFAULT_MAX_PIXELS, ImageLoadError, iter_loaded, load_image

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ImageLoadError",
    "discover_images",
    "image_to_tensor",
    "iter_loaded",
    "load_image",
    "to_rgb",
    "walk_image_files",
]
