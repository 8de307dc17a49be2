"""open_clip families with timm towers (SigLIP, SigLIP2, EVA02, PE-Core) and MetaCLIP's plain quickgelu CLIP,
each as a tiny random model built in code from the real architecture's config (towers shrunk, same
classes and options), saved as an open_clip checkpoint and loaded back with ``--pretrained FILE``.

Checked against open_clip / timm themselves: the split identity at every block vs ``encode_image``, the
attention row of ``--saliency clip`` vs timm's own softmax (or a per-head re-derivation of the attention
pool), attention biases vs dropping tokens or timm's own masked forward, and ``absclip classify`` end to end.
"""

from __future__ import annotations

import csv
import json
from functools import partial
from pathlib import Path

import numpy as np
import open_clip
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image

from absclip.backbones import Backbone, create_backbone
from absclip.backbones.open_clip_config import tag_preprocess
from absclip.backbones.tokens import TokenMap
from absclip.cli import main
from absclip.errors import InputFileError, UnsupportedError
from absclip.methods import METHODS as METHOD_REGISTRY
from absclip.methods import list_methods

SMALL = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2}
"""Every tiny tower: a 4×4 grid of 8-pixel patches, width 32, 3 blocks, 2 heads."""


def _timm_kwargs(kw: dict) -> dict:
    return {k: v for k, v in kw.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")}


def absclip_tiny_siglip(pretrained: bool = False, **kw: object):  # timm vit_base_patch16_siglip_224, shrunk
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(**SMALL, class_token=False, **{"global_pool": "map", **_timm_kwargs(kw)})


def absclip_tiny_eva02(pretrained: bool = False, **kw: object):  # timm eva02_base_patch16_clip_224, shrunk
    from timm.models.eva import Eva

    return Eva(**SMALL, qkv_fused=False, mlp_ratio=4 * 2 / 3, swiglu_mlp=True, scale_mlp=True, scale_attn_inner=True,
               use_rot_pos_emb=True, ref_feat_shape=(4, 4), **{"global_pool": "token", **_timm_kwargs(kw)})


def absclip_tiny_pe_core(pretrained: bool = False, **kw: object):  # timm vit_pe_core_base_patch16_224, shrunk
    from timm.layers import LayerNorm
    from timm.models.eva import Eva

    return Eva(**SMALL, mlp_ratio=4.0, attn_type="rope", use_pre_transformer_norm=True, use_rot_pos_emb=True,
               ref_feat_shape=(4, 4), rope_grid_offset=1.0, rope_grid_indexing="xy", attn_pool_num_heads=2,
               attn_pool_mlp_ratio=4.0, norm_layer=partial(LayerNorm, eps=1e-5),
               **{"global_pool": "map", **_timm_kwargs(kw)})


TIMM_TINY = {f.__name__: f for f in (absclip_tiny_siglip, absclip_tiny_eva02, absclip_tiny_pe_core)}
FAMILIES = {  # family -> (the real open_clip architecture it shrinks, tiny timm trunk or None for open_clip's ViT)
    "siglip": ("ViT-B-16-SigLIP", "absclip_tiny_siglip"),
    "siglip2": ("ViT-B-16-SigLIP2", "absclip_tiny_siglip"),
    "eva02": ("EVA02-B-16", "absclip_tiny_eva02"),
    "pe-core": ("PE-Core-B-16", "absclip_tiny_pe_core"),
    "metaclip": ("ViT-B-16-quickgelu", None),
}
SQUASH_HALF = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic", "resize_mode": "squash"}


def _tiny_tokenizer(root: Path) -> Path:
    """A SentencePiece-style (Unigram) tokenizer trained offline on a few sentences, for SigLIP's hf text tower."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=60, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tok.train_from_iterator(["a photo of a cat", "a photo of a dog", "a bird on a tree", "a small furry animal",
                             "barks loudly", "has feathers and whiskers"], trainer)
    out = root / "unigram"
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(out)
    return out


def _tiny_config(family: str, tokenizer: Path) -> dict:
    arch, trunk = FAMILIES[family]
    real = json.loads((Path(open_clip.__file__).parent / "model_configs" / f"{arch}.json").read_text())
    cfg = {**real, "embed_dim": 32}  # SigLIP has no projection: its embedding is the tower width
    text = {**real["text_cfg"], "width": 32, "heads": 2, "layers": 1}
    if "hf_tokenizer_name" in text:
        text.update(hf_tokenizer_name=str(tokenizer), vocab_size=64)
    cfg["text_cfg"] = text
    if trunk is None:
        cfg["vision_cfg"] = {**real["vision_cfg"], "image_size": 32, "patch_size": 8, "width": 32, "layers": 3,
                             "head_width": 16}
    else:
        cfg["vision_cfg"] = {**real["vision_cfg"], "image_size": 32, "timm_model_name": trunk}
    return cfg


@pytest.fixture(scope="session")
def family_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, Path]]:
    """family -> (registered tiny architecture, safetensors checkpoint); SigLIP's has an open_clip_config.json
    beside it with its real preprocessing (squash, mean/std 0.5), as open_clip's hub repositories do."""
    from safetensors.torch import save_file
    from timm.models import register_model

    root = tmp_path_factory.mktemp("families")
    for name, fn in TIMM_TINY.items():
        if not timm.is_model(name):
            register_model(fn)
    tokenizer = _tiny_tokenizer(root)
    (root / "cfg").mkdir()
    for family in FAMILIES:
        (root / "cfg" / f"absclip-tiny-{family}.json").write_text(json.dumps(_tiny_config(family, tokenizer)))
    open_clip.add_model_config(root / "cfg")
    out = {}
    for i, family in enumerate(FAMILIES):
        torch.manual_seed(20 + i)
        model = open_clip.create_model(f"absclip-tiny-{family}", pretrained=None)
        folder = root / family
        folder.mkdir()
        path = folder / "open_clip_model.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        if family == "siglip":
            (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": _tiny_config(family, tokenizer),
                                                                      "preprocess_cfg": SQUASH_HALF}))
        out[family] = (f"absclip-tiny-{family}", path)
    return out


@pytest.fixture(params=list(FAMILIES))
def family(request: pytest.FixtureRequest) -> str:
    return request.param


def _load(checkpoints: dict[str, tuple[str, Path]], family: str) -> tuple[Backbone, torch.nn.Module]:
    """(absclip's backbone, an independent open_clip model with the same weights)."""
    name, path = checkpoints[family]
    bb = create_backbone(f"open_clip:{name}", pretrained=str(path), device="cpu")
    ref = open_clip.create_model(name, pretrained=str(path)).eval()
    return bb, ref


def _sharpen(model: torch.nn.Module, factor: float = 8.0) -> None:
    """Scale every query/key weight in the vision tower so attention is far from uniform."""
    with torch.no_grad():
        for name, p in model.visual.named_parameters():
            leaf = name.rsplit(".", 1)[0].rsplit(".", 1)[-1]
            if leaf in ("qkv", "q_proj", "k_proj", "q", "kv") or name.endswith("in_proj_weight"):
                p.mul_(factor)
            elif name.endswith("attn_pool.latent"):  # the pooling query, initialised near zero
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))


def _pixels(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_split_identity_at_every_block(family_checkpoints: dict, family: str) -> None:
    bb, ref = _load(family_checkpoints, family)
    _sharpen(bb.model)
    _sharpen(ref)
    x = _pixels()
    with torch.no_grad():
        expected = F.normalize(ref.encode_image(x), dim=-1)
    assert bb.grid_size == 4 and bb.num_blocks == 3
    assert bb.num_prefix == (0 if family.startswith("siglip") else 1)
    for layer in range(bb.num_blocks):
        tokens = bb.tokens_before_block(x, layer)
        assert tokens.grid.shape[:3] == (3, 4, 4) and tokens.num_prefix == bb.num_prefix
        torch.testing.assert_close(bb.finish_from_block(tokens, layer), expected, atol=1e-5, rtol=0,
                                   msg=f"{family}: split at block {layer}")
    torch.testing.assert_close(bb.encode_image(x), expected, atol=1e-5, rtol=0)
    assert (expected[0] - expected[1]).abs().max() > 1e-3
    with torch.no_grad():
        text = F.normalize(ref.encode_text(open_clip.get_tokenizer(family_checkpoints[family][0])(["a photo"])), dim=-1)
    torch.testing.assert_close(bb.encode_text(["a photo"]), text, atol=1e-5, rtol=0)
    assert all(reason is None for reason in bb.capabilities.values()), bb.capabilities
    if family.startswith("siglip"):
        assert bb.logit_bias == pytest.approx(-10.0)
    else:
        assert bb.logit_bias is None


def test_preprocess_follows_the_architecture(family_checkpoints: dict) -> None:
    """SigLIP's sidecar config (squash, 0.5) is used; the real tags' settings are read for each family."""
    name, path = family_checkpoints["siglip"]
    spec = create_backbone(f"open_clip:{name}", pretrained=str(path), device="cpu").preprocess
    assert (spec.resize_mode, spec.mean, spec.std, spec.size) == ("squash", (0.5,) * 3, (0.5,) * 3, 32)
    name, path = family_checkpoints["eva02"]
    assert create_backbone(f"open_clip:{name}", pretrained=str(path), device="cpu").preprocess.resize_mode == "shortest"
    assert tag_preprocess("ViT-B-16-SigLIP2") == {"mean": (0.5,) * 3, "std": (0.5,) * 3,
                                                  "interpolation": "bicubic", "resize_mode": "squash"}
    assert tag_preprocess("PE-Core-B-16")["interpolation"] == "bilinear"
    assert tag_preprocess("EVA02-B-16")["resize_mode"] == "shortest"
    assert "resize_mode" not in tag_preprocess("ViT-H-14-quickgelu")  # MetaCLIP crops, DFN squashes


def _timm_softmax_rows(attn: torch.nn.Module, run: callable) -> torch.Tensor:
    """The attention probabilities timm itself computes (its unfused path feeds them to ``attn_drop``)."""
    seen: list[torch.Tensor] = []
    fused = attn.fused_attn
    attn.fused_attn = False
    handle = attn.attn_drop.register_forward_hook(lambda _m, _a, out: seen.append(out.detach().clone()))
    try:
        run()
    finally:
        handle.remove()
        attn.fused_attn = fused
    return seen[0]


def _pool_attention(pool: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The attention-pool's first latent query over ``x`` [B, T, C], head by head in plain torch -> [B, T]."""
    _b, _t, c = x.shape
    heads, d = pool.num_heads, c // pool.num_heads
    q = pool.q(pool.latent)[0, 0]  # [C]
    k = pool.kv(x)[..., :c]  # [B, T, C]
    rows = []
    for h in range(heads):
        logits = k[..., h * d:(h + 1) * d] @ q[h * d:(h + 1) * d] / d ** 0.5  # [B, T]
        rows.append(logits.softmax(dim=-1))
    return torch.stack(rows).mean(0)


def test_clip_saliency_is_the_models_own_attention(family_checkpoints: dict, family: str) -> None:
    bb, _ = _load(family_checkpoints, family)
    _sharpen(bb.model)
    x = _pixels(seed=1)
    maps = bb.cls_attention_map(x)
    assert maps.shape == (3, 4, 4) and maps.dtype == torch.float32 and (maps >= 0).all()
    visual = bb.model.visual
    with torch.no_grad():
        if family == "metaclip":  # open_clip's own ViT: the last block's CLS row from nn.MultiheadAttention
            seen: list[torch.Tensor] = []
            last = visual.transformer.resblocks[-1]
            handle = last.register_forward_pre_hook(lambda _m, a: seen.append(a[0].clone()))
            bb.model.encode_image(x)
            handle.remove()
            h = last.ln_1(seen[0])
            row = last.attn(h, h, h, need_weights=True, average_attn_weights=True)[1][:, 0, 1:]
        elif family == "eva02":  # the CLS row of timm's own softmax in the last block, rotary embeddings included
            attn = visual.trunk.blocks[-1].attn
            probs = _timm_softmax_rows(attn, lambda: bb.model.encode_image(x))  # [B, h, T, T]
            row = probs.mean(1)[:, 0, 1:]
        else:  # SigLIP / PE-Core: the attention pool's query over the normed last-block output
            trunk = visual.trunk
            feats = trunk.forward_features(x)
            keys = feats[:, trunk.num_prefix_tokens:] if family.startswith("siglip") else feats
            row = _pool_attention(trunk.attn_pool, keys)[:, keys.shape[1] - 16:]
    torch.testing.assert_close(maps, row.reshape(3, 4, 4).float(), atol=1e-5, rtol=1e-4)
    assert (maps.amax(dim=(1, 2)) > 1.5 * maps.mean(dim=(1, 2))).all()  # sharpened: not a flat map


def test_attention_bias_is_the_models_own_mask(family_checkpoints: dict, family: str) -> None:
    """A -1e9 bias on some grid keys equals dropping those tokens (no rotary embeddings: SigLIP, MetaCLIP) or
    timm's own forward with that attention mask (rotary towers, split at block 0)."""
    bb, _ = _load(family_checkpoints, family)
    x = _pixels(n=2, seed=2)
    keep = torch.tensor([0, 2, 5, 7, 8, 13])  # grid cells kept
    p = bb.num_prefix
    bias = torch.full((2, p + 16), -1e9)
    bias[:, :p] = 0.0
    bias[:, p + keep] = 0.0
    layer = 0 if family in ("eva02", "pe-core") else 1
    tokens = bb.tokens_before_block(x, layer)
    with_bias = bb.finish_from_block(tokens, layer, attn_bias=bias)
    zero = bb.finish_from_block(tokens, layer, attn_bias=torch.zeros(2, p + 16))
    torch.testing.assert_close(zero, bb.finish_from_block(tokens, layer), atol=1e-6, rtol=0)
    assert (with_bias - zero).abs().max() > 1e-4
    visual = bb.model.visual
    if layer == 1:
        dropped = TokenMap(tokens.prefix, tokens.grid.reshape(2, 16, -1)[:, keep][:, None])  # a 1×6 grid
        torch.testing.assert_close(with_bias, bb.finish_from_block(dropped, layer), atol=1e-5, rtol=0)
    else:
        trunk = visual.trunk
        mask = bias[:, None, None, :]
        with torch.no_grad():
            feats = trunk.forward_features(x, attn_mask=mask)
            pooled = trunk.forward_head(feats) if trunk.attn_pool is None else \
                trunk.head(trunk.fc_norm(trunk.attn_pool(feats, attn_mask=mask)))
            expected = F.normalize(visual.head(pooled), dim=-1)
        torch.testing.assert_close(with_bias, expected, atol=1e-5, rtol=0)
        with pytest.raises(UnsupportedError, match="rotary position embeddings"):
            bb.finish_from_block(TokenMap(tokens.prefix, tokens.grid[:, :2]), layer)


def test_checkpoint_of_another_family_is_refused(family_checkpoints: dict) -> None:
    name, _ = family_checkpoints["siglip"]
    _, other = family_checkpoints["eva02"]
    with pytest.raises(InputFileError, match=r"does not fit architecture absclip-tiny-siglip .*missing .*unexpected"):
        create_backbone(f"open_clip:{name}", pretrained=str(other), device="cpu")


def test_classify_end_to_end(family_checkpoints: dict, family: str, descriptions: Path, tmp_path: Path) -> None:
    name, path = family_checkpoints[family]
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(64, 48), (40, 90)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
    out = tmp_path / "out.csv"
    code = main(["classify", str(tmp_path), "--classes", "cat,dog,bird", "--descriptions", str(descriptions),
                 "--model", f"open_clip:{name}",
                 "--pretrained", str(path), "--method", "abs", "--saliency", "clip", "--crops", "4",
                 "--random-crops", "4", "--output", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2 and all(r["label"] in {"cat", "dog", "bird"} for r in rows)


def test_hub_tokenizer_missing_offline_is_one_line(family_checkpoints: dict, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """SigLIP's tokenizer is an hf hub id: offline and uncached, the file's model fails in one line."""
    from huggingface_hub import constants

    from absclip.errors import WeightsNotFoundError

    cfg = json.loads(json.dumps(open_clip.get_model_config("absclip-tiny-siglip")))
    cfg["text_cfg"]["hf_tokenizer_name"] = "timm/absclip-no-such-tokenizer"
    (tmp_path / "absclip-tiny-siglip-hub.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, path = family_checkpoints["siglip"]
    with pytest.raises(WeightsNotFoundError, match=r"tokenizer of open_clip absclip-tiny-siglip-hub "
                                                   r"\(timm/absclip-no-such-tokenizer\) is not on this machine"):
        create_backbone("open_clip:absclip-tiny-siglip-hub", pretrained=str(path), device="cpu")


def test_models_lists_families(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "*"]) == 0
    out = capsys.readouterr().out
    rows = dict(line.split("\t")[:2] for line in out.splitlines() if line.startswith("open_clip:"))
    assert rows["open_clip:ViT-B-16-SigLIP2"] == "siglip2" and rows["open_clip:ViT-B-16-SigLIP"] == "siglip"
    assert rows["open_clip:EVA02-B-16"] == "eva" and rows["open_clip:PE-Core-B-16"] == "pe-core"
    assert rows["open_clip:ViT-B-16-quickgelu"] == "clip-vit" and rows["open_clip:RN50"] == "clip-resnet"
    table = {line.split("\t")[0]: line.split("\t")[1:4] for line in out.splitlines() if line.count("\t") == 4}
    assert table["siglip2"] == ["yes", "yes", "yes"]
    assert table["clip-resnet"][1].startswith("no:") and "--no-feature" in table["clip-resnet"][1]
    assert "--saliency dino" in table["clip-resnet"][2]


# every registered method less those that ask an LLM while they score (tests/test_fudd.py runs them)
EVERY_METHOD = [m for m in list_methods() if not METHOD_REGISTRY.get(m).needs_llm]


def test_every_method_on_the_family(family_checkpoints: dict, family: str, descriptions: Path,
                                    tmp_path: Path) -> None:
    """Every registered method classifies with the family: the backbone loads once through the real loader and
    each method labels one image through the Python API, with its own views (CLIP saliency: the model's own)."""
    from absclip.classifier import ZeroShotClassifier
    from absclip.methods import MethodOptions
    from absclip.views import AbsSamplerConfig, RandomCropConfig

    name, path = family_checkpoints[family]
    backbone = create_backbone(f"open_clip:{name}", pretrained=str(path), device="cpu")
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(image)
    options = MethodOptions(saliency="clip", abs_sampler=AbsSamplerConfig(crops=2),
                            random_crops=RandomCropConfig(crops=2), zero_views=2, awt_views=2)
    for method in EVERY_METHOD:
        clf = ZeroShotClassifier(backbone, method, ["cat", "dog", "bird"], descriptions, options=options,
                                 cache_dir=tmp_path / "cache", batch_size=2)
        logits = clf.predict([image], keys=[str(image)]).logits
        assert logits.shape == (1, 3) and torch.isfinite(logits).all(), (method, family)
