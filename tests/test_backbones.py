"""Loading through the real loaders: open_clip arch + checkpoint, OpenAI-format files, HF directories."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

from absclip.backbones import create_backbone, parse_model_spec
from absclip.backbones.checkpoints import is_torchscript_archive
from absclip.errors import InputFileError, UnsupportedError


def _random_pixels(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(3))


def test_open_clip_checkpoint_round_trip(tiny_open_clip_checkpoint: tuple[str, Path]) -> None:
    name, path = tiny_open_clip_checkpoint
    bb = create_backbone(f"open_clip:{name}", pretrained=str(path), device="cpu")
    torch.manual_seed(0)  # the fixture's seed: an independent build of the same weights
    reference = open_clip.create_model(name, pretrained=None).eval()
    x = _random_pixels()
    expected = F.normalize(reference.encode_image(x), dim=-1)
    assert torch.allclose(bb.encode_image(x), expected, atol=1e-5)
    tokens = open_clip.get_tokenizer(name)(["a photo of a cat."])
    assert torch.allclose(bb.encode_text(["a photo of a cat."]), F.normalize(reference.encode_text(tokens), dim=-1),
                          atol=1e-5)
    assert (bb.grid_size, bb.num_blocks, bb.embed_dim) == (4, 3, 32)


def test_openai_format_state_dict_infers_architecture(tiny_openai_checkpoint: Path) -> None:
    bb = create_backbone(str(tiny_openai_checkpoint), pretrained=None, device="cpu")  # bare file -> openai:
    assert bb.name.startswith("openai:")
    assert (bb.preprocess.size, bb.grid_size, bb.num_blocks, bb.embed_dim) == (32, 4, 2, 32)
    state = torch.load(tiny_openai_checkpoint, weights_only=True)
    # the class embedding is loaded (fp16 in the file, fp32 in the model)
    assert torch.allclose(bb.model.visual.class_embedding, state["visual.class_embedding"].float())


def test_torchscript_needs_trust(tiny_openai_checkpoint: Path, tmp_path: Path) -> None:
    from open_clip.model import build_model_from_openai_state_dict

    state = torch.load(tiny_openai_checkpoint, weights_only=True)
    scripted = torch.jit.script(build_model_from_openai_state_dict(dict(state), cast_dtype=None).float().eval())
    path = tmp_path / "ViT-tiny.pt"
    scripted.save(str(path))
    assert is_torchscript_archive(path)
    with pytest.raises(UnsupportedError, match="--trust-checkpoint"):
        create_backbone(f"openai:{path}", pretrained=None, device="cpu")
    trusted = create_backbone(f"openai:{path}", pretrained=None, device="cpu", trust_checkpoint=True)
    plain = create_backbone(f"openai:{tiny_openai_checkpoint}", pretrained=None, device="cpu")
    x = _random_pixels()
    assert torch.allclose(trusted.encode_image(x), plain.encode_image(x), atol=1e-5)


def test_hf_directory(tiny_hf_dir: Path) -> None:
    from transformers import CLIPModel, CLIPTokenizerFast

    bb = create_backbone(str(tiny_hf_dir), pretrained=None, device="cpu")  # bare dir -> hf:
    model = CLIPModel.from_pretrained(tiny_hf_dir).eval()
    x = _random_pixels()
    with torch.no_grad():
        img = model.visual_projection(model.vision_model(pixel_values=x).pooler_output)
        tok = CLIPTokenizerFast.from_pretrained(tiny_hf_dir)(["a photo of a dog."], return_tensors="pt")
        txt = model.text_projection(model.text_model(**tok).pooler_output)
    assert torch.allclose(bb.encode_image(x), F.normalize(img, dim=-1), atol=1e-5)
    assert torch.allclose(bb.encode_text(["a photo of a dog."]), F.normalize(txt, dim=-1), atol=1e-5)
    assert bb.embed_dim == 24 and bb.grid_size == 4


def test_wrong_architecture_for_checkpoint(tiny_openai_checkpoint: Path, tiny_open_clip_checkpoint: tuple) -> None:
    name, _ = tiny_open_clip_checkpoint
    with pytest.raises(InputFileError, match="does not fit architecture"):
        create_backbone(f"open_clip:{name}", pretrained=str(tiny_openai_checkpoint), device="cpu")


def test_pickle_with_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"weights": torch.zeros(2), "payload": subprocess.Popen}, path)
    with pytest.raises(InputFileError, match="weights-only"):
        create_backbone(f"openai:{path}", pretrained=None, device="cpu")


def test_spec_parsing_and_bad_inputs(tmp_path: Path) -> None:
    assert parse_model_spec("ViT-B-16") == ("open_clip", "ViT-B-16")
    assert parse_model_spec("hf:openai/clip-vit-base-patch16") == ("hf", "openai/clip-vit-base-patch16")
    assert parse_model_spec(str(tmp_path)) == ("hf", str(tmp_path))
    with pytest.raises(InputFileError, match="unknown open_clip architecture"):
        create_backbone("open_clip:ViT-Nope", pretrained=None, device="cpu")
    with pytest.raises(InputFileError, match="neither a file nor a pretrained tag"):
        create_backbone("open_clip:ViT-B-16", pretrained="no-such-tag", device="cpu")
    with pytest.raises(UnsupportedError, match="unknown dtype"):
        create_backbone("open_clip:ViT-B-16", pretrained=None, device="cpu", dtype="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(UnsupportedError, match="CUDA is not available"):
            create_backbone("open_clip:ViT-B-16", pretrained=None, device="cuda")


@pytest.mark.parametrize("model", ["ViT-B-32", "hf:openai/clip-vit-base-patch32"])
def test_offline_missing_weights_is_one_clear_line(model: str, tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    proc = subprocess.run([sys.executable, "-m", "absclip", "classify", str(image), "--classes", "a,b",
                           "--model", model], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "are not on this machine" in lines[0]
    assert str(tmp_path / "hf") in lines[0]  # names the cache it searched
    assert "--pretrained" in lines[0] and "openai:" in lines[0]


def test_resnet_encodes_but_refuses_feature_selection(tmp_path: Path) -> None:
    """A non-ViT open_clip model (ModifiedResNet) works for full-image methods; feature views are refused."""
    import json

    from safetensors.torch import save_file

    from absclip.views import ViewConfig, ViewExtractor

    name = "absclip-test-tiny-rn"
    if name not in open_clip.list_models():
        cfg = {"embed_dim": 32, "quick_gelu": True,
               "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 64, "head_width": 64},
               "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}}
        (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
        open_clip.add_model_config(tmp_path)
    torch.manual_seed(5)
    reference = open_clip.create_model(name, pretrained=None).eval()
    path = tmp_path / "rn.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    bb = create_backbone(f"open_clip:{name}", pretrained=str(path), device="cpu")
    assert not bb.is_vit and bb.grid_size is None
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    assert torch.allclose(bb.encode_image(x), F.normalize(reference.encode_image(x), dim=-1), atol=1e-5)
    with pytest.raises(UnsupportedError, match="not a ViT"):
        ViewExtractor(bb, ViewConfig(crops="abs", feature=True))
    with pytest.raises(UnsupportedError, match="not a ViT"):
        bb.tokens_before_block(x, 0)
