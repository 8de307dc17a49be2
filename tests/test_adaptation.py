"""Few-shot (Tip-Adapter, GDA) and test-time (TDA) adaptation: each rule against a plain re-derivation,
the seeded support draw and stream, and ``absclip eval --support`` end to end on tiny folders."""

from __future__ import annotations

import json
import math
import operator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import absclip.cli as cli
from absclip.adapt import AdaptOptions, draw_support, match_support, stream_order
from absclip.adapt.formulas import gda_classifier, gda_linear_logits, select_alpha, tip_adapter_logits
from absclip.adapt.tda import EntropyCache, Observations, TdaState, observe, softmax_entropy
from absclip.data import LabelledImages, create_dataset
from absclip.errors import ConfigError, InputFileError, UnsupportedError
from absclip.methods import MethodOptions, create_method, list_methods
from absclip.reproduce import PRESETS, overrides
from absclip.text import ClassList
from absclip.views import ViewExtractor

CLASSES = ["cat", "dog", "bird"]
VARIANTS = ["tip-adapter", "tip-adapter+mce", "tip-adapter+abs", "gda", "gda+mce", "gda+abs",
            "tda", "tda+mce", "tda+abs"]


# ---- TDA: caches and stream against the reference's list-based rules ----------------------------
def _reference_update(cache: dict[int, list[list]], pred: int, item: list, capacity: int) -> None:
    """The reference's update_cache, as a plain loop over Python lists."""
    if pred in cache:
        if len(cache[pred]) < capacity:
            cache[pred].append(item)
        elif item[1] < cache[pred][-1][1]:
            cache[pred][-1] = item
        cache[pred] = sorted(cache[pred], key=operator.itemgetter(1))
    else:
        cache[pred] = [item]


def _reference_cache_logits(f: torch.Tensor, cache: dict[int, list[list]], alpha: float, beta: float, c: int,
                            mask: tuple[float, float] | None = None) -> torch.Tensor:
    out = torch.zeros(c)
    for cls in sorted(cache):
        for item in cache[cls]:
            weight = math.exp(-beta * (1 - float(f @ item[0])))
            if mask is None:
                out[cls] += weight
            else:
                for k in range(c):
                    if mask[0] < float(item[2][k]) < mask[1]:
                        out[k] += weight
    return alpha * out


def test_entropy_cache_insertions_and_evictions_step_by_step() -> None:
    cache = EntropyCache(num_classes=2, capacity=2, dim=2)
    feats = {name: torch.tensor([float(i), 1.0]) for i, name in enumerate("abcdefg")}
    steps = [("a", 0.5, [("a", 0.5)]),
             ("b", 0.3, [("b", 0.3), ("a", 0.5)]),                 # appended, re-sorted
             ("c", 0.4, [("b", 0.3), ("c", 0.4)]),                 # full: replaces the highest (a)
             ("d", 0.6, [("b", 0.3), ("c", 0.4)]),                 # higher than the highest: rejected
             ("e", 0.4, [("b", 0.3), ("c", 0.4)]),                 # equal to the highest: rejected (strict)
             ("f", 0.1, [("f", 0.1), ("b", 0.3)])]                 # lowest: evicts c, goes first
    for name, entropy, expected in steps:
        cache.update(0, feats[name], entropy)
        got = cache.entries(0)
        assert [h for h, _ in got] == [h for _, h in expected]
        for (_, feature), (want, _) in zip(got, expected, strict=True):
            assert torch.equal(feature, feats[want])
    assert cache.entries(1) == [] and len(cache) == 2 and int(cache.valid.sum()) == 2


def test_tda_stream_matches_plain_reference_loop() -> None:
    torch.manual_seed(0)
    c, d, n = 4, 6, 60
    feats = F.normalize(torch.randn(n, d), dim=-1)
    logits = torch.randn(n, c) * 3
    entropy = softmax_entropy(logits)
    obs = Observations(feats, logits, entropy, logits.softmax(-1))
    band, mask = (0.2, 0.5), (0.03, 1.0)
    state = TdaState(c, d, 3, 2, 2.0, 5.0, 0.117, 1.0, band, mask)
    pos: dict[int, list[list]] = {}
    neg: dict[int, list[list]] = {}
    order = stream_order(n, 3)
    saw_negative = False
    for row in order:
        f, lg, h, p = feats[row], logits[row], float(entropy[row]), logits[row].softmax(-1)
        got = state.step(f, lg, h, p)
        pred = int(lg.argmax())
        _reference_update(pos, pred, [f, h], 3)
        if band[0] < h / math.log2(c) < band[1]:
            _reference_update(neg, pred, [f, h, p], 2)
            saw_negative = True
        want = lg + _reference_cache_logits(f, pos, 2.0, 5.0, c)
        if neg:
            want = want - _reference_cache_logits(f, neg, 0.117, 1.0, c, mask)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        for cls in range(c):  # the caches hold the same entries in the same order
            assert [h for h, _ in state.positive.entries(cls)] == [it[1] for it in pos.get(cls, [])]
            assert [h for h, _ in state.negative.entries(cls)] == [it[1] for it in neg.get(cls, [])]
    assert saw_negative and len(state.positive) == sum(len(v) for v in pos.values())
    # run() streams the same order and returns rows in their own order
    again = TdaState(c, d, 3, 2, 2.0, 5.0, 0.117, 1.0, band, mask).run(obs, order)
    replay = TdaState(c, d, 3, 2, 2.0, 5.0, 0.117, 1.0, band, mask)
    for row in order:
        torch.testing.assert_close(again[row], replay.step(feats[row], logits[row], float(entropy[row]),
                                                           logits[row].softmax(-1)))


def test_observe_keeps_the_lowest_entropy_views() -> None:
    torch.manual_seed(1)
    view_logits = torch.randn(3, 20, 5) * 4
    view_feats = F.normalize(torch.randn(3, 20, 8), dim=-1)
    obs = observe(view_logits, view_feats, 0.1)
    for b in range(3):
        ent = [float(softmax_entropy(view_logits[b, v])) for v in range(20)]
        kept = sorted(range(20), key=lambda v: ent[v])[:2]  # int(20 * 0.1) = 2 views
        torch.testing.assert_close(obs.features[b], view_feats[b, kept].mean(0))
        torch.testing.assert_close(obs.logits[b], view_logits[b, kept].mean(0))
        mean_prob = view_logits[b, kept].softmax(-1).mean(0)
        torch.testing.assert_close(obs.probabilities[b], mean_prob)
        torch.testing.assert_close(obs.entropy[b], -(mean_prob * mean_prob.log()).sum())
    single = observe(view_logits[:, :1], view_feats[:, :1], 0.1)
    torch.testing.assert_close(single.entropy, softmax_entropy(view_logits[:, 0]))
    assert observe(view_logits[:, :4], view_feats[:, :4], 0.1).logits.shape == (3, 5)  # at least one view


# ---- Tip-Adapter and GDA: hand-computed cases -----------------------------------------------------
def test_tip_adapter_logits_hand_computed() -> None:
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    labels = torch.tensor([0, 1, 1])
    zero_shot = torch.tensor([[10.0, 11.0]])
    query = torch.tensor([[[1.0, 0.0]]])  # affinities 1, 0, 0.6
    got = tip_adapter_logits(zero_shot, query, keys, labels, 2, alpha=1.0, beta=5.5)
    want = torch.tensor([[10.0 + 1.0, 11.0 + math.exp(-5.5) + math.exp(-5.5 * 0.4)]])
    torch.testing.assert_close(got, want)
    two_views = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # views are scored one by one, then averaged
    got = tip_adapter_logits(torch.zeros(1, 2), two_views, keys, labels, 2, alpha=2.0, beta=1.0)
    v1 = torch.tensor([1.0, math.exp(-1.0) + math.exp(-0.4)])
    v2 = torch.tensor([math.exp(-1.0), 1.0 + math.exp(-0.2)])
    torch.testing.assert_close(got, (2.0 * (v1 + v2) / 2)[None])


def test_gda_classifier_hand_computed() -> None:
    x = torch.tensor([[2.0, 1.0], [2.0, -1.0], [-2.0, 1.0], [-2.0, -1.0]])
    y = torch.tensor([0, 0, 1, 1])
    weights, bias = gda_classifier(x, y, 2)
    # means (±2, 0); (N-1)Σ = diag(0, 4), tr Σ = 4/3, so P = 2 · diag(3/4, 3/16) and W = μ P = (±3, 0)
    torch.testing.assert_close(weights, torch.tensor([[3.0, 0.0], [-3.0, 0.0]]))
    torch.testing.assert_close(bias, torch.full((2,), math.log(0.5) - 3.0))
    lin = gda_linear_logits(torch.tensor([[[1.0, 0.0]]]), weights, bias)
    torch.testing.assert_close(lin, torch.tensor([[math.log(0.5), -6.0 + math.log(0.5)]]))


def test_gda_classifier_matches_the_reference_formula_in_numpy() -> None:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(30, 5))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    labels = np.repeat(np.arange(3), 10)
    mus = np.stack([feats[labels == c].mean(0) for c in range(3)])
    centred = np.concatenate([feats[labels == c] - mus[c] for c in range(3)])
    cov = np.cov(centred.T)
    precision = 5 * np.linalg.pinv((30 - 1) * cov + np.trace(cov) * np.eye(5))
    w_ref = (mus @ precision)
    b_ref = np.log(1 / 3) - 0.5 * np.einsum("nd,dc,nc->n", mus, precision, mus)
    weights, bias = gda_classifier(torch.tensor(feats, dtype=torch.float32), torch.tensor(labels), 3)
    np.testing.assert_allclose(weights.numpy(), w_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bias.numpy(), b_ref, rtol=1e-4, atol=1e-4)


def test_select_alpha_follows_the_reference_search() -> None:
    zero_shot = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    linear = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert select_alpha(zero_shot, linear, torch.tensor([1, 1]), (0.1, 10.0, 100.0)) == (10.0, 1.0)
    assert select_alpha(zero_shot, linear, torch.tensor([0, 0]), (0.1, 10.0)) == (0.1, 1.0)  # first best
    assert select_alpha(zero_shot, -linear * 0 + torch.tensor([[2.0, 0]]), torch.tensor([1, 1]), (1.0,)) == (0.1, 0.0)


# ---- support sets and streams -----------------------------------------------------------------------
def _image(path: Path, seed: int, size: tuple[int, int] = (36, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """test/: 3 classes × 2 images and one unreadable file; train/: 8 images per class (4 shots + 4 for GDA)."""
    root = tmp_path_factory.mktemp("adapt")
    for c, name in enumerate(CLASSES):
        for i in range(2):
            _image(root / "test" / name / f"{i}.png", 100 * c + i, (40 + 7 * i, 33 + 5 * c))
        for i in range(8):
            _image(root / "train" / name / f"s{i}.png", 1000 + 100 * c + i)
    (root / "test" / "dog" / "broken.png").write_bytes(b"not an image")
    return root / "test", root / "train"


def test_support_draw_is_seeded_and_matched_by_class(folders: tuple[Path, Path]) -> None:
    test, train = folders
    evaluated = create_dataset("folder", test)
    pool = match_support(train, evaluated)
    assert [len(c) for c in pool.candidates] == [8, 8, 8] and pool.folders == ["bird", "cat", "dog"]
    a, b, c = (draw_support(pool, evaluated, 4, seed, validation=2) for seed in (0, 0, 1))
    assert a.shots.samples == b.shots.samples and a.digest == b.digest
    assert a.shots.samples != c.shots.samples and a.digest != c.digest
    for draw in (a, c):
        assert [lbl for _, lbl in draw.shots.samples] == [0] * 4 + [1] * 4 + [2] * 4
        assert draw.validation is not None and len(draw.validation.samples) == 6
        assert not {p for p, _ in draw.shots.samples} & {p for p, _ in draw.validation.samples}
        assert all(p.parent.name == evaluated.classes[lbl] for p, lbl in draw.shots.samples)
    with pytest.raises(InputFileError, match=r"class 'bird' \(bird/\) has 8 usable images, fewer than the 9"):
        draw_support(pool, evaluated, 9, 0)
    # a support folder that also holds the test images never draws them
    warnings: list[str] = []
    both = create_dataset("folder", test)
    pool = match_support(test, both, warnings.append)
    assert pool.excluded_test_images == 7 and "left out" in warnings[0]


def test_support_class_mismatch_names_the_class(folders: tuple[Path, Path], tmp_path: Path) -> None:
    test, _ = folders
    evaluated = create_dataset("folder", test)
    for name in ("cat", "Dog", "fish"):
        _image(tmp_path / "support" / name / "0.png", 1)
    warnings: list[str] = []
    with pytest.raises(InputFileError, match=r"no class folder for 1 of 3 classes: 'bird' \(class 0\)"):
        match_support(tmp_path / "support", evaluated, warnings.append)
    _image(tmp_path / "support" / "bird" / "0.png", 2)
    pool = match_support(tmp_path / "support", evaluated, warnings.append)  # 'Dog' matches dog by name
    assert pool.folders == ["bird", "cat", "Dog"] and "fish" in warnings[-1]


def test_imagenet_wnid_support_maps_subsets_by_index(tmp_path: Path) -> None:
    wnids = [f"n{i:08d}" for i in range(1000)]
    for w in wnids:
        (tmp_path / "train" / w).mkdir(parents=True)
        (tmp_path / "train" / w / "a.png").write_bytes(b"")  # listed, never decoded here
    names = ClassList(tuple(f"class {i}" for i in (3, 7)))
    subset = LabelledImages("imagenet-r", [(tmp_path / "x.png", 0), (tmp_path / "y.png", 1)], names,
                            imagenet_indices=[3, 7])
    assert match_support(tmp_path / "train", subset).folders == [wnids[3], wnids[7]]


def test_stream_order_is_a_seeded_permutation() -> None:
    assert stream_order(50, 0) == stream_order(50, 0) and sorted(stream_order(50, 0)) == list(range(50))
    assert stream_order(50, 0) != stream_order(50, 1)


def test_options_are_validated_and_listed() -> None:
    with pytest.raises(ConfigError, match=r"adapt\.shots"):
        AdaptOptions(shots=0)
    with pytest.raises(ConfigError, match="tda_neg_entropy"):
        AdaptOptions(tda_neg_entropy=(0.5, 0.2))
    opts = overrides.apply_overrides(MethodOptions(), {"adapt.tda_neg_entropy": "0.1,0.4", "adapt.gda_alpha": "10",
                                                       "adapt.support": "/data/train"})
    assert opts.adapt.tda_neg_entropy == (0.1, 0.4) and opts.adapt.gda_alpha == 10
    assert opts.adapt.support == "/data/train"
    assert not set(VARIANTS) & set(list_methods()) and set(VARIANTS) <= set(list_methods(adaptive=True))
    for name in VARIANTS:
        method = create_method(name)
        assert method.needs_descriptions == ("+" in name)
        assert method.streaming == name.startswith("tda") and method.needs_support != method.streaming
    overrides.check_row_options(PRESETS["table3"])


# ---- absclip eval end to end --------------------------------------------------------------------
def _eval(test: Path, train: Path | None, model: Path, desc: Path, out: Path, cache: Path, methods: str,
          *extra: object) -> int:
    args = ["eval", "--dataset", "folder", "--root", test, "--shots", "4", "--methods", methods,
            "--seeds", "0,1", "--descriptions", desc, "--output-dir", out, "--model", f"openai:{model}",
            "--cache-dir", cache / "text", "--view-cache", cache / "views", "--saliency", "uniform",
            "--crops", "3", "--random-crops", "3", "--batch-size", "4", "--shard-size", "4", "--workers", "0",
            *extra]
    if train is not None:
        args[5:5] = ["--support", train]
    return cli.main([str(a) for a in args])


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


E2E = "clip,tip-adapter,tip-adapter+mce,gda,tda,tda+mce"


def test_eval_with_support_writes_every_variant(folders: tuple[Path, Path], descriptions: Path,
                                                tiny_openai_checkpoint: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    test, train = folders
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert _eval(test, train, tiny_openai_checkpoint, descriptions, out, cache, E2E) == 0
    records = _records(out)
    assert [(r["method"], r["seed"]) for r in records] == [(m, s) for s in (0, 1) for m in E2E.split(",")]
    by = {(r["method"], r["seed"]): r for r in records}
    for r in records:
        assert r["n_samples"] == 6
        if r["method"] == "clip":  # zero-shot records do not claim the support set
            assert "adaptation" not in r and r["settings"]["adapt"]["support"] is None
        elif r["method"].startswith("tda"):
            stream = r["adaptation"]["stream"]
            assert r["adaptation"]["setting"] == "test-time" and stream["seed"] == r["seed"] and stream["length"] == 6
        else:
            support = r["adaptation"]["support"]
            assert r["settings"]["adapt"]["shots"] == 4 and r["settings"]["adapt"]["support"] == str(train)
            assert support["shots_used"] == [4, 4, 4] and support["seed"] == r["seed"]
            assert support["root"] == str(train)
    assert by[("gda", 0)]["adaptation"]["alpha_searched"] and by[("gda", 0)]["adaptation"]["support"][
        "validation_used"] == [4, 4, 4]
    assert by[("tip-adapter", 0)]["adaptation"]["support"]["draw"] != by[("tip-adapter", 1)]["adaptation"][
        "support"]["draw"]
    assert by[("tda", 0)]["adaptation"]["stream"]["order_sha256"] != by[("tda", 1)]["adaptation"]["stream"][
        "order_sha256"]
    details = [json.loads(line) for line in (out / "adaptation.jsonl").read_text().splitlines()]
    assert {(d["kind"], d["seed"]) for d in details} == {(k, s) for k in ("support", "stream") for s in (0, 1)}
    stream0 = next(d for d in details if d["kind"] == "stream" and d["seed"] == 0)
    assert all("broken" not in p for p in stream0["paths"]) and len(stream0["order"]) == 6

    # a rerun encodes nothing (test and support views come from the cache) and gives the same records
    calls: list[int] = []
    original = ViewExtractor.__call__

    def counting(extractor: ViewExtractor, *a: object, **k: object):  # type: ignore[no-untyped-def]
        calls.append(1)
        return original(extractor, *a, **k)

    monkeypatch.setattr(ViewExtractor, "__call__", counting)
    assert _eval(test, train, tiny_openai_checkpoint, descriptions, tmp_path / "again", cache, E2E) == 0
    assert not calls and _records(tmp_path / "again") == records


def test_evaluator_logits_match_an_independent_computation(folders: tuple[Path, Path],
                                                          tiny_openai_checkpoint: Path) -> None:
    """Tip-Adapter, GDA and TDA logits from the Evaluator equal those computed here from the encoder's own
    full-image features, the seed's draw and stream, and the formulas (so labels, rows and order line up)."""
    from absclip.backbones import create_backbone
    from absclip.classifier import ZeroShotClassifier, to_uint8_tensor
    from absclip.evaluate import Evaluator

    test, train = folders
    backbone = create_backbone(f"openai:{tiny_openai_checkpoint}", pretrained=None, device="cpu")
    dataset = create_dataset("folder", test)  # classes in folder order: bird, cat, dog
    text = ZeroShotClassifier(backbone, "clip", dataset.classes, cache_dir="").method.text  # type: ignore[attr-defined]
    extractor = ViewExtractor.for_method(create_method("clip"), backbone)

    def features(paths: list[Path]) -> torch.Tensor:
        return extractor([to_uint8_tensor(p) for p in paths], [str(p) for p in paths])[0].full

    adapt = AdaptOptions(support=str(train), shots=4, gda_alpha=0.5)
    methods = {m: create_method(m, MethodOptions(adapt=adapt)) for m in ("tip-adapter", "gda", "tda")}
    result = Evaluator(backbone, dataset, methods, [0, 1], text_cache="", warn=lambda _: None).run()
    assert result is not None
    good = [(i, p) for i, (p, _) in enumerate(dataset.samples) if p.name != "broken.png"]
    queries = features([p for _, p in good])
    zero_shot = 100.0 * queries @ text.T
    for run in result.runs:
        draw = draw_support(match_support(train, dataset), dataset, 4, run.seed)
        keys = features([p for p, _ in draw.shots.samples])
        labels = torch.tensor([y for _, y in draw.shots.samples])
        if run.method == "tip-adapter":
            expected = zero_shot + torch.exp(-5.5 * (1 - queries @ keys.T)) @ F.one_hot(labels, 3).float()
        elif run.method == "gda":
            weights, bias = gda_classifier(keys, labels, 3)
            expected = zero_shot + 0.5 * (queries @ weights.T + bias)
        else:
            state = TdaState(3, queries.shape[1], 3, 2, 2.0, 5.0, 0.117, 1.0, (0.2, 0.5), (0.03, 1.0))
            row_of = {i: r for r, (i, _) in enumerate(good)}
            expected = torch.empty_like(zero_shot)
            for index in stream_order(len(dataset), run.seed):
                if index in row_of:
                    z = zero_shot[row_of[index]]
                    expected[row_of[index]] = state.step(queries[row_of[index]], z, float(softmax_entropy(z)),
                                                         z.softmax(-1))
        torch.testing.assert_close(run.logits, expected, atol=1e-4, rtol=1e-5)


def test_eval_adaptive_bad_input(folders: tuple[Path, Path], descriptions: Path, tiny_openai_checkpoint: Path,
                                 tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    test, _ = folders
    model, cache = tiny_openai_checkpoint, tmp_path / "cache"
    assert _eval(test, None, model, descriptions, tmp_path / "a", cache, "tip-adapter") == 2
    assert "few-shot methods need --support" in capsys.readouterr().err
    partial = tmp_path / "partial"
    for name in ("cat", "dog"):
        for i in range(4):
            _image(partial / name / f"{i}.png", i)
    assert _eval(test, partial, model, descriptions, tmp_path / "b", cache, "tip-adapter") == 2
    assert "no class folder for 1 of 3 classes: 'bird'" in capsys.readouterr().err
    _image(partial / "bird" / "0.png", 9)
    assert _eval(test, partial, model, descriptions, tmp_path / "c", cache, "tip-adapter") == 2
    assert "class 'bird' (bird/) has 1 usable images, fewer than the 4" in capsys.readouterr().err
    for i in range(1, 4):
        _image(partial / "bird" / f"{i}.png", 20 + i)
    (partial / "bird" / "3.png").write_bytes(b"truncated")
    assert _eval(test, partial, model, descriptions, tmp_path / "d", cache, "tip-adapter,tda") == 0
    err = capsys.readouterr().err
    assert f"support image {partial / 'bird' / '3.png'} (class 'bird') is unreadable" in err
    assert all(r["adaptation"]["support"]["shots_used"] == [3, 4, 4]
               for r in _records(tmp_path / "d") if r["method"] == "tip-adapter")


def test_reproduce_runs_tda_and_gda_rows(folders: tuple[Path, Path], descriptions: Path,
                                         tiny_openai_checkpoint: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A Table 3-like preset through ``absclip reproduce``: the support set comes from ``--set adapt.support``
    and the ImageNet-labelled column gives the full-image rows the reference's seven templates."""
    from absclip.reproduce import DatasetSpec, Preset, Row

    test, train = folders
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "v2").symlink_to(test, target_is_directory=True)
    preset = Preset("tiny-table3", "Tiny Table 3", "Table 3",
                    (DatasetSpec("imagenet-v2", "folder", "ImageNet-V2", ("v2",), imagenet_labels=True),),
                    (Row("TDA", "tda", published="tda"), Row("GDA", "gda", {"adapt.shots": 4}, published="gda")))
    monkeypatch.setitem(PRESETS, preset.name, preset)
    out = tmp_path / "out"
    args = ["reproduce", preset.name, "--data-root", tmp_path / "data", "--model", f"openai:{tiny_openai_checkpoint}",
            "--published-backbone", "ViT-B/16", "--descriptions", f"imagenet-v2={descriptions}",
            "--set", f"adapt.support={train}", "--output-dir", out, "--cache-dir", tmp_path / "text",
            "--view-cache", tmp_path / "views", "--batch-size", "4", "--shard-size", "4"]
    assert cli.main([str(a) for a in args]) == 0
    records = {r["row"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    tda, gda = records["TDA"]["settings"]["adapt"], records["GDA"]["settings"]["adapt"]
    assert tda["text"] == "imagenet-7"  # the loader is 'folder' here: no per-dataset α, β (tested below)
    assert gda["shots"] == 4 and gda["support"] == str(train) and gda["text"] == "imagenet-7"
    markdown = (out / "results.md").read_text()
    assert "(64.67, " in markdown and "(65.04, " in markdown


def test_tda_takes_the_reference_per_dataset_cache_settings() -> None:
    from absclip.data import DataFiles
    from absclip.methods.tda import TdaMceMethod, TdaMethod

    assert TdaMethod.dataset_options(DataFiles("imagenet-v2", None), True) == {
        "adapt.text": "imagenet-7", "adapt.tda_pos_alpha": 1.0, "adapt.tda_pos_beta": 8.0}
    assert TdaMethod.dataset_options(DataFiles("imagenet", None), True) == {"adapt.text": "imagenet-7"}
    assert TdaMceMethod.dataset_options(DataFiles("imagenet-sketch", None), True) == {
        "adapt.tda_pos_alpha": 2.363, "adapt.tda_pos_beta": 7.45}
    assert TdaMethod.dataset_options(DataFiles("cub", None), False) == {}


# ---- the support set from the evaluated dataset's own train split (--support-split train) -------------
def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")  # listed, never decoded by the loaders
    return path


def _cub(root: Path) -> Path:
    """CUB's index files for 200 classes, image ids alternating train (odd) / test (even)."""
    base = root / "CUB_200_2011"
    images, labels, split, classes = [], [], [], []
    for c in range(1, 201):
        classes.append(f"{c} {c:03d}.Bird_{c}")
        for image_id, flag in ((2 * c - 1, 1), (2 * c, 0)):
            rel = f"{c:03d}.Bird_{c}/b_{image_id}.jpg"
            _touch(base / "images" / rel)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c}")
            split.append(f"{image_id} {flag}")
    for name, lines in (("images.txt", images), ("image_class_labels.txt", labels),
                        ("train_test_split.txt", split), ("classes.txt", classes)):
        (base / name).write_text("\n".join(lines) + "\n")
    return base


def _listed(name: str, root: Path, split: str = "eval", **kw: object) -> list[tuple[str, int]]:
    ds = create_dataset(name, root, split=split, **kw)  # type: ignore[arg-type]
    return [(p.name, label) for p, label in ds.samples]


def test_train_split_loaders_list_the_train_images_with_the_eval_labels(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Each train-split loader on a replica of its dataset's layout: exactly the train images, labelled like
    the evaluation split (same ROOT, same class list)."""
    from absclip.data import train_split_datasets

    assert set(train_split_datasets()) >= {"imagenet", "cub", "oxford-pet", "dtd", "food101", "places365"}
    names = {n: ClassList(tuple(f"c{i}" for i in range(n))) for n in (37, 47, 101, 200, 365, 1000)}
    _cub(tmp_path / "cub")
    train = _listed("cub", tmp_path / "cub", "train", class_names=names[200])
    assert train == [(f"b_{2 * c + 1}.jpg", c) for c in range(200)]
    assert _listed("cub", tmp_path / "cub", class_names=names[200]) == [(f"b_{2 * c + 2}.jpg", c) for c in range(200)]

    for i in range(1000):  # ImageNet: ROOT/{val,train}/<wnid>; ROOT may also be the val folder itself
        _touch(tmp_path / "in" / "val" / f"n{i:08d}" / f"v{i}.JPEG")
        _touch(tmp_path / "in" / "train" / f"n{i:08d}" / f"t{i}.JPEG")
    expected = [(f"t{i}.JPEG", i) for i in range(1000)]
    assert _listed("imagenet", tmp_path / "in", "train", class_names=names[1000]) == expected
    assert _listed("imagenet", tmp_path / "in" / "val", "train", class_names=names[1000]) == expected

    pets = tmp_path / "pets" / "oxford-iiit-pet"
    breeds = ["Abyssinian"] + [f"breed_{i:02d}" for i in range(1, 37)]
    for split, k in (("test", 1), ("trainval", 2)):
        _touch(pets / "annotations" / f"{split}.txt").write_text(
            "".join(f"{b}_{k} {c} 1 1\n" for c, b in enumerate(breeds, 1)))
        for b in breeds:
            _touch(pets / "images" / f"{b}_{k}.jpg")
    assert _listed("oxford-pet", tmp_path / "pets", "train") == [(f"{b}_2.jpg", c) for c, b in enumerate(breeds)]

    dtd = tmp_path / "dtd" / "dtd" / "dtd"
    for split, k in (("test", 1), ("train", 2)):
        rels = [f"tex_{c:02d}/tex_{c:02d}_{k}.jpg" for c in range(47)]
        _touch(dtd / "labels" / f"{split}1.txt").write_text("\n".join(rels) + "\n")
        for rel in rels:
            _touch(dtd / "images" / rel)
    assert _listed("dtd", tmp_path / "dtd", "train") == [(f"tex_{c:02d}_2.jpg", c) for c in range(47)]

    food = tmp_path / "food" / "food-101"
    for split, k in (("test", 1), ("train", 2)):
        meta = {f"dish_{c:03d}": [f"dish_{c:03d}/{c}{k}"] for c in range(101)}
        _touch(food / "meta" / f"{split}.json").write_text(json.dumps(meta))
        for rels in meta.values():
            _touch(food / "images" / f"{rels[0]}.jpg")
    assert _listed("food101", tmp_path / "food", "train") == [(f"{c}2.jpg", c) for c in range(101)]

    import torchvision.datasets.places365 as tv_places

    monkeypatch.setattr(tv_places, "check_integrity", lambda *args, **kwargs: True)  # replica devkit files
    places = tmp_path / "places"
    _touch(places / "categories_places365.txt").write_text("".join(f"/s/scene_{c:03d} {c}\n" for c in range(365)))
    _touch(places / "places365_train_standard.txt").write_text(
        "".join(f"/s/scene_{c:03d}/{c:08d}.jpg {c}\n" for c in range(365)))
    for c in range(365):
        _touch(places / "data_256_standard" / "s" / f"scene_{c:03d}" / f"{c:08d}.jpg")
    assert _listed("places365", places, "train", class_names=names[365]) == [(f"{c:08d}.jpg", c) for c in range(365)]

    with pytest.raises(UnsupportedError, match=r"dataset 'folder' has no train split .*pass --support DIR"):
        create_dataset("folder", tmp_path, split="train")
    with pytest.raises(InputFileError, match=r"imagenet: no train split's WordNet-id class folders in .*ROOT/train"):
        create_dataset("imagenet", tmp_path / "cub", split="train", class_names=names[1000])


def test_split_pool_matches_by_label_and_names_datasets_without_one(tmp_path: Path) -> None:
    names = ClassList(tuple(f"bird {i}" for i in range(200)))
    _cub(tmp_path)
    evaluated = create_dataset("cub", tmp_path, class_names=names)
    pool = match_support("split:train", evaluated)
    assert pool.split == "train" and pool.root == tmp_path and pool.excluded_test_images == 0
    assert [[p.name for p in c] for c in pool.candidates] == [[f"b_{2 * c + 1}.jpg"] for c in range(200)]
    assert pool.folders[3] == "004.Bird_4"
    draw = draw_support(pool, evaluated, 1, seed=0)
    assert [(p.name, y) for p, y in draw.shots.samples] == [(f"b_{2 * c + 1}.jpg", c) for c in range(200)]
    with pytest.raises(InputFileError, match=r"--support-split train \(.*\): class 'bird 0' \(001.Bird_1/\) has 1 "
                                             r"usable images, fewer than the 2"):
        draw_support(pool, evaluated, 2, seed=0)
    # a split that also lists evaluated images never draws them
    leaked = (tmp_path / "CUB_200_2011" / "images" / "001.Bird_1" / "b_1.jpg", 0)
    both = LabelledImages("cub", [*evaluated.samples, leaked], names, root=tmp_path)
    warnings: list[str] = []
    assert match_support("split:train", both, warnings.append).candidates[0] == []
    assert "1 train-split images are also evaluated images" in warnings[0]

    folder = LabelledImages("folder", [(tmp_path / "x.png", 0)], ClassList(("x",)), root=tmp_path)
    with pytest.raises(InputFileError, match=r"--support-split train: dataset 'folder' has no train split .*cub.*"
                                             r"pass --support DIR"):
        match_support("split:train", folder)
    v2 = LabelledImages("imagenet-v2", [(tmp_path / "x.png", 0)], ClassList(("x",)), root=tmp_path)
    with pytest.raises(InputFileError, match=r"ImageNet's train split serves .*--support IMAGENET_ROOT/train"):
        match_support("split:train", v2)
    # the two spellings are one option, and a folder with a split is an error
    assert AdaptOptions(support_split="train").support == "split:train"
    assert AdaptOptions(support="split:train").support_split == "train"
    with pytest.raises(ConfigError, match="both name a support set: give one"):
        AdaptOptions(support="/data/train", support_split="train")
    with pytest.raises(ConfigError, match=r"adapt\.support_split must be one of train"):
        AdaptOptions(support_split="val")


BREEDS = ["Abyssinian"] + [f"breed_{i:02d}" for i in range(1, 37)]


@pytest.fixture(scope="module")
def pets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An Oxford Pets replica (ROOT) with real images: one test image per breed, three in trainval."""
    root = tmp_path_factory.mktemp("pets")
    base = root / "oxford-iiit-pet"
    for split, count, offset in (("test", 1, 0), ("trainval", 3, 10)):
        lines = []
        for c, breed in enumerate(BREEDS, 1):
            for k in range(count):
                _image(base / "images" / f"{breed}_{offset + k}.jpg", 50 * c + offset + k)
                lines.append(f"{breed}_{offset + k} {c} 1 1")
        _touch(base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_eval_support_split_train_end_to_end(pets: Path, tiny_openai_checkpoint: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """``absclip eval --dataset oxford-pet --support-split train``: the shots come from trainval, per seed."""
    base = pets / "oxford-iiit-pet"
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["eval", "--dataset", "oxford-pet", "--root", pets, "--support-split", "train", "--shots", "2",
            "--gda-alpha", "1", "--methods", "clip,tip-adapter,gda", "--seeds", "0,1", "--limit", "5",
            "--output-dir", out, "--model", f"openai:{tiny_openai_checkpoint}", "--cache-dir", cache / "text",
            "--view-cache", cache / "views", "--batch-size", "16", "--shard-size", "16", "--workers", "0"]
    assert cli.main([str(a) for a in args]) == 0
    records = _records(out)
    methods = ("clip", "tip-adapter", "gda")
    assert [(r["method"], r["seed"]) for r in records] == [(m, s) for s in (0, 1) for m in methods]
    for r in records:
        if r["method"] == "clip":
            continue
        support = r["adaptation"]["support"]
        assert r["settings"]["adapt"]["support"] == "split:train" and r["settings"]["adapt"]["support_split"] == "train"
        assert support["split"] == "train" and support["root"] == str(pets)
        assert support["seed"] == r["seed"]
        assert support["shots_used"] == [2] * 37
    trainval = {f"{line.split()[0]}.jpg" for line in (base / "annotations" / "trainval.txt").read_text().splitlines()}
    draws = {d["seed"]: d for d in map(json.loads, (out / "adaptation.jsonl").read_text().splitlines())
             if d["kind"] == "support"}
    for d in draws.values():
        assert len(d["images"]) == 74 and {Path(p).name for p, _ in d["images"]} <= trainval
        assert all(Path(p).name.rsplit("_", 1)[0] == BREEDS[label] for p, label in d["images"])
    assert draws[0]["draw"] != draws[1]["draw"]  # another seed, another draw from the same split

    # a dataset without a train split fails at once, naming the fix, before any model loads
    _image(tmp_path / "flat" / "cat" / "0.png", 1)
    bad = ["eval", "--dataset", "folder", "--root", tmp_path / "flat", "--support-split", "train",
           "--methods", "tip-adapter", "--model", "openai:/no/such/model.pt", "--output-dir", tmp_path / "o2"]
    assert cli.main([str(a) for a in bad]) == 2
    assert "--support-split train: dataset 'folder' has no train split" in capsys.readouterr().err
    both = [*bad[:-2], "--support", tmp_path / "flat", "--output-dir", tmp_path / "o3"]
    assert cli.main([str(a) for a in both]) == 2
    assert "both name a support set" in capsys.readouterr().err


def test_reproduce_flags_few_shot_rows_without_a_support_set(tmp_path: Path) -> None:
    """The dry-run grid marks few-shot rows that cannot get a support set and says how to fix it; a real run
    stops at once with one line for them, before the model is loaded."""
    from absclip.reproduce import DatasetSpec, Preset, Row
    from absclip.reproduce.runner import ReproduceConfig, dry_run, run_preset

    for sub in ("pets", "flat"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    preset = Preset("tiny-few-shot", "Tiny", None,
                    (DatasetSpec("oxford-pet", "oxford-pet", "Pets", ("pets",)),
                     DatasetSpec("folder", "folder", "Folder", ("flat",))),
                    (Row("CLIP", "clip"), Row("Tip", "tip-adapter"), Row("GDA", "gda", {"adapt.shots": 4})))

    def grid(**overrides: str) -> dict[tuple[str, str], dict]:
        cfg = ReproduceConfig(tmp_path / "data", overrides=overrides)
        return {(r["dataset"], r["row"]): r for r in dry_run(preset, cfg, out=None)}

    few_shot = [(d, r) for d in ("oxford-pet", "folder") for r in ("Tip", "GDA")]
    plain = grid()
    assert plain[("oxford-pet", "CLIP")]["status"] == plain[("folder", "CLIP")]["status"] == "ready"
    for cell in few_shot:
        assert plain[cell]["status"] == "missing support" and "--set adapt.support=DIR" in plain[cell]["reason"]
    assert "adapt.support_split=train" in plain[("oxford-pet", "Tip")]["reason"]  # pets has a train split
    assert "adapt.support_split" not in plain[("folder", "Tip")]["reason"]  # a folder has none
    split = grid(**{"adapt.support_split": "train"})
    assert split[("oxford-pet", "Tip")]["status"] == split[("oxford-pet", "GDA")]["status"] == "ready"
    assert split[("folder", "GDA")]["status"] == "missing support"
    assert "folder has no train split" in split[("folder", "GDA")]["reason"]
    assert all(grid(**{"adapt.support": str(tmp_path / "nope")})[c]["status"] == "missing support" for c in few_shot)
    assert all(r["status"] == "ready" for r in grid(**{"adapt.support": str(tmp_path / "data")}).values())

    printed: list[str] = []
    cfg = ReproduceConfig(tmp_path / "data")
    dry_run(preset, cfg, out=printed.append)
    assert "4 missing support" in printed[0] and "[missing support: tip-adapter is few-shot" in printed[0]
    with pytest.raises(InputFileError, match=r"tiny-few-shot: 4 few-shot runs have no support set \(Tip on "
                                             r"oxford-pet, GDA on oxford-pet, Tip on folder, GDA on folder\)"):
        run_preset(preset, cfg, lambda: pytest.fail("the model was loaded"))


def test_reproduce_draws_the_support_set_from_the_train_split(pets: Path, tiny_openai_checkpoint: Path,
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``absclip reproduce --set adapt.support_split=train`` on a dataset with a train split runs the GDA row
    on shots from that split."""
    from absclip.reproduce import DatasetSpec, Preset, Row

    preset = Preset("tiny-pets", "Tiny pets", None, (DatasetSpec("oxford-pet", "oxford-pet", "Pets", ("pets",)),),
                    (Row("GDA", "gda", {"adapt.shots": 2, "adapt.gda_alpha": 1.0}),))
    monkeypatch.setitem(PRESETS, preset.name, preset)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "pets").symlink_to(pets, target_is_directory=True)
    out = tmp_path / "out"
    args = ["reproduce", preset.name, "--data-root", tmp_path / "data", "--model", f"openai:{tiny_openai_checkpoint}",
            "--set", "adapt.support_split=train", "--limit", "4", "--output-dir", out, "--cache-dir",
            tmp_path / "text", "--view-cache", tmp_path / "views", "--batch-size", "16", "--shard-size", "16"]
    assert cli.main([str(a) for a in args]) == 0
    (record,) = map(json.loads, (out / "results.jsonl").read_text().splitlines())
    assert record["row"] == "GDA" and record["settings"]["adapt"]["support"] == "split:train"
    support = record["adaptation"]["support"]
    assert support["split"] == "train" and support["shots_used"] == [2] * 37 and record["n_samples"] == 4
