"""On an accelerator the hot path does no float64 work (float64 runs at 1/64 speed on consumer GPUs such as
the paper's RTX 4090, and MPS has none): checked on the CPU, with the pixel arithmetic switched to the
accelerator default (float32), by recording the dtype of every tensor every torch call returns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from absclip import MethodOptions, ZeroShotClassifier, create_backbone
from absclip.pixels import resample
from absclip.views import AbsSamplerConfig, RandomCropConfig
from float64_calls import Float64Calls

SMALL = 4096
"""float64 results up to this many elements are geometry (box corners, per-axis vectors), not pixel work."""

HOST_GEOMETRY = {("pixels/resample.py", name) for name in ("__init__", "taps", "coefficients", "_fixed_point",
                                                             "_filter")} | {("views/augment.py", "ellipse_rings")}
"""Where float64 work is host geometry: the resampler evaluates and quantises Pillow's filter taps,
[n, S, K], on the host in float64 (as Pillow does, in double) and only their float32 coefficients go to
the device; the red-circle augment draws its rings there and moves the booleans."""


def _pixel_work() -> Float64Calls:
    """float64 tensors of more than ``SMALL`` elements made outside the host geometry."""
    return Float64Calls(keep=lambda t: t.numel() > SMALL, allowed=HOST_GEOMETRY)


def _images() -> list[torch.Tensor]:
    g = np.random.default_rng(0)
    return [torch.from_numpy(g.integers(0, 256, (h, w, 3), dtype=np.uint8)).permute(2, 0, 1).contiguous()
            for h, w in ((300, 400), (500, 333))]


@pytest.mark.parametrize(("method", "raw_augment", "feature_augment"),
                         [("abs", "crop", "crop"), ("abs", "mask", "highlight-attn"), ("abs", "highlight", "mask"),
                          ("abs", "redcircle", "highlight-fea"), ("mce", "crop", "crop"), ("zero", "crop", "crop")])
def test_the_accelerator_path_does_no_float64_work(method: str, raw_augment: str, feature_augment: str,
                                                   tiny_openai_checkpoint: Path, descriptions: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    bb = create_backbone(f"openai:{tiny_openai_checkpoint}", pretrained=None, device="cpu")
    options = MethodOptions(saliency="uniform", abs_sampler=AbsSamplerConfig(crops=4),
                            random_crops=RandomCropConfig(crops=4), zero_views=6, raw_augment=raw_augment,
                            feature_augment=feature_augment)
    clf = ZeroShotClassifier(bb, method, ["cat", "dog", "bird"], descriptions, options=options, cache_dir="")
    images = _images()

    # the CPU default (float64, Pillow-exact) does float64 pixel work: the check can see it
    with _pixel_work() as cpu_default:
        clf.predict(images, keys=["a", "b"])
    assert cpu_default.calls, "the recorder saw no float64 work on the CPU default path"

    monkeypatch.setattr(resample, "default_compute_dtype", lambda device: torch.float32)
    with _pixel_work() as accelerator:
        clf.predict(images, keys=["a", "b"])
    assert not accelerator.calls, f"float64 work on the accelerator path: {dict(accelerator.calls)}"
