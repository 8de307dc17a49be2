"""The small ImageFolder datasets the eval, reproduce and method tests build: classes × 2 random images of
different sizes (thin, square, landscape, portrait), drawn from one seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["cat", "dog", "bird"]
SIZES = [(64, 48), (40, 90), (33, 33), (50, 50), (70, 40), (36, 60)]  # (width, height), two per class


def write_folder_dataset(root: Path, seed: int, broken: bytes | None = None) -> Path:
    """``root/<class>/{0,1}.png`` for :data:`CLASSES`; with ``broken``, also ``root/dog/broken.png`` holding
    those bytes (an unreadable file the run must report and skip)."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(2):
            w, h = SIZES[2 * c + i]
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    if broken is not None:
        (root / "dog" / "broken.png").write_bytes(broken)
    return root
