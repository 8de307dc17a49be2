"""Saliency sources (DESIGN.md §2): DINO v1 / DINOv2 (with and without registers) through transformers,
the VLM's own CLS attention, and the uniform map; each checked against an independent eager computation
of the same attention (``output_attentions`` / ``need_weights``) on tiny random models."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from absclip.attention import SALIENCY, UniformSaliency, create_saliency
from absclip.backbones import Backbone, create_backbone
from absclip.errors import AbsclipError, UnsupportedError, WeightsNotFoundError
from absclip.methods import MethodOptions, create_method
from absclip.pixels.resample import crop_resize
from absclip.views import AbsSamplerConfig, ViewExtractor


def _sharpen(q: torch.nn.Linear, k: torch.nn.Linear, std: float = 0.3) -> None:
    """Random init (std 0.02) gives nearly uniform attention; larger query/key weights make the map peaked,
    so that a wrong head average, softmax or token offset cannot hide in a flat map."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        q.weight.copy_(torch.randn(q.weight.shape, generator=g) * std)
        k.weight.copy_(torch.randn(k.weight.shape, generator=g) * std)


def _save(model: torch.nn.Module, directory: Path) -> Path:
    last = model.layers[-1] if hasattr(model, "layers") else model.encoder.layer[-1]
    _sharpen(last.attention.q_proj, last.attention.k_proj)
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def dino_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from transformers import (
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
        ViTConfig,
        ViTModel,
    )

    root = tmp_path_factory.mktemp("saliency")
    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 224}
    torch.manual_seed(10)
    v1 = ViTModel(ViTConfig(**small, intermediate_size=64, patch_size=16), add_pooling_layer=False)
    torch.manual_seed(11)
    v2r = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**small, mlp_ratio=2, patch_size=14,
                                                             num_register_tokens=4))
    torch.manual_seed(12)
    v2 = Dinov2Model(Dinov2Config(**small, mlp_ratio=2, patch_size=14))
    return {"dino": _save(v1.eval(), root / "dino_v1"), "dinov2-reg": _save(v2r.eval(), root / "dinov2_reg"),
            "dinov2": _save(v2.eval(), root / "dinov2")}


@pytest.fixture(scope="module")
def tiny(tiny_open_clip_checkpoint: tuple[str, Path]) -> Backbone:
    name, path = tiny_open_clip_checkpoint
    bb = create_backbone(f"open_clip:{name}", pretrained=str(path), device="cpu")
    last = bb._blocks()[-1]
    with torch.no_grad():  # sharpen the CLS attention of the last block (rows [q; k; v] of in_proj)
        last.attn.in_proj_weight[: 2 * last.attn.embed_dim].mul_(6.0)
    return bb


def _images() -> list[torch.Tensor]:
    g = np.random.default_rng(0)
    sizes = [(64, 32), (30, 50), (224, 224), (301, 97)]  # (width, height)
    out = []
    for w, h in sizes:
        yy, xx = np.mgrid[0:h, 0:w]
        smooth = np.stack([127 + 120 * np.sin(xx / 5), 127 + 120 * np.cos(yy / 4), np.zeros_like(xx)], -1)
        noise = g.integers(-40, 40, (h, w, 3))
        out.append(torch.from_numpy((smooth + noise).clip(0, 255).astype(np.uint8)).permute(2, 0, 1))
    return out


def _pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def _squashed(images: list[torch.Tensor], resample: Image.Resampling, mean: tuple[float, ...],
              std: tuple[float, ...]) -> torch.Tensor:
    """The DINO input built with PIL: squash to 224×224, scale to [0, 1], normalise."""
    out = []
    for im in images:
        arr = np.asarray(_pil(im).resize((224, 224), resample), dtype=np.float32) / 255.0
        out.append((torch.from_numpy(arr).permute(2, 0, 1) - torch.tensor(mean).view(3, 1, 1))
                   / torch.tensor(std).view(3, 1, 1))
    return torch.stack(out)


IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
DINO_CASES = {
    # name: (spec prefix, grid, skipped tokens, PIL filter, mean, std)
    "dino": ("dino", 14, 1, Image.Resampling.BILINEAR, (0.5,) * 3, (0.5,) * 3),
    "dinov2-reg": ("dinov2", 16, 5, Image.Resampling.BICUBIC, *IMAGENET),
    "dinov2": ("dinov2", 16, 1, Image.Resampling.BICUBIC, *IMAGENET),
}


@pytest.mark.parametrize("case", list(DINO_CASES))
def test_dino_saliency_equals_eager_attention(case: str, dino_dirs: dict[str, Path], tiny: Backbone) -> None:
    from transformers import AutoModel

    prefix, grid, skip, resample, mean, std = DINO_CASES[case]
    directory = dino_dirs[case]
    source = create_saliency(f"{prefix}:{directory}", tiny)
    assert source.spec.resize_mode == "squash" and source.spec.size == 224
    assert source.spec.mean == mean and source.spec.std == std
    images = _images()
    sal = source(images)
    assert sal.informative
    assert sal.maps.shape == (len(images), grid, grid) and sal.maps.dtype == torch.float32
    assert (sal.maps >= 0).all()
    expected_extents = [[0, 0, im.shape[2], im.shape[1]] for im in images]
    torch.testing.assert_close(sal.extents, torch.tensor(expected_extents, dtype=torch.float32))

    # independent: PIL preprocessing, the model's own eager attention with output_attentions
    extra = {"add_pooling_layer": False} if case == "dino" else {}
    model = AutoModel.from_pretrained(directory, attn_implementation="eager", **extra).eval()
    pixels = _squashed(images, resample, mean, std)
    with torch.no_grad():
        attn = model(pixel_values=pixels, output_attentions=True).attentions[-1]  # [B, heads, T, T]
    assert attn.shape[-1] == skip + grid * grid
    row = attn[:, :, 0].mean(1)  # CLS query, mean over heads: [B, T]
    expected = row[:, skip:].reshape(len(images), grid, grid)
    torch.testing.assert_close(sal.maps, expected, atol=1e-5, rtol=1e-4)
    # each map holds the attention not spent on CLS (and registers): strictly below 1
    sums = sal.maps.sum(dim=(1, 2))
    torch.testing.assert_close(sums, 1 - row[:, :skip].sum(-1), atol=1e-5, rtol=0)
    assert (sums < 1).all()
    if skip > 1:  # registers dropped: the sum is below 1 - attention on CLS alone
        assert (sums < 1 - row[:, 0] - 1e-4).all()
    # the map is informative (sharpened weights): far from uniform
    assert (sal.maps.amax(dim=(1, 2)) > 3 * sal.maps.mean(dim=(1, 2))).all()
    # one batched pass over images of different sizes = single-image passes
    for i, image in enumerate(images):
        torch.testing.assert_close(source([image]).maps[0], sal.maps[i], atol=1e-6, rtol=0)
    # the source's own preprocessing is the PIL one
    own = torch.cat([crop_resize(im, torch.tensor([[0, 0, im.shape[2], im.shape[1]]]), source.spec) for im in images])
    assert (own - pixels).abs().max() * 255 * max(std) <= 1.01


@torch.no_grad()
def _open_clip_last_block_attention(bb: Backbone, pixels: torch.Tensor) -> torch.Tensor:
    """CLS row of the last block's attention, mean over heads, from nn.MultiheadAttention itself."""
    seen: list[torch.Tensor] = []
    last = bb._blocks()[-1]
    handle = last.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    try:
        bb.model.encode_image(pixels)
    finally:
        handle.remove()
    h = last.ln_1(seen[0])
    _, weights = last.attn(h, h, h, need_weights=True, average_attn_weights=True)  # [B, T, T]
    return weights[:, 0]


def test_clip_saliency_on_open_clip(tiny: Backbone) -> None:
    source = create_saliency("clip", tiny)
    images = _images()
    sal = source(images)
    grid = tiny.grid_size
    assert grid == 4 and sal.informative
    assert sal.maps.shape == (len(images), grid, grid) and (sal.maps >= 0).all()
    # extents = the centre-crop region (S = 32):
    #   64×32: resized int(32·64/32) = 64 × 32, offset x = 16 -> x 16..48, y 0..32
    #   30×50: resized 32 × int(32·50/30) = 53, scale y 53/50, offset y = round(10.5) = 10 (half to even)
    #          -> y 10/1.06 .. 42/1.06
    #   224×224: the whole image; 301×97: resized int(32·301/97) = 99 × 32, scale 99/301, offset x =
    #          round(33.5) = 34 -> x 34·301/99 .. 66·301/99
    expected = [[16, 0, 48, 32], [0, 10 / 1.06, 30, 42 / 1.06], [0, 0, 224, 224],
                [34 * 301 / 99, 0, 66 * 301 / 99, 97]]
    torch.testing.assert_close(sal.extents, torch.tensor(expected, dtype=torch.float64), atol=1e-9, rtol=0)
    # independent: open_clip's own transform on the PIL image, nn.MultiheadAttention's own weights
    spec = tiny.preprocess
    transform = open_clip.transform.image_transform(spec.size, is_train=False, mean=spec.mean, std=spec.std,
                                                    resize_mode="shortest", interpolation="bicubic")
    pixels = torch.stack([transform(_pil(im)) for im in images])
    row = _open_clip_last_block_attention(tiny, pixels)
    torch.testing.assert_close(sal.maps, row[:, 1:].reshape(-1, grid, grid), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(sal.maps.sum(dim=(1, 2)), 1 - row[:, 0], atol=1e-5, rtol=0)
    assert (sal.maps.amax(dim=(1, 2)) > 2 * sal.maps.mean(dim=(1, 2))).all()
    for i, image in enumerate(images):
        torch.testing.assert_close(source([image]).maps[0], sal.maps[i], atol=1e-6, rtol=0)


def test_clip_saliency_on_transformers_clip(tiny_hf_dir: Path) -> None:
    from transformers import CLIPModel

    bb = create_backbone(f"hf:{tiny_hf_dir}", pretrained=None, device="cpu")
    source = create_saliency("clip", bb)
    images = _images()[:2]
    sal = source(images)
    assert sal.maps.shape == (2, 4, 4)
    eager = CLIPModel.from_pretrained(tiny_hf_dir, attn_implementation="eager").eval()
    pixels = torch.cat([crop_resize(im, torch.tensor([[0, 0, im.shape[2], im.shape[1]]]), bb.preprocess)
                        for im in images])
    with torch.no_grad():
        attn = eager.vision_model(pixel_values=pixels, output_attentions=True).attentions[-1]
    expected = attn[:, :, 0, 1:].mean(1).reshape(2, 4, 4)
    torch.testing.assert_close(sal.maps, expected, atol=1e-5, rtol=1e-4)


SOURCE_SPECS = {
    "dino": lambda dirs: f"dino:{dirs['dino']}",
    "dinov2": lambda dirs: f"dinov2:{dirs['dinov2-reg']}",
    "clip": lambda dirs: "clip",
    "uniform": lambda dirs: "uniform",
}
"""A spec with a tiny model for every registered saliency source."""


@pytest.mark.parametrize("name", SALIENCY.names())
def test_every_registered_source_guides_abs_crops(name: str, dino_dirs: dict[str, Path], tiny: Backbone) -> None:
    """Each source maps every image, and ABS crops drawn from it lie inside the image, through the same
    extractor factory every command uses."""
    assert name in SOURCE_SPECS, f"saliency source {name!r} has no tiny test case; add one to SOURCE_SPECS"
    spec = SOURCE_SPECS[name](dino_dirs)
    images = _images()
    sal = create_saliency(spec, tiny)(images)
    assert sal.maps.dim() == 3 and len(sal.maps) == len(images) and bool((sal.maps >= 0).all())
    for extent, im in zip(sal.extents.tolist(), images, strict=True):
        x0, y0, x1, y1 = extent
        assert -1e-6 <= x0 < x1 <= im.shape[2] + 1e-6 and -1e-6 <= y0 < y1 <= im.shape[1] + 1e-6
    method = create_method("abs", MethodOptions(saliency=spec, abs_sampler=AbsSamplerConfig(crops=5)))
    extractor = ViewExtractor.for_method(method, tiny)
    assert extractor.config.saliency == spec and extractor.saliency is not None
    plans = extractor.make_plans(images, [f"k{i}" for i in range(len(images))])
    for plan, im in zip(plans, images, strict=True):
        assert len(plan.boxes) == 5 and (plan.width, plan.height) == (im.shape[2], im.shape[1])
        plan.validate()  # every box inside the image, every window on the token grid


def test_uniform_saliency(tiny: Backbone) -> None:
    images = _images()
    for spec, grid in (("uniform", 14), ("uniform:7", 7)):
        source = create_saliency(spec, tiny)
        assert isinstance(source, UniformSaliency)
        sal = source(images)
        assert not sal.informative
        assert sal.maps.shape == (len(images), grid, grid)
        assert torch.equal(sal.maps, torch.full_like(sal.maps, sal.maps[0, 0, 0].item()))
        torch.testing.assert_close(
            sal.extents, torch.tensor([[0, 0, im.shape[2], im.shape[1]] for im in images], dtype=torch.float32))


def test_unknown_source_and_missing_directory(tiny: Backbone, tmp_path: Path) -> None:
    with pytest.raises(KeyError, match=r"unknown saliency source 'nope'; known: clip, dino, dinov2, uniform"):
        create_saliency("nope", tiny)
    missing = tmp_path / "no-such-dino"
    for prefix in ("dino", "dinov2"):
        with pytest.raises(WeightsNotFoundError) as info:
            create_saliency(f"{prefix}:{missing}", tiny)
        assert str(missing) in str(info.value)
        assert isinstance(info.value, AbsclipError)
    # a directory that exists but holds no model
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsNotFoundError, match=re.escape(str(empty))):
        create_saliency(f"dino:{empty}", tiny)


def test_clip_saliency_refuses_a_non_vit(tiny: Backbone) -> None:
    not_vit = copy.copy(tiny)
    not_vit._vit = None  # what the adapter sets for a non-resumable (e.g. ResNet) tower
    with pytest.raises(UnsupportedError, match="not a ViT: it has no CLS attention to use as saliency; use --saliency"):
        create_saliency("clip", not_vit)
