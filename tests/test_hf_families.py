"""Every ``hf:`` family (issue 9): tiny random models saved with ``save_pretrained`` and read back through
``create_backbone("hf:DIR")``. Each family's split at every block, its text features and its pixel settings
are compared with transformers' own forward and processor; missing, extra or foreign weights are errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from absclip.backbones import Backbone, create_backbone
from absclip.backbones.hf_load import supported_model_types
from absclip.backbones.tokens import TokenMap
from absclip.cli import main
from absclip.errors import InputFileError, UnsupportedError
from absclip.methods import METHODS as METHOD_REGISTRY
from absclip.methods import list_methods
from hf_tiny import BUILDERS, save_tiny

FAMILIES = sorted(BUILDERS)
NO_CLIP_SALIENCY = {"align", "groupvit"}  # a CNN, and a tower without a CLS token


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf_families")
    return {family: save_tiny(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="module")
def backbones(tiny_dirs: dict[str, Path]) -> dict[str, Backbone]:
    return {f: create_backbone(f"hf:{d}", pretrained=None, device="cpu") for f, d in tiny_dirs.items()}


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param


def test_every_family_has_an_adapter() -> None:
    assert set(FAMILIES) <= set(supported_model_types())


def _pixels(bb: Backbone, n: int = 3, seed: int = 0) -> torch.Tensor:
    s = bb.preprocess.size
    return torch.randn(n, 3, s, s, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _blip2_itc(bb: Backbone, x: torch.Tensor, texts: list[str]) -> object:
    """transformers' own image-text contrastive forward of ``Blip2ForImageTextRetrieval``."""
    batch = bb.tokenizer(texts, padding=True, return_tensors="pt")
    return bb.model(pixel_values=x, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    use_image_text_matching_head=False)


@torch.no_grad()
def _library_embedding(family: str, bb: Backbone, x: torch.Tensor) -> torch.Tensor:
    """transformers' own ``get_image_features`` (SigLIP2: on the processor's patch layout, all patches valid;
    BLIP-2: the retrieval model's normalised query embeddings [B, Q, D])."""
    if family == "blip-2":
        return _blip2_itc(bb, x, ["a photo"]).image_embeds.float()
    if family == "siglip2":
        patches, shapes = bb.patchify(x)
        mask = torch.ones(patches.shape[:2], dtype=torch.long)
        out = bb.model.get_image_features(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes)
    else:
        out = bb.model.get_image_features(pixel_values=x)
    return F.normalize(out.pooler_output.float(), dim=-1)


def _sharpen(bb: Backbone, factor: float = 5.0) -> None:
    """Scale attention query/key weights so attention is far from uniform (a wrong head split or token order
    would hide behind nearly uniform random-init attention)."""
    with torch.no_grad():
        for module in bb.model.vision_model.modules():
            for name in ("q_proj", "k_proj"):
                proj = getattr(module, name, None)
                if isinstance(proj, torch.nn.Linear):
                    proj.weight.mul_(factor)
            fused = getattr(module, "qkv", None)  # BLIP-2's one projection: rows q, k, v
            if isinstance(fused, torch.nn.Linear):
                fused.weight[: 2 * fused.in_features].mul_(factor)


def test_split_at_every_block_matches_get_image_features(family: str, tiny_dirs: dict[str, Path]) -> None:
    bb = create_backbone(f"hf:{tiny_dirs[family]}", pretrained=None, device="cpu")
    _sharpen(bb)
    x = _pixels(bb)
    ref = _library_embedding(family, bb, x)
    g = bb.grid_size
    assert g is not None and bb.num_blocks >= 2
    for layer in range(-bb.num_blocks, bb.num_blocks):
        tokens = bb.tokens_before_block(x, layer)
        assert isinstance(tokens, TokenMap)
        assert tokens.prefix.shape[:2] == (3, bb.num_prefix) and tokens.grid.shape[:3] == (3, g, g)
        out = bb.finish_from_block(tokens, layer)
        assert out.dtype == torch.float32 and out.shape == ref.shape
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0, msg=f"{family}: split at block {layer}")
    torch.testing.assert_close(bb.encode_image(x), ref, atol=1e-5, rtol=0)
    # the finish reads the token map it is given: per image, and the spatial grid, not only the prefix
    tokens = bb.tokens_before_block(x, -1)
    flipped = TokenMap(tokens.prefix.flip(0), tokens.grid.flip(0))
    torch.testing.assert_close(bb.finish_from_block(flipped, -1), ref.flip(0), atol=1e-5, rtol=0)
    noise = torch.randn(tokens.grid.shape, generator=torch.Generator().manual_seed(9))
    assert (bb.finish_from_block(tokens.with_grid(tokens.grid + noise), -1) - ref).abs().max() > 1e-3


@torch.no_grad()
def test_text_features_match_get_text_features(family: str, backbones: dict[str, Backbone]) -> None:
    bb = backbones[family]
    texts = ["a photo of a cat", "dog", "a bird with feathers and whiskers"]
    siglip = family.startswith("siglip")
    padding = "max_length" if siglip else True
    batch = bb.tokenizer(texts, padding=padding, truncation=True, max_length=bb.context_length, return_tensors="pt")
    if family == "blip-2":  # no get_text_features: the retrieval model's own ITC text embeddings
        ref = _blip2_itc(bb, _pixels(bb, n=1), texts).text_embeds.float()
    else:
        ref = bb.model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        ref = F.normalize(ref.pooler_output.float(), dim=-1)
    out = bb.encode_text(texts)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert (out[0] - out[1]).abs().max() > 1e-4  # the tokenizer works: different texts, different features
    if siglip:  # SigLIP pools the last position: padding only to the longest text would change its features
        short = bb.tokenizer(["dog", "a cat"], padding=True, return_tensors="pt")
        assert short["input_ids"].shape[1] < bb.context_length
        other = F.normalize(bb.model.get_text_features(**short).pooler_output.float(), dim=-1)
        assert (other[0] - out[1]).abs().max() > 1e-4


@torch.no_grad()
def test_pixel_settings_equal_the_saved_processor(family: str, tiny_dirs: dict[str, Path],
                                                  backbones: dict[str, Backbone]) -> None:
    """absclip's mean/std/size reproduce what the family's own image processor does to an S×S image."""
    from transformers import AutoImageProcessor

    bb = backbones[family]
    spec = bb.preprocess
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (spec.size, spec.size, 3), dtype=np.uint8))
    proc = AutoImageProcessor.from_pretrained(tiny_dirs[family])
    got = proc(images=image, return_tensors="pt")["pixel_values"].float()
    u = torch.from_numpy(np.asarray(image)).permute(2, 0, 1).float()[None] / 255.0
    ours = (u - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    if family == "siglip2":
        ours = bb.patchify(ours)[0]
        got = got[:, : ours.shape[1]]
    torch.testing.assert_close(ours, got, atol=2e-3, rtol=0)


def test_attention_bias_masks_keys(family: str, backbones: dict[str, Backbone]) -> None:
    """A bias of -1e4 on one key in every remaining attention (and an attention-pool head) is that token
    removed from the sequence: a different token per image catches a bias applied to the wrong image, head
    or position. ALIGN has no attention: the bias is a one-line error naming the option that avoids it."""
    bb = backbones[family]
    x = _pixels(bb, n=2, seed=4)
    tokens = bb.tokens_before_block(x, -1)
    bias = torch.zeros(2, tokens.num_tokens)
    drop = [bb.num_prefix + 3, bb.num_prefix + 9]
    bias[0, drop[0]] = bias[1, drop[1]] = -1e4
    if family == "align":
        with pytest.raises(UnsupportedError, match="--feature-augment"):
            bb.finish_from_block(tokens, -1, attn_bias=bias)
        return
    out = bb.finish_from_block(tokens, -1, attn_bias=bias)
    assert (out - bb.finish_from_block(tokens, -1)).abs().max() > 1e-4
    if family == "groupvit":  # grouping still assigns the masked patch to a segment: no shorter-sequence twin
        return
    seq = tokens.sequence()
    with torch.no_grad():
        for i in range(2):
            keep = [j for j in range(seq.shape[1]) if j != drop[i]]
            short = F.normalize(bb._finish(seq[i : i + 1, keep], tokens.grid_shape, None).float(), dim=-1)
            torch.testing.assert_close(out[i : i + 1], short, atol=1e-5, rtol=0)


@torch.no_grad()
def test_clip_saliency_is_the_pooling_query_attention(family: str, backbones: dict[str, Backbone]) -> None:
    """CLS (CLIP-style) or latent-query (SigLIP) attention over the grid, re-derived in plain torch from the
    library's hidden states; families without one say so in one line that names --saliency dino."""
    bb = backbones[family]
    x = _pixels(bb, n=2, seed=5)
    if family in NO_CLIP_SALIENCY:
        assert "--saliency dino" in str(bb.capabilities["clip saliency"])
        with pytest.raises(UnsupportedError, match="--saliency dino"):
            bb.cls_attention_map(x)
        return
    got = bb.cls_attention_map(x)
    g = bb.grid_size
    assert got.shape == (2, g, g) and got.dtype == torch.float32
    vision = bb.model.vision_model
    hidden = bb.tokens_before_block(x, -1).sequence()
    last = bb._blocks()[-1]
    heads = bb.model.config.vision_config.num_attention_heads
    if family.startswith("siglip"):
        h = vision.post_layernorm(last(hidden, None))
        w, b = vision.head.attention.in_proj_weight, vision.head.attention.in_proj_bias
        width = h.shape[-1]
        q = vision.head.probe @ w[:width].T + b[:width]  # [1, 1, W]
        k = h @ w[width : 2 * width].T + b[width : 2 * width]  # [B, T, W]
        skip = 0
    elif family == "blip-2":  # a fused qkv projection
        h = last.layer_norm1(hidden)
        qkv = last.self_attn.qkv(h)
        width = h.shape[-1]
        q, k, skip = qkv[:, :1, :width], qkv[:, :, width : 2 * width], 1
    else:
        h = last.layer_norm1(hidden)
        q, k = last.self_attn.q_proj(h[:, :1]), last.self_attn.k_proj(h)
        skip = 1
    d = k.shape[-1] // heads
    rows = []
    for i in range(2):
        per_head = []
        for j in range(heads):
            qi = q.expand(2, -1, -1)[i, 0, j * d : (j + 1) * d]
            ki = k[i, :, j * d : (j + 1) * d]
            per_head.append(torch.softmax(ki @ qi / d**0.5, dim=0)[skip:])
        rows.append(torch.stack(per_head).mean(0))
    torch.testing.assert_close(got.flatten(1), torch.stack(rows), atol=1e-5, rtol=0)


# ==== never a silently random model ==========================================================================
def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _edit_weights(folder: Path, edit: object) -> None:
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    state = load_file(str(path))
    edit(state)  # type: ignore[operator]
    save_file(state, str(path), metadata={"format": "pt"})


def test_groupvit_weights_under_a_clip_config_are_an_error(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    """The bug of issue 9: GroupViT weights read as CLIPModel, every vision weight random. transformers itself
    loads that without complaint; absclip names the folder, the type and the first keys."""
    import transformers

    folder = _copy(tiny_dirs["groupvit"], tmp_path / "groupvit_as_clip")
    shutil.copy(tiny_dirs["clip"] / "config.json", folder / "config.json")
    _, info = transformers.CLIPModel.from_pretrained(folder, output_loading_info=True)
    assert info["missing_keys"] and info["unexpected_keys"]  # the silent half-random model, reproduced
    with pytest.raises(InputFileError) as err:
        create_backbone(f"hf:{folder}", pretrained=None, device="cpu")
    line = str(err.value)
    assert "\n" not in line and str(folder) in line and "'clip'" in line and "CLIPModel" in line
    assert "missing (first: " in line and "unexpected (first: " in line and "vision_model." in line


@pytest.mark.parametrize("family", ["groupvit", "siglip", "align"])
def test_a_deleted_or_extra_weight_is_an_error(family: str, tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    deleted = _copy(tiny_dirs[family], tmp_path / "deleted")
    victim = sorted(k for k in _keys(deleted) if k.startswith("vision_model."))[-1]
    _edit_weights(deleted, lambda s: s.pop(victim))
    with pytest.raises(InputFileError, match=rf"1 missing \(first: {victim}\)") as err:
        create_backbone(f"hf:{deleted}", pretrained=None, device="cpu")
    assert str(deleted) in str(err.value) and f"'{family}'" in str(err.value)
    extra = _copy(tiny_dirs[family], tmp_path / "extra")
    _edit_weights(extra, lambda s: s.update({"vision_model.stray.weight": torch.zeros(3)}))
    with pytest.raises(InputFileError, match=r"1 unexpected \(first: vision_model.stray.weight\)"):
        create_backbone(f"hf:{extra}", pretrained=None, device="cpu")


def _keys(folder: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        return list(handle.keys())


@pytest.mark.parametrize("model_type", ["not_a_model", "bert", None])
def test_an_unsupported_model_type_lists_the_supported_ones(model_type: str | None, tiny_dirs: dict[str, Path],
                                                            tmp_path: Path) -> None:
    folder = _copy(tiny_dirs["clip"], tmp_path / "odd")
    cfg = json.loads((folder / "config.json").read_text())
    if model_type is None:
        cfg.pop("model_type")
    else:
        cfg["model_type"] = model_type
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises((UnsupportedError, InputFileError)) as err:
        create_backbone(f"hf:{folder}", pretrained=None, device="cpu")
    line = str(err.value)
    assert "\n" not in line and str(folder) in line
    assert ", ".join(supported_model_types()) in line
    if model_type:
        assert repr(model_type) in line


def test_a_folder_without_config_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    image = tmp_path / "x.png"
    Image.new("RGB", (20, 20)).save(image)
    assert main(["classify", str(image), "--classes", "a,b", "--model", f"hf:{tmp_path / 'empty'}"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("absclip: error: ")]
    assert len(err) == 1 and "config.json" in err[0] and str(tmp_path / "empty") in err[0]


# ==== absclip classify --model hf:DIR --method abs, for every family =========================================
@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hf_photos")
    rng = np.random.default_rng(9)
    for i, (w, h) in enumerate([(64, 48), (40, 90), (33, 33)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"img{i}.png")
    return root


def test_classify_abs_end_to_end(family: str, tiny_dirs: dict[str, Path], photos: Path, descriptions: Path,
                                 tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ABS with feature crops on every family; ``--saliency clip`` where the family has the attention for it,
    else the one-line refusal naming --saliency dino, and a run with another saliency source."""
    out = tmp_path / "out.jsonl"
    args = ["classify", str(photos), "--classes", "cat,dog,bird", "--descriptions", str(descriptions), "--method",
            "abs", "--model", f"hf:{tiny_dirs[family]}", "--cache-dir", str(tmp_path), "--crops", "3",
            "--random-crops", "2", "--batch-size", "2", "--output", str(out)]
    if family in NO_CLIP_SALIENCY:
        assert main([*args, "--saliency", "clip"]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("absclip: error: ")]
        assert len(err) == 1 and "--saliency dino" in err[0] and f"hf:{tiny_dirs[family]}" in err[0]
        assert not out.exists()  # refused before any image work
        assert main([*args, "--saliency", "uniform"]) == 0
    else:
        assert main([*args, "--saliency", "clip"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 3 and all(r["error"] is None and r["label"] in {"cat", "dog", "bird"} for r in records)


# every registered method (parametrised over the registry, so a new one is covered without editing this file),
# less those that ask an LLM while they score: tests/test_fudd.py runs them against a loopback server
METHODS = [m for m in list_methods() if not METHOD_REGISTRY.get(m).needs_llm]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_on_every_family(method: str, tiny_dirs: dict[str, Path], photos: Path, descriptions: Path,
                                      tmp_path: Path) -> None:
    """Each method classifies with every family (one image; ALIGN and GroupViT with a saliency source other
    than their missing CLS attention)."""
    for family in FAMILIES:
        out = tmp_path / f"{family}.jsonl"
        saliency = "uniform" if family in NO_CLIP_SALIENCY else "clip"
        assert main(["classify", str(photos / "img0.png"), "--classes", "cat,dog,bird", "--descriptions",
                     str(descriptions), "--method", method, "--model", f"hf:{tiny_dirs[family]}", "--cache-dir",
                     str(tmp_path), "--saliency", saliency, "--crops", "2", "--random-crops", "2",
                     "--zero-views", "2", "--awt-views", "2", "--output",
                     str(out)]) == 0, f"{method} on {family}"
        record = json.loads(out.read_text())
        assert record["error"] is None and record["label"] in {"cat", "dog", "bird"}, (method, family)


def test_align_refuses_attention_bias_augments_before_any_image_work(backbones: dict[str, Backbone]) -> None:
    """An EfficientNet has no attention logits: ``highlight-attn`` is refused when the extractor is built."""
    from absclip.errors import UnsupportedError
    from absclip.views import ViewConfig, ViewExtractor

    config = ViewConfig(crops="random", raw=False, feature=True, feature_augment="highlight-attn")
    with pytest.raises(UnsupportedError, match="--feature-augment crop, mask or highlight-fea"):
        ViewExtractor(backbones["align"], config)
    ViewExtractor(backbones["align"], ViewConfig(crops="random", raw=False, feature=True, feature_augment="mask"))
    ViewExtractor(backbones["clip"], config)  # a ViT takes the bias


@pytest.mark.parametrize(("processor", "settings"), [
    ("CLIPImageProcessor", {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32},
                            "do_center_crop": True, "resample": 3}),
    ("EfficientNetImageProcessor", {"size": {"height": 40, "width": 40}, "crop_size": {"height": 32, "width": 32},
                                    "do_center_crop": True, "resample": 2, "rescale_offset": True,
                                    "include_top": False}),
])
def test_resize_larger_than_the_crop_equals_the_processor(processor: str, settings: dict[str, object]) -> None:
    """Processors that resize to R and centre-crop a smaller S (ALIGN's 346 -> 289, ImageNet's 256 -> 224):
    absclip's pixels equal the processor's own, within float rounding of one grey level."""
    import transformers

    from absclip.backbones.hf_preprocess import spec_from_processor
    from absclip.pixels import preprocess_images
    from absclip.pixels.spec import PreprocessSpec

    cfg = {"image_processor_type": processor, "do_normalize": True, "image_mean": [0.5, 0.4, 0.3],
           "image_std": [0.2, 0.25, 0.3], **settings}
    spec = spec_from_processor(cfg, PreprocessSpec(32), "test")
    assert spec.size == 32 and spec.resize == 40
    image = np.random.default_rng(3).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    kwargs = {k: v for k, v in cfg.items() if k != "image_processor_type"}
    theirs = getattr(transformers, processor)(**kwargs)(Image.fromarray(image), return_tensors="pt")["pixel_values"]
    ours = preprocess_images([torch.from_numpy(image).permute(2, 0, 1)], spec)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    assert ours.shape == theirs.shape == (1, 3, 32, 32)
    assert ((ours - theirs).abs() * std * 255).max() <= 1.01  # at most one grey level


ADAPTIVE = sorted(set(list_methods(adaptive=True)) - set(list_methods()))


def test_every_adaptive_method_on_every_family(tiny_dirs: dict[str, Path], descriptions: Path,
                                               tmp_path: Path) -> None:
    """The few-shot and test-time methods (support sets and test streams) run in ``absclip eval`` on every family,
    BLIP-2's several query vectors per view included."""
    rng = np.random.default_rng(4)
    for split, count in (("test", 2), ("support", 3)):
        for name in ("cat", "dog", "bird"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / name / f"{i}.png")
    assert ADAPTIVE  # tip-adapter, gda, tda, dsel+support and their view variants
    for family in FAMILIES:
        out = tmp_path / "out" / family
        saliency = "uniform" if family in NO_CLIP_SALIENCY else "clip"
        code = main(["eval", "--dataset", "folder", "--root", str(tmp_path / "test"), "--support",
                     str(tmp_path / "support"), "--shots", "2", "--val-shots", "1", "--methods", ",".join(ADAPTIVE),
                     "--seeds", "0", "--descriptions", str(descriptions), "--model", f"hf:{tiny_dirs[family]}",
                     "--saliency", saliency, "--crops", "2", "--random-crops", "2", "--output-dir", str(out),
                     "--cache-dir", str(tmp_path / "cache"), "--view-cache", str(tmp_path / "views" / family)])
        assert code == 0, family
        records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        assert {r["method"] for r in records} == set(ADAPTIVE), family
        assert all(0.0 <= r["metrics"]["acc1"] <= 1.0 and r["n_samples"] == 6 for r in records), family
