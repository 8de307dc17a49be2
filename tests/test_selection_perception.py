"""Description selection (the filter and ``dsel``) and PerceptionCLIP: each formula against a plain
loop-by-loop re-derivation on small random tensors, their invariants, and ``absclip eval`` end to end."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import absclip.cli as cli
from absclip.errors import ConfigError, InputFileError
from absclip.methods import MethodOptions, TextInputs, create_method, list_methods
from absclip.methods.dsel import cycled, neighbourhood_logits, pair_text
from absclip.methods.perception_clip import composite_values, load_attributes, load_presets, perception_log_probs
from absclip.text import ClassList, resolve_descriptions
from absclip.text.selection import (
    class_neighbourhoods,
    description_class_similarity,
    discriminative_descriptions,
    fill_empty,
    pooled_texts,
)
from absclip.views import ViewSet

CLASSES = ["cat", "dog", "bird", "fish"]
DESC = {"cat": ["has whiskers", "pointed ears", "a small furry animal", "purrs"],
        "dog": ["barks", "a loyal pet", "has whiskers"], "bird": ["has feathers", "a beak", "lays eggs"],
        "fish": ["has fins", "lives in water"]}


# ---- the selection criterion against the reference's loop ----------------------------------------
def _loop_select(sim: torch.Tensor, target: int, neighbours: list[int], m: int,
                 candidates: torch.Tensor | None = None) -> list[int]:
    """The reference's rule for one (image, class): keep p beating every neighbour, rank by mean margin."""
    scored = []
    for p in range(sim.shape[0]):
        if candidates is not None and not bool(candidates[p]):
            continue
        margins = [float(sim[p, target] - sim[p, n]) for n in neighbours]
        if all(d >= 0 for d in margins):
            scored.append((sum(margins) / len(margins), p))
    return [p for _, p in sorted(scored, reverse=True)[:m]]


def test_discriminative_descriptions_match_the_reference_loop() -> None:
    g = torch.Generator().manual_seed(0)
    sim = torch.randn(40, 6, generator=g)
    sim[:, 5] -= 10  # class 5 loses to everyone: nothing is kept for it
    targets = torch.tensor([0, 1, 2, 5, 3, 4, 0])
    nbhd = torch.stack([torch.randperm(6, generator=g)[:3] for _ in targets])
    nbhd[:, 0] = targets  # the target is among its neighbours, as in an image's top-k
    candidates = torch.rand(len(targets), 40, generator=g) < 0.6
    for cand in (None, candidates):
        idx, valid = discriminative_descriptions(sim, targets, nbhd, 5, cand, chunk=3)
        assert idx.shape == valid.shape == (len(targets), 5)
        for n in range(len(targets)):
            expected = _loop_select(sim, int(targets[n]), nbhd[n].tolist(), 5, None if cand is None else cand[n])
            assert idx[n][valid[n]].tolist() == expected
            assert valid[n].tolist() == [True] * len(expected) + [False] * (5 - len(expected))  # kept first
    assert not valid[3].any()
    grid = torch.randint(-2, 3, (40, 6), generator=g).float()  # ties: a zero margin to a neighbour still passes
    g_idx, g_valid = discriminative_descriptions(grid, targets, nbhd, 40)
    for n in range(len(targets)):
        assert set(g_idx[n][g_valid[n]].tolist()) == set(_loop_select(grid, int(targets[n]), nbhd[n].tolist(), 40))
    fallback = torch.arange(5).repeat(len(targets), 1)
    filled, filled_valid = fill_empty(idx, valid, fallback, torch.ones_like(valid))
    assert filled[3].tolist() == [0, 1, 2, 3, 4] and filled_valid[3].all()
    assert torch.equal(filled[0], idx[0])  # rows that kept something keep it


def test_similarity_and_neighbourhoods_by_loop() -> None:
    g = torch.Generator().manual_seed(1)
    prompts = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    images = torch.nn.functional.normalize(torch.randn(12, 8, generator=g), dim=-1)
    labels = torch.arange(12) % 5
    desc = torch.nn.functional.normalize(torch.randn(7, 8, generator=g), dim=-1)
    refs = torch.stack([images[labels == c].mean(0) for c in range(5)])
    sim = description_class_similarity(desc, refs)
    for p in range(7):  # the reference's S: mean cosine over the class's selection images
        for c in range(5):
            mean_cos = sum(float(desc[p] @ images[i]) for i in range(12) if labels[i] == c) / int((labels == c).sum())
            assert sim[p, c].item() == pytest.approx(mean_cos, abs=1e-5)
    nb = class_neighbourhoods(prompts, 3)
    for c in range(5):
        others = sorted((c2 for c2 in range(5) if c2 != c), key=lambda c2: -float(prompts[c] @ prompts[c2]))
        assert nb[c].tolist() == [c, *others[:2]]
    assert class_neighbourhoods(prompts, 9).shape == (5, 5)


def test_pooled_texts_and_cycling() -> None:
    flat, cand, own, own_valid = pooled_texts([["a", "b"], ["b", "c"], ["a"]], "all")
    assert flat == ["a", "b", "c"] and cand.all()
    assert own.tolist() == [[0, 1], [1, 2], [0, 0]] and own_valid.tolist() == [[1, 1], [1, 1], [1, 0]]
    flat, cand, own, _ = pooled_texts([["a", "b"], ["b", "c"], ["a"]], "own")
    assert flat == ["a", "b", "b", "c", "a"] and own.tolist() == [[0, 1], [2, 3], [4, 0]]
    assert cand.tolist() == [[1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]]
    idx = torch.tensor([[7, 8, 0, 0, 0], [3, 0, 0, 0, 0], [1, 2, 3, 4, 5]])
    valid = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    # the reference pads a short list by appending v[i % len] for the missing slots
    assert cycled(idx, valid).tolist() == [[7, 8, 7, 8, 7], [3, 3, 3, 3, 3], [1, 2, 3, 4, 5]]
    out = neighbourhood_logits(torch.tensor([[0.9, 0.1, 0.5, -0.2]]), torch.tensor([[1, 3]]),
                               torch.tensor([[0.3, 0.4]]))
    assert out.argsort(descending=True).tolist() == [[3, 1, 0, 2]]  # neighbourhood first, then CLIP's order


# ---- the methods on a fake embedder, against loops ----------------------------------------------
class FakeEmbedder:
    """Deterministic unit vectors per text (no model): lets dsel run its real prepare on known embeddings."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    @staticmethod
    def vector(text: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(zlib.crc32(text.encode()))
        return torch.nn.functional.normalize(torch.randn(8, generator=g), dim=0)

    def embed(self, texts: list[str]) -> torch.Tensor:
        self.calls.append(list(texts))
        return torch.stack([self.vector(t) for t in texts])


def _inputs(embedder: FakeEmbedder) -> TextInputs:
    classes = ClassList(tuple(CLASSES))
    return TextInputs(None, embedder, classes, resolve_descriptions(classes, DESC))  # type: ignore[arg-type]


@pytest.mark.parametrize("weight", [None, 2.5])
@pytest.mark.parametrize("pool", ["all", "own"])
def test_dsel_matches_a_per_image_loop(weight: float | None, pool: str) -> None:
    method = create_method("dsel", MethodOptions(dsel_classname_weight=weight, dsel_pool=pool, dsel_descriptions=2))
    embedder = FakeEmbedder()
    method.prepare(_inputs(embedder))
    v = FakeEmbedder.vector
    prompts = torch.stack([v(f"a photo of a {c}.") for c in CLASSES])
    pools = {c: list(DESC[c]) for c in CLASSES}
    if pool == "all":
        every = list(dict.fromkeys(t for c in CLASSES for t in DESC[c]))
        pools = {c: every for c in CLASSES}
    feats = torch.nn.functional.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(3)), dim=-1)
    logits = method.score(ViewSet(full=feats))
    for b, f in enumerate(feats):
        cos = [float(f @ prompts[c]) for c in range(4)]
        nb = sorted(range(4), key=lambda c: -cos[c])[:3]
        scores = []
        for c in nb:
            texts = pools[CLASSES[c]]
            emb = torch.stack([v(t) for t in texts])
            chosen = _loop_select(emb @ prompts.T, c, nb, 2)
            kept = [texts[p] for p in chosen] or DESC[CLASSES[c]][:2]  # the reference's fallback
            if weight is None:
                full = [kept[i % len(kept)] for i in range(2)]
                scores.append(sum(float(f @ v(f"a photo of a {CLASSES[c]}, {d}.")) for d in full) / 2)
            else:
                scores.append(weight * cos[c] + sum(float(f @ v(d)) for d in kept) / len(kept))
        assert logits[b, nb].tolist() == pytest.approx(scores, abs=1e-5)
        assert int(logits[b].argmax()) == nb[int(np.argmax(scores))]
        assert set(logits[b].argsort(descending=True)[:3].tolist()) == set(nb)  # CLIP's top-3 rank first


def test_dsel_with_one_neighbour_is_clip() -> None:
    method = create_method("dsel", MethodOptions(dsel_neighbours=1))
    method.prepare(_inputs(FakeEmbedder()))
    feats = torch.nn.functional.normalize(torch.randn(10, 8, generator=torch.Generator().manual_seed(4)), dim=-1)
    prompts = torch.stack([FakeEmbedder.vector(f"a photo of a {c}.") for c in CLASSES])
    assert torch.equal(method.score(ViewSet(full=feats)).argmax(1), (feats @ prompts.T).argmax(1))


def test_pair_text_and_pair_memo() -> None:
    assert pair_text("a photo of a cat.", "has whiskers") == "a photo of a cat, has whiskers."
    embedder = FakeEmbedder()
    method = create_method("dsel")
    method.prepare(_inputs(embedder))
    feats = torch.nn.functional.normalize(torch.randn(3, 8, generator=torch.Generator().manual_seed(5)), dim=-1)
    first = method.score(ViewSet(full=feats))
    calls = len(embedder.calls)
    assert torch.equal(method.score(ViewSet(full=feats)), first) and len(embedder.calls) == calls  # memoised


# ---- the class-level filter in front of every description method ---------------------------------
def _backbone(checkpoint: Path):  # type: ignore[no-untyped-def]
    from absclip.backbones import create_backbone

    return create_backbone(f"openai:{checkpoint}", pretrained=None, device="cpu")


def test_filter_keeps_what_the_loop_keeps_and_reaches_every_method(tiny_openai_checkpoint: Path,
                                                                  tmp_path: Path) -> None:
    from absclip import ZeroShotClassifier
    from absclip.text import TextEmbedder
    from absclip.text.selection import select_class_descriptions

    backbone = _backbone(tiny_openai_checkpoint)
    (tmp_path / "d.json").write_text(json.dumps(DESC))
    enc = backbone.encode_text
    prompts = enc([f"a photo of a {c}." for c in CLASSES])
    nb = [[c, *sorted((o for o in range(4) if o != c), key=lambda o: -float(prompts[c] @ prompts[o]))[:1]]
          for c in range(4)]
    expected = []
    for c, name in enumerate(CLASSES):
        emb = enc(DESC[name])
        chosen = _loop_select(emb @ prompts.T, c, nb[c], 2)
        expected.append([DESC[name][p] for p in chosen] or DESC[name][:2])
    classes = ClassList(tuple(CLASSES))
    picked_texts = select_class_descriptions(resolve_descriptions(classes, DESC), TextEmbedder(backbone, ""),
                                             prompts, 2, 2).texts
    assert picked_texts == expected
    opts = MethodOptions(select_descriptions=2, select_neighbours=2, saliency="uniform")
    cache = tmp_path / "cache"
    for name in ("abs", "mce", "tda+mce"):  # the per-description methods embed exactly the kept texts
        method = ZeroShotClassifier(backbone, name, CLASSES, tmp_path / "d.json", options=opts,
                                    cache_dir=cache).method
        assert method.ragged.counts.tolist() == [len(t) for t in expected], name  # type: ignore[attr-defined]
    for name in ("wca", "clip-d"):
        ZeroShotClassifier(backbone, name, CLASSES, tmp_path / "d.json", options=opts, cache_dir=cache)
    # the selected texts are the cache key: a cached unfiltered run does not leak into a filtered one
    plain = ZeroShotClassifier(backbone, "cupl", CLASSES, tmp_path / "d.json", cache_dir=cache).method
    for _ in range(2):  # computed, then read back from the cache
        picked = ZeroShotClassifier(backbone, "cupl", CLASSES, tmp_path / "d.json", options=opts,
                                    cache_dir=cache).method
        direct = torch.nn.functional.normalize(torch.stack([enc(t).mean(0) for t in expected]), dim=-1)
        torch.testing.assert_close(picked.text, direct, atol=1e-5, rtol=1e-5)  # type: ignore[attr-defined]
    assert not torch.allclose(plain.text, picked.text)  # type: ignore[attr-defined]


def test_filter_with_one_neighbour_keeps_every_description(tiny_openai_checkpoint: Path) -> None:
    from absclip.text import TextEmbedder
    from absclip.text.selection import select_class_descriptions

    backbone = _backbone(tiny_openai_checkpoint)
    classes = ClassList(tuple(CLASSES))
    prompts = backbone.encode_text([f"a photo of a {c}." for c in CLASSES])
    out = select_class_descriptions(resolve_descriptions(classes, DESC), TextEmbedder(backbone, ""), prompts, 50, 1)
    assert [sorted(t) for t in out.texts] == [sorted(DESC[c]) for c in CLASSES]  # margin 0 to itself: all pass
    assert "selected: 50 per class" in out.source


# ---- PerceptionCLIP -----------------------------------------------------------------------------
def _reference_composite(templates: dict, selected: list[str]) -> dict[str, list[str]]:
    """The reference's recursive generate_composite_factors, written out plainly."""
    templates = {k: templates[k] for k in selected if k in templates}
    if not templates:
        return {"": [""]}
    key, sub = next(iter(templates.items()))
    rest = {k: v for k, v in templates.items() if k != key}
    out = {}
    for sub_key, values in sub.items():
        for rest_key, rest_values in _reference_composite(rest, list(rest)).items():
            out[f"{sub_key}_{rest_key}" if rest_key else sub_key] = [
                v + (", " + rv if rv else "") if v else rv for v in values for rv in rest_values]
    return out


def test_composite_values_follow_the_reference() -> None:
    presets = load_presets()["presets"]
    for preset, factors in (("imagenet", ["condition", "quality"]), ("cub", ["size", "background", "condition"]),
                            ("oxford-pet", ["species", "pose"])):
        ours = composite_values(presets[preset]["factors"], factors)
        assert ours == _reference_composite(presets[preset]["factors"], factors)
        assert list(ours) == list(_reference_composite(presets[preset]["factors"], factors))  # same z order
    small = composite_values({"a": {"x": ["", "p"], "y": ["q"]}, "b": {"u": [""], "v": ["r", "s"]}}, ["a", "b"])
    assert small == {"x_u": ["", "p"], "x_v": ["r", "s", "p, r", "p, s"], "y_u": ["q"], "y_v": ["q, r", "q, s"]}


def test_perception_log_probs_match_the_reference_formula() -> None:
    g = torch.Generator().manual_seed(6)
    f = 4 * torch.randn(5, 7, 3, generator=g)  # small enough for the reference's direct exp
    for t in (1.0, 3.0):
        pz = (f.double() / t).exp().sum(1)
        pz = pz / pz.sum(1, keepdim=True)  # [B, Z]
        expected = torch.zeros(5, 7, dtype=torch.float64)
        for b in range(5):
            for y in range(7):
                for z in range(3):
                    expected[b, y] += pz[b, z] * f[b, y, z].double().exp() / f[b, :, z].double().exp().sum()
        ours = perception_log_probs(f, t)
        torch.testing.assert_close(ours.exp().double(), expected, atol=1e-6, rtol=1e-5)
    huge = perception_log_probs(100 * torch.ones(1, 2, 2), 1.0)  # exp(100) overflows float32; log space does not
    assert torch.isfinite(huge).all() and huge.exp().sum().item() == pytest.approx(1.0, abs=1e-5)
    one = torch.randn(4, 6, 1, generator=g)  # a single context: P(y|x) is CLIP's softmax
    torch.testing.assert_close(perception_log_probs(one, 3.0), torch.log_softmax(one[..., 0], dim=1))


def test_perceptionclip_scores_by_loop(tiny_openai_checkpoint: Path, tmp_path: Path) -> None:
    from absclip import ZeroShotClassifier

    backbone = _backbone(tiny_openai_checkpoint)
    opts = MethodOptions(perception_attributes="cub", perception_factors="size", perception_temperature=2.0)
    method = ZeroShotClassifier(backbone, "perceptionclip", CLASSES, cache_dir="", options=opts).method
    feats = torch.nn.functional.normalize(torch.randn(3, 32, generator=torch.Generator().manual_seed(7)), dim=-1)
    logits = method.score(ViewSet(full=feats))
    texts = {"others": ["{}."], "small": ["{}, small."], "big": ["{}, big."]}
    f = torch.zeros(3, 4, 3)
    for y, name in enumerate(CLASSES):
        for z, descs in enumerate(texts.values()):
            emb = backbone.encode_text([d.format(f"a photo of a {name}, a type of bird") for d in descs]).mean(0)
            f[:, y, z] = backbone.logit_scale * feats @ torch.nn.functional.normalize(emb, dim=0)
    torch.testing.assert_close(logits, perception_log_probs(f, 2.0), atol=1e-4, rtol=1e-4)
    one = ZeroShotClassifier(backbone, "perceptionclip", CLASSES, cache_dir="", options=MethodOptions(
        perception_attributes=str(_single_context(tmp_path)))).method
    clip = ZeroShotClassifier(backbone, "clip", CLASSES, cache_dir="").method
    assert torch.equal(one.score(ViewSet(full=feats)).argmax(1), clip.score(ViewSet(full=feats)).argmax(1))


def _single_context(tmp: Path) -> Path:
    path = tmp / "one.json"
    path.write_text(json.dumps({"main": "a photo of a {}", "factors": {"none": {"plain": [""]}},
                                "default_factors": ["none"], "temperature": 1}))
    return path


def test_options_fail_early_with_one_line(tmp_path: Path) -> None:
    for bad in ({"select_descriptions": 0}, {"select_neighbours": 0}, {"select_pool": "some"},
                {"dsel_descriptions": 1.5}, {"dsel_classname_weight": -1.0}, {"perception_temperature": 0.0},
                {"perception_temperature": float("nan")}):
        with pytest.raises(ConfigError):
            MethodOptions(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"unknown attribute.*choose from size, background, condition"):
        create_method("perceptionclip", MethodOptions(perception_attributes="cub", perception_factors="quality"))
    with pytest.raises(ConfigError, match="neither a preset"):
        create_method("perceptionclip", MethodOptions(perception_attributes=str(tmp_path / "missing.json")))
    (tmp_path / "bad.json").write_text(json.dumps({"main": "x", "factors": {}}))
    with pytest.raises(InputFileError, match="must look like"):
        load_attributes(str(tmp_path / "bad.json"))
    assert load_attributes("imagenet")["temperature"] == 3.0
    assert {"dsel", "perceptionclip"} <= set(list_methods()) and "dsel+support" in list_methods(adaptive=True)


# ---- absclip eval end to end ----------------------------------------------------------------------
def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (30, 36, 3), dtype=np.uint8)).save(path)


def test_eval_runs_selection_dsel_and_perceptionclip(tiny_openai_checkpoint: Path, tmp_path: Path) -> None:
    for c, name in enumerate(CLASSES):
        for i in range(2):
            _image(tmp_path / "test" / name / f"{i}.png", 10 * c + i)
            _image(tmp_path / "train" / name / f"s{i}.png", 100 + 10 * c + i)
    (tmp_path / "d.json").write_text(json.dumps(DESC))
    base = ["eval", "--dataset", "folder", "--root", tmp_path / "test", "--descriptions", tmp_path / "d.json",
            "--model", f"openai:{tiny_openai_checkpoint}", "--cache-dir", tmp_path / "cache" / "text",
            "--view-cache", tmp_path / "cache" / "views", "--saliency", "uniform", "--crops", "2",
            "--random-crops", "2", "--batch-size", "4", "--shard-size", "4", "--workers", "0", "--seeds", "0"]
    runs = {"plain": ["--methods", "dsel,perceptionclip,cupl"],
            "selected": ["--methods", "cupl,abs,dsel", "--select-descriptions", "1"],
            "support": ["--methods", "dsel+support", "--support", tmp_path / "train", "--shots", "2"]}
    records = {}
    for label, extra in runs.items():
        out = tmp_path / label
        assert cli.main([str(a) for a in [*base, "--output-dir", out, *extra]]) == 0
        records[label] = {r["method"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert set(records["plain"]) == {"dsel", "perceptionclip", "cupl"}
    for group in records.values():
        for r in group.values():
            assert r["n_samples"] == 8
    assert records["selected"]["cupl"]["settings"]["select_descriptions"] == 1
    assert records["plain"]["perceptionclip"]["settings"]["perception_attributes"] == "imagenet"
    assert records["support"]["dsel+support"]["adaptation"]["setting"] == "few-shot"
