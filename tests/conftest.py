"""Tiny random CLIP models built in code, saved to files, and loaded back through the real loaders."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import open_clip
import pytest
import torch

TINY_OPEN_CLIP = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}
TINY_NAME = "absclip-test-tiny"


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> Iterator[None]:
    """Tiny models and small matrices: one thread avoids OpenMP start-up and contention costs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def descriptions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CuPL-style description file for the classes cat, dog and bird (ragged counts)."""
    path = tmp_path_factory.mktemp("desc") / "desc.json"
    path.write_text(json.dumps({"cat": ["a small furry animal", "has whiskers", "pointed ears"],
                                "dog": ["barks", "a loyal pet"], "bird": ["has feathers"]}))
    return path


def register_tiny_open_clip(tmp: Path) -> str:
    """Register the tiny architecture with open_clip (its configs are JSON files scanned into a registry)."""
    if TINY_NAME not in open_clip.list_models():
        cfg_dir = tmp / "open_clip_cfg"
        cfg_dir.mkdir(parents=True, exist_ok=True)
        (cfg_dir / f"{TINY_NAME}.json").write_text(json.dumps(TINY_OPEN_CLIP))
        open_clip.add_model_config(cfg_dir)
    return TINY_NAME


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_open_clip_checkpoint(model_dir: Path) -> tuple[str, Path]:
    """(architecture name, safetensors file) of a seeded random tiny open_clip model."""
    from safetensors.torch import save_file

    name = register_tiny_open_clip(model_dir)
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None)
    path = model_dir / "tiny_open_clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return name, path


@pytest.fixture(scope="session")
def tiny_openai_checkpoint(model_dir: Path) -> Path:
    """An OpenAI-format state dict (fp16 weights plus the three metadata entries OpenAI ships)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(1)
    model = CLIP(
        embed_dim=32,
        vision_cfg=CLIPVisionCfg(layers=2, width=64, patch_size=8, image_size=32),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=1),
        quick_gelu=True,
    )
    state = {k: v.half() for k, v in model.state_dict().items()}
    state["input_resolution"] = torch.tensor(32)
    state["context_length"] = torch.tensor(77)
    state["vocab_size"] = torch.tensor(49408)
    path = model_dir / "tiny_openai.pt"
    torch.save(state, path)
    return path


@pytest.fixture(scope="session")
def tiny_hf_dir(model_dir: Path) -> Path:
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    torch.manual_seed(2)
    config = CLIPConfig(
        text_config={"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "vocab_size": 49408},
        vision_config={"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 3,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=24,
    )
    model = CLIPModel(config).eval()
    out = model_dir / "tiny_hf"
    model.save_pretrained(out)
    # transformers 5: the fast tokenizer's vocab_file/merges_file arguments are ignored (every token would be one id)
    tokenizer = CLIPTokenizer(vocab=str(_open_clip_vocab(model_dir)), merges=str(model_dir / "merges.txt"))
    tokenizer.save_pretrained(out)
    return out


def _open_clip_vocab(model_dir: Path) -> Path:
    """Write a CLIP BPE vocab/merges pair from the BPE file open_clip ships (no download needed)."""
    import gzip

    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    with gzip.open(default_bpe()) as handle:
        merges = handle.read().decode("utf-8").split("\n")
    merges = merges[1 : 49152 - 256 - 2 + 1]
    pairs = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab.extend("".join(p) for p in pairs)
    vocab.extend(["<|startoftext|>", "<|endoftext|>"])
    (model_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(p) for p in pairs) + "\n")
    path = model_dir / "vocab.json"
    path.write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    return path
