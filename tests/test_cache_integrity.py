"""No stale or damaged cache entry is ever trusted (issue 14).

Text-embedding files and view-cache shards carry a checksum of their tensors and are verified on every
read: a flipped byte, a truncated file, a file from elsewhere or an in-place edit is reported in one
warning line and recomputed, so the results equal those of a fresh run. View-cache keys also cover the
saliency weights (not only the ``dino:DIR`` string) and each image's file identity, so re-initialised
weights or an image replaced at the same path recompute the views.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import absclip.cli as cli
from absclip.backbones import Backbone, create_backbone
from absclip.cache import CachedShard, ViewCache, load_checked, save_checked, weights_fingerprint
from absclip.text.embed import TextEmbedder
from absclip.views import ViewExtractor, ViewSet

TEXTS = ["a photo of a cat.", "a photo of a dog.", "a photo of a bird."]
CLASSES = ["cat", "dog", "bird"]


@pytest.fixture(scope="module")
def tiny(tiny_openai_checkpoint: Path) -> Backbone:
    return create_backbone(f"openai:{tiny_openai_checkpoint}", device="cpu")


def _data_offset(blob: bytes) -> int:
    """Where a safetensors file's tensor bytes start (after the 8-byte length and the JSON header)."""
    return 8 + int.from_bytes(blob[:8], "little")


def _flip(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    start = _data_offset(bytes(blob))
    for i in (start + 1, start + 7, len(blob) - 3):  # a few bytes of the tensor data, as on a bad disk
        blob[i] ^= 0x5A
    path.write_bytes(bytes(blob))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _no_checksum(path: Path) -> None:
    """A well-formed safetensors file with the same tensors but without our checksum (another writer)."""
    from safetensors.torch import load, save

    path.write_bytes(save(load(path.read_bytes())))


def _edit_in_place(path: Path) -> None:
    """Rewrite one tensor's values in place, keeping the header (and its now stale checksum) intact."""
    blob = bytearray(path.read_bytes())
    start = _data_offset(bytes(blob))
    blob[start : start + 64] = np.full(16, 0.25, dtype=np.float32).tobytes()
    path.write_bytes(bytes(blob))


def _pickle(path: Path) -> None:
    torch.save({"embeddings": torch.zeros(3, 3)}, path)  # torch.save writes a zip/pickle, not safetensors


DAMAGE: dict[str, Callable[[Path], None]] = {"flipped bytes": _flip, "truncated": _truncate,
                                              "no checksum": _no_checksum, "edited in place": _edit_in_place,
                                              "a pickle": _pickle, "empty": lambda p: p.write_bytes(b"")}


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# ---- the text-embedding cache ---------------------------------------------------------------------------

@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_text_cache_is_recomputed_with_one_warning(damage: str, tiny: Backbone, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []
    encode = tiny.encode_text

    def counting(texts: list[str], batch_size: int = 256) -> torch.Tensor:
        calls.append(len(texts))
        return encode(texts, batch_size=batch_size)

    monkeypatch.setattr(tiny, "encode_text", counting)
    fresh = TextEmbedder(tiny, cache_dir=tmp_path).embed(TEXTS)
    [path] = (tmp_path / "text").glob("*.safetensors")
    DAMAGE[damage](path)
    caplog.set_level(logging.WARNING)
    again = TextEmbedder(tiny, cache_dir=tmp_path).embed(TEXTS)
    assert torch.equal(again, fresh) and calls == [3, 3]  # recomputed, not read back
    [warning] = _warnings(caplog)
    assert str(path) in warning and "recomputing" in warning
    caplog.clear()
    assert torch.equal(TextEmbedder(tiny, cache_dir=tmp_path).embed(TEXTS), fresh)  # rewritten, now trusted
    assert calls == [3, 3] and _warnings(caplog) == []


def test_text_cache_of_other_texts_is_not_trusted(tiny: Backbone, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A valid, checksummed file holding another number of embeddings (copied over) is recomputed too."""
    embedder = TextEmbedder(tiny, cache_dir=tmp_path)
    fresh = embedder.embed(TEXTS)
    [path] = (tmp_path / "text").glob("*.safetensors")
    path.write_bytes(save_checked({"embeddings": fresh[:2]}))
    caplog.set_level(logging.WARNING)
    assert torch.equal(TextEmbedder(tiny, cache_dir=tmp_path).embed(TEXTS), fresh)
    assert len(_warnings(caplog)) == 1


def _photos(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(64, 48), (40, 90), (33, 33)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"img{i}.png")
    return root


@pytest.mark.parametrize("damage", ["flipped bytes", "truncated"])
def test_classify_with_a_damaged_text_cache_gives_the_fresh_scores(damage: str, tiny_openai_checkpoint: Path,
                                                                    tmp_path: Path) -> None:
    """Before: flipped bytes gave NaN scores with exit 0, a truncated file a SafetensorError traceback."""
    images = _photos(tmp_path / "images")

    def classify(output: Path) -> list[dict]:
        code = cli.main(["classify", str(images), "--classes", ",".join(CLASSES), "--method", "clip",
                         "--model", f"openai:{tiny_openai_checkpoint}", "--cache-dir", str(tmp_path / "cache"),
                         "--output", str(output)])
        assert code == 0
        return [json.loads(line) for line in output.read_text().splitlines()]

    first = classify(tmp_path / "first.jsonl")
    files = list((tmp_path / "cache" / "text").glob("*.safetensors"))
    assert files
    for path in files:
        DAMAGE[damage](path)
    second = classify(tmp_path / "second.jsonl")
    assert second == first
    assert all(np.isfinite(r["score"]) for r in second)
    for path in files:
        load_checked(path)  # rewritten with a valid checksum


# ---- the view cache: shards -----------------------------------------------------------------------------

KEY = {"test": "integrity"}
KEYS = ["a.png", "b.png"]


def _shard(value: float) -> CachedShard:
    views = ViewSet(full=torch.full((2, 4), value), raw=torch.full((2, 3, 4), value + 1))
    return CachedShard(views, [0, 1], {})


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_shard_is_not_loaded(damage: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = ViewCache(tmp_path, KEY, 2)
    cache.store(0, 0, KEYS, _shard(1.0))
    loaded = ViewCache(tmp_path, KEY, 2).load(0, KEYS)
    assert loaded is not None and torch.equal(loaded.views.full, torch.full((2, 4), 1.0))
    DAMAGE[damage](cache.directory / "shard-00000.safetensors")
    caplog.set_level(logging.WARNING)
    assert ViewCache(tmp_path, KEY, 2).load(0, KEYS) is None
    [warning] = _warnings(caplog)
    assert "shard-00000" in warning and "recomputing" in warning
    ViewCache(tmp_path, KEY, 2).store(0, 0, KEYS, _shard(2.0))  # what the runner does next
    again = ViewCache(tmp_path, KEY, 2).load(0, KEYS)
    assert again is not None and torch.equal(again.views.full, torch.full((2, 4), 2.0))


def test_shard_file_is_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Metadata and tensors come from one read: no second open in which the file could have changed."""
    import safetensors
    import safetensors.torch

    ViewCache(tmp_path, KEY, 2).store(0, 0, KEYS, _shard(1.0))
    reads: list[Path] = []
    read_bytes = Path.read_bytes

    def spy(self: Path) -> bytes:
        reads.append(self)
        return read_bytes(self)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the shard file was opened a second time")

    monkeypatch.setattr(Path, "read_bytes", spy)
    monkeypatch.setattr(safetensors, "safe_open", refuse)
    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    cache = ViewCache(tmp_path, KEY, 2)
    assert cache.load(0, KEYS) is not None
    assert [p.name for p in reads] == ["shard-00000.safetensors"]


def test_checksum_covers_names_shapes_and_dtypes() -> None:
    a = torch.arange(6, dtype=torch.float32)
    blobs = [save_checked({"x": a}), save_checked({"y": a}), save_checked({"x": a.view(2, 3)}),
             save_checked({"x": a.view(torch.int32)})]
    from absclip.cache import CHECKSUM

    sums = {json.loads(b[8 : _data_offset(b)])["__metadata__"][CHECKSUM] for b in blobs}
    assert len(sums) == 4


# ---- the view cache: end to end through `absclip eval` ---------------------------------------------------

class _Counter:
    """Counts ViewExtractor calls (one per batch of images extracted) and records the images of each."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.images: list[list[str]] = []
        original = ViewExtractor.__call__

        def wrapped(extractor: ViewExtractor, images: object, keys: list[str], *args: object,
                    **kwargs: object):  # type: ignore[no-untyped-def]
            self.calls += 1
            self.images.append([str(Path(k).relative_to(Path(k).parents[1])) for k in keys])
            return original(extractor, images, keys, *args, **kwargs)

        monkeypatch.setattr(ViewExtractor, "__call__", wrapped)


def _dataset(root: Path) -> Path:
    """3 classes × 2 images: shards of 3 -> 2 shards; batches of 3 -> one extraction call per shard."""
    rng = np.random.default_rng(1)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (40 + 7 * c, 50 + 5 * i, 3), dtype=np.uint8)).save(
                root / name / f"{i}.png")
    return root


def _dino(directory: Path, seed: int) -> Path:
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=224,
                       intermediate_size=64, patch_size=16)
    model = ViTModel(config, add_pooling_layer=False)
    with torch.no_grad():  # a peaked map, so that other weights really move the crops
        for linear in (model.layers[-1].attention.q_proj, model.layers[-1].attention.k_proj):
            linear.weight.mul_(15.0)
    model.save_pretrained(directory)
    return directory


def _eval(root: Path, model: Path, desc: Path, out: Path, views: Path, saliency: str,
          methods: str = "clip,abs") -> list[dict]:
    args = ["eval", "--dataset", "folder", "--root", root, "--descriptions", desc, "--methods", methods,
            "--seeds", "0", "--output-dir", out, "--model", f"openai:{model}", "--cache-dir", out / "text",
            "--view-cache", views, "--saliency", saliency, "--crops", "4", "--batch-size", "3",
            "--shard-size", "3"]
    assert cli.main([str(a) for a in args]) == 0
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _metrics(records: list[dict]) -> dict[str, dict]:
    return {r["method"]: r["metrics"] for r in records}


def test_edited_shard_is_recomputed_by_eval(tmp_path: Path, tiny_openai_checkpoint: Path, descriptions: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: editing a shard's tensors in place changed clip's accuracy (33 % -> 100 % in the report)."""
    root = _dataset(tmp_path / "data")
    first = _eval(root, tiny_openai_checkpoint, descriptions, tmp_path / "a", tmp_path / "views", "uniform",
                  methods="clip")
    [shard] = [p for p in (tmp_path / "views").rglob("shard-00000.safetensors")]
    _edit_in_place(shard)
    counter = _Counter(monkeypatch)
    again = _eval(root, tiny_openai_checkpoint, descriptions, tmp_path / "b", tmp_path / "views", "uniform",
                  methods="clip")
    assert counter.calls == 1  # the edited shard only
    assert _metrics(again) == _metrics(first)
    load_checked(shard)


def test_reinitialised_saliency_weights_recompute_the_views(tmp_path: Path, tiny_openai_checkpoint: Path,
                                                            descriptions: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The same ``dino:DIR`` with other weights in it: the views are recomputed and the results equal a
    fresh run's with the new weights. (ABS's extraction also yields the full-image views CLIP scores.)"""
    root, dino = _dataset(tmp_path / "data"), tmp_path / "dino"
    before = weights_fingerprint(_load_vit(_dino(dino, seed=1)))
    _eval(root, tiny_openai_checkpoint, descriptions, tmp_path / "a", tmp_path / "views", f"dino:{dino}")
    after = weights_fingerprint(_load_vit(_dino(dino, seed=2)))
    assert after != before
    counter = _Counter(monkeypatch)
    again = _eval(root, tiny_openai_checkpoint, descriptions, tmp_path / "b", tmp_path / "views", f"dino:{dino}")
    assert counter.calls == 2  # both shards
    fresh = _eval(root, tiny_openai_checkpoint, descriptions, tmp_path / "c", tmp_path / "fresh", f"dino:{dino}")
    assert _metrics(again) == _metrics(fresh)


def _load_vit(directory: Path) -> torch.nn.Module:
    from transformers import ViTModel

    return ViTModel.from_pretrained(directory, add_pooling_layer=False)


def test_image_replaced_at_the_same_path_recomputes_its_shard(tmp_path: Path, tiny_openai_checkpoint: Path,
                                                              descriptions: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    root = _dataset(tmp_path / "data")
    first = _eval(root, tiny_openai_checkpoint, descriptions, tmp_path / "a", tmp_path / "views", "uniform")
    # shards of 3 in class order: bird/0, bird/1, cat/0 | cat/1, dog/0, dog/1. Replace dog/0, same size.
    target = root / "dog" / "0.png"
    size = Image.open(target).size
    Image.fromarray(np.full((size[1], size[0], 3), 200, dtype=np.uint8)).save(target)
    counter = _Counter(monkeypatch)
    again = _eval(root, tiny_openai_checkpoint, descriptions, tmp_path / "b", tmp_path / "views", "uniform")
    assert counter.images == [["cat/1.png", "dog/0.png", "dog/1.png"]]  # its shard only; the first is reused
    fresh = _eval(root, tiny_openai_checkpoint, descriptions, tmp_path / "c", tmp_path / "fresh", "uniform")
    assert _metrics(again) == _metrics(fresh)
    assert [r["n_samples"] for r in again] == [r["n_samples"] for r in first]
