"""ZPE (transductive prompt weighting) and its description variants: every formula against a plain loop,
the invariants (equal scores give CLIP-E / WCA / soft matching), ``absclip eval`` end to end, and the two-pass
``absclip classify`` path: unreadable images, and kills in either pass that resume without redoing work."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import absclip.cli as cli
from absclip.adapt.zpe import (
    description_scores,
    description_weights,
    mad_selection,
    prior_soft_match_scores,
    prior_wca_text,
    prompt_scores,
    prompt_weights,
    wca_pooled_views,
    weighted_text_embeddings,
)
from absclip.errors import ConfigError
from absclip.methods import MethodOptions, create_method, list_methods
from absclip.scoring import soft_match_scores, wca_logits, wca_text_embeddings

CLASSES = ["cat", "dog", "bird"]


def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


# ---- formulas against loops ---------------------------------------------------------------------
def _loop_prompt_scores(images: torch.Tensor, prompts: torch.Tensor, scale: float) -> torch.Tensor:
    n, (p, c, _) = len(images), prompts.shape
    out = torch.zeros(p)
    for k in range(p):
        logits = [[scale * float(images[i] @ prompts[k, j]) for j in range(c)] for i in range(n)]
        bias = [sum(logits[i][j] for i in range(n)) / n for j in range(c)]
        out[k] = sum(max(logits[i][j] - bias[j] for j in range(c)) for i in range(n)) / n
    return out


def test_prompt_scores_match_a_loop() -> None:
    images, prompts = _unit(7, 8, seed=1), _unit(4, 3, 8, seed=2)
    expected = _loop_prompt_scores(images, prompts, 5.0)
    torch.testing.assert_close(prompt_scores(images, prompts, 5.0, chunk=3), expected, atol=1e-5, rtol=1e-5)
    assert (expected >= -1e-6).all()  # mean of a max of centred values is never below 0


def _loop_mad_keep(scores: list[float], threshold: float) -> list[bool]:
    """The authors' mad_method: indices with (v − median) / MAD > threshold (scipy's MAD, scale 1)."""
    med = float(np.median(scores))
    mad = float(np.median([abs(v - med) for v in scores]))
    return [(v - med) / mad > threshold for v in scores]


def test_weights_are_a_softmax_over_the_mad_selected_prompts() -> None:
    scores = torch.tensor([1.0, 4.0, 2.0, 9.0, 3.0, 2.5])
    torch.testing.assert_close(prompt_weights(scores, 2.0), torch.softmax(scores / 2.0, dim=0))
    keep = _loop_mad_keep(scores.tolist(), 0.5)
    assert mad_selection(scores, 0.5).tolist() == keep and 0 < sum(keep) < len(keep)
    weights = prompt_weights(scores, 1.0, 0.5)
    chosen = torch.tensor(keep)
    torch.testing.assert_close(weights[chosen], torch.softmax(scores[chosen], dim=0))
    assert (weights[~chosen] == 0).all()
    # no spread, or nothing above the threshold: everything is kept (the notebook would score nothing)
    assert mad_selection(torch.full((5,), 3.0), 0.5).all() and mad_selection(scores, 100.0).all()
    assert torch.equal(prompt_weights(torch.full((4,), 7.0), 1.0, 2.0), torch.full((4,), 0.25))


def test_equal_scores_give_the_clip_e_ensemble() -> None:
    prompts = _unit(5, 3, 8, seed=3)
    uniform = prompt_weights(torch.full((5,), 1.5))
    clip_e = F.normalize(prompts.mean(dim=0), dim=-1)
    torch.testing.assert_close(weighted_text_embeddings(prompts, uniform), clip_e, atol=1e-7, rtol=0)
    # a weight vector is a weighted sum, renormalised
    w = torch.tensor([0.1, 0.4, 0.0, 0.3, 0.2])
    loop = torch.stack([F.normalize(sum(w[p] * prompts[p, c] for p in range(5)), dim=0) for c in range(3)])
    torch.testing.assert_close(weighted_text_embeddings(prompts, w), loop, atol=1e-6, rtol=0)


def _ragged() -> tuple[torch.Tensor, torch.Tensor]:
    desc = _unit(3, 4, 8, seed=4)
    mask = torch.tensor([[True, True, True, True], [True, True, False, False], [True, False, False, False]])
    return desc * mask[..., None], mask


def test_description_scores_match_a_loop() -> None:
    desc, mask = _ragged()
    images, scale = _unit(9, 8, seed=5), 4.0
    n, c_count = len(images), len(desc)
    counts = [int(mask[c].sum()) for c in range(c_count)]
    logit = [[[scale * float(images[i] @ desc[c, j]) for j in range(counts[c])] for c in range(c_count)]
             for i in range(n)]
    bias = [[sum(logit[i][c][j] for i in range(n)) / n for j in range(counts[c])] for c in range(c_count)]
    pseudo = [max(range(c_count), key=lambda c, i=i: sum(logit[i][c][j] - bias[c][j] for j in range(counts[c]))
                  / counts[c]) for i in range(n)]
    expected = torch.zeros(mask.shape)
    for c in range(c_count):
        members = [i for i in range(n) if pseudo[i] == c]
        for j in range(counts[c]):
            if members:
                expected[c, j] = sum(logit[i][c][j] - bias[c][j] for i in members) / len(members)
    got = description_scores(images, desc, mask, scale, chunk=4)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    weights = description_weights(got, mask, 0.5)
    selected = description_weights(got, mask, 0.5, threshold=0.1)
    for c in range(c_count):
        torch.testing.assert_close(weights[c, : counts[c]], torch.softmax(got[c, : counts[c]] / 0.5, dim=0))
        assert (weights[c, counts[c]:] == 0).all() and (selected[c, counts[c]:] == 0).all()
        # each class selects among its own descriptions, as the templates are selected
        torch.testing.assert_close(selected[c, : counts[c]], prompt_weights(got[c, : counts[c]], 0.5, 0.1))
    assert (selected[0] == 0).any()  # the 4-description class drops some


def _uniform(mask: torch.Tensor) -> torch.Tensor:
    return mask.float() / mask.sum(dim=1, keepdim=True)


def test_the_description_prior_reduces_to_wca_and_soft_matching() -> None:
    desc, mask = _ragged()
    prompt, views, full = _unit(3, 8, seed=6), _unit(2, 5, 8, seed=7), _unit(2, 8, seed=8)
    torch.testing.assert_close(prior_wca_text(desc, mask, prompt, _uniform(mask)),
                               wca_text_embeddings(desc, mask, prompt), atol=1e-6, rtol=0)
    torch.testing.assert_close(prior_soft_match_scores(views, desc, mask, _uniform(mask), 0.1),
                               soft_match_scores(views, desc, mask, 0.1), atol=1e-5, rtol=0)
    text = wca_text_embeddings(desc, mask, prompt)
    torch.testing.assert_close(wca_pooled_views(views, full) @ text.T, wca_logits(views, full, text),
                               atol=1e-6, rtol=0)


def test_prior_soft_matching_matches_a_loop() -> None:
    desc, mask = _ragged()
    views = _unit(1, 2, 8, seed=9)
    weights = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.9, 0.1, 0, 0], [1.0, 0, 0, 0]])
    weights[0, 1] = 0.0  # an unselected description takes no part
    weights[0] /= weights[0].sum()
    tau = 0.2
    got = prior_soft_match_scores(views, desc, mask, weights, tau)
    for v in range(2):
        pairs = [(c, j) for c in range(3) for j in range(4) if mask[c, j] and weights[c, j] > 0]
        s = {cj: float(views[0, v] @ desc[cj]) / tau for cj in pairs}
        mass = {(c, j): int(mask[c].sum()) * float(weights[c, j]) * math.exp(s[(c, j)]) for c, j in pairs}
        total = sum(mass.values())
        for c in range(3):
            expected = sum(mass[cj] / total * s[cj] for cj in pairs if cj[0] == c)
            assert abs(float(got[0, v, c]) - expected) < 1e-4


def test_options_are_validated_and_methods_listed() -> None:
    for bad in ({"zpe_temperature": 0}, {"zpe_temperature": float("nan")}, {"zpe_select_mad": float("inf")},
                {"zpe_temperature": True}):
        with pytest.raises(ConfigError, match="zpe_"):
            MethodOptions(**bad)
    assert MethodOptions(zpe_select_mad=0.5).zpe_select_mad == 0.5
    names = {"zpe", "zpe+wca", "zpe+mce", "zpe+abs"}
    assert names <= set(list_methods())  # classify and plan can run them
    for name in names:
        method = create_method(name)
        assert method.setting == "transductive" and method.summary
        assert method.needs_descriptions == (name != "zpe")
    assert create_method("zpe+wca").view_config() == create_method("wca").view_config()
    assert create_method("zpe+abs").view_config() == create_method("abs").view_config()


# ---- end to end ---------------------------------------------------------------------------------
def _image(path: Path, seed: int, size: tuple[int, int] = (36, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes × 3 images and one unreadable file."""
    root = tmp_path_factory.mktemp("zpe")
    for c, name in enumerate(CLASSES):
        for i in range(3):
            _image(root / name / f"{i}.png", 10 * c + i, (30 + 5 * i, 28 + 4 * c))
    (root / "dog" / "broken.png").write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tpl") / "templates.json"
    path.write_text(json.dumps(["a photo of a {}.", "a drawing of the {}.", "{} in the wild.", "itap of a {}."]))
    return path


def _classify(folder: Path, model: Path, cache: Path, *extra: object) -> int:
    args = ["classify", folder, "--classes", ",".join(CLASSES), "--model", f"openai:{model}", "--device", "cpu",
            "--cache-dir", cache, "--batch-size", "2", "--top-k", "3", "--workers", "0", *extra]
    return cli.main([str(a) for a in args])


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _expected_zpe(folder: Path, model: Path, templates: Path) -> dict[str, torch.Tensor]:
    """ZPE's probabilities recomputed here: the encoder's own embeddings, the loop scores, softmax weights."""
    from absclip.backbones import create_backbone
    from absclip.classifier import to_uint8_tensor
    from absclip.views import ViewExtractor

    backbone = create_backbone(f"openai:{model}", pretrained=None, device="cpu")
    paths = sorted(p for p in folder.rglob("*.png") if p.name != "broken.png")
    extractor = ViewExtractor.for_method(create_method("clip"), backbone)
    images = extractor([to_uint8_tensor(p) for p in paths], [str(p) for p in paths])[0].full
    names = json.loads(templates.read_text())
    prompts = torch.stack([F.normalize(backbone.encode_text([t.format(c) for c in CLASSES]), dim=-1)
                           for t in names])  # [P, C, D]
    scale = float(backbone.logit_scale)
    weights = torch.softmax(_loop_prompt_scores(images, prompts, scale), dim=0)
    text = F.normalize(sum(weights[p] * prompts[p] for p in range(len(names))), dim=-1)
    probs = (scale * images @ text.T).softmax(dim=1)
    return {str(p): probs[i] for i, p in enumerate(paths)}


def _check_records(records: list[dict], expected: dict[str, torch.Tensor]) -> None:
    by_path = {r["path"]: r for r in records}
    assert len(records) == len(expected) + 1 and len(by_path) == len(records)
    broken = [r for r in records if r["error"]]
    assert len(broken) == 1 and broken[0]["path"].endswith("broken.png") and broken[0]["label"] is None
    for path, probs in expected.items():
        top = by_path[path]["top_k"]
        assert [t["index"] for t in top] == probs.argsort(descending=True).tolist()
        assert all(abs(t["score"] - float(probs[t["index"]])) < 1e-4 for t in top)


def test_classify_zpe_two_passes_with_an_unreadable_image(folder: Path, templates: Path,
                                                          tiny_openai_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "labels.jsonl"
    assert _classify(folder, tiny_openai_checkpoint, tmp_path / "cache", "--method", "zpe", "--templates",
                     templates, "--output", out) == 0
    _check_records(_lines(out), _expected_zpe(folder, tiny_openai_checkpoint, templates))
    assert not (out.parent / "labels.jsonl.parts").exists()


class _Killed(Exception):
    pass


def test_classify_resumes_after_a_kill_in_either_pass(folder: Path, templates: Path, tiny_openai_checkpoint: Path,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from absclip.labelling import ObservationStore, ResultStream
    from absclip.methods.zpe import ZpeMethod

    out, cache = tmp_path / "labels.jsonl", tmp_path / "cache"
    run = ("--method", "zpe", "--templates", templates, "--output", out)
    observed: list[int] = []
    original_observe, original_save, original_append = ZpeMethod.observe, ObservationStore.save, ResultStream.append

    def observe(self, views):  # type: ignore[no-untyped-def]
        observed.append(len(views.full))
        return original_observe(self, views)

    def save_then_die(self, keys, obs):  # type: ignore[no-untyped-def]
        if len(list(self.directory.glob("chunk-*"))) == 2:
            raise _Killed  # killed in pass 1, two chunks (4 images) stored
        return original_save(self, keys, obs)

    monkeypatch.setattr(ZpeMethod, "observe", observe)
    monkeypatch.setattr(ObservationStore, "save", save_then_die)
    with pytest.raises(_Killed):
        _classify(folder, tiny_openai_checkpoint, cache, *run)
    monkeypatch.setattr(ObservationStore, "save", original_save)
    assert sum(observed) == 6

    labelled: list[int] = []

    def append_then_die(self, records):  # type: ignore[no-untyped-def]
        if records and not records[0]["error"]:
            if labelled:
                raise _Killed  # killed in pass 2, after one batch of labels
            labelled.append(len(records))
        return original_append(self, records)

    observed.clear()
    monkeypatch.setattr(ResultStream, "append", append_then_die)
    with pytest.raises(_Killed):
        _classify(folder, tiny_openai_checkpoint, cache, *run, "--resume")
    assert sum(observed) == 9 - 4  # only the images pass 1 had not stored (the broken one is not observed)
    monkeypatch.setattr(ResultStream, "append", original_append)

    observed.clear()
    assert _classify(folder, tiny_openai_checkpoint, cache, *run, "--resume") == 0
    assert not observed  # pass 1 is complete on disk: only the fit and the missing labels are redone
    _check_records(_lines(out), _expected_zpe(folder, tiny_openai_checkpoint, templates))


def test_a_resume_with_other_settings_is_refused(folder: Path, templates: Path, tiny_openai_checkpoint: Path,
                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from absclip.classifier import ZeroShotClassifier

    out, cache = tmp_path / "labels.jsonl", tmp_path / "cache"

    def die(self, observations, plans=()):  # type: ignore[no-untyped-def]
        raise _Killed

    monkeypatch.setattr(ZeroShotClassifier, "conclude", die)
    with pytest.raises(_Killed):
        _classify(folder, tiny_openai_checkpoint, cache, "--method", "zpe", "--templates", templates, "--output", out)
    monkeypatch.undo()
    capsys.readouterr()
    assert _classify(folder, tiny_openai_checkpoint, cache, "--method", "zpe", "--templates", templates,
                     "--zpe-temperature", "2", "--output", out, "--resume") == 2
    assert "observations of another run" in capsys.readouterr().err
    # a finished output covers its own images only: adding images means labelling the set again
    assert _classify(folder, tiny_openai_checkpoint, cache, "--method", "zpe", "--templates", templates,
                     "--output", out, "--overwrite") == 0
    _image(tmp_path / "more" / "new.png", 99)
    (tmp_path / "list.txt").write_text(str(tmp_path / "more" / "new.png"))
    capsys.readouterr()
    assert _classify(folder, tiny_openai_checkpoint, cache, "--files-from", tmp_path / "list.txt", "--method", "zpe",
                     "--templates", templates, "--output", out, "--resume") == 2
    assert "fitted on other images" in capsys.readouterr().err


def test_classify_description_variants_to_stdout(folder: Path, descriptions: Path, tiny_openai_checkpoint: Path,
                                                 tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("zpe+wca", "zpe+mce", "zpe+abs"):
        assert _classify(folder, tiny_openai_checkpoint, tmp_path / "cache", "--method", name, "--descriptions",
                         descriptions, "--saliency", "uniform", "--crops", "3", "--random-crops", "3") == 0
        lines = [line for line in capsys.readouterr().out.splitlines() if line]
        assert len(lines) == 10 and sum("\tERROR\t" in line for line in lines) == 1


def test_eval_runs_every_zpe_variant(folder: Path, descriptions: Path, templates: Path,
                                     tiny_openai_checkpoint: Path, tmp_path: Path) -> None:
    from absclip.backbones import create_backbone
    from absclip.classifier import ZeroShotClassifier

    methods = "clip-e,zpe,zpe+wca,zpe+mce,zpe+abs,wca"
    args = ["eval", "--dataset", "folder", "--root", folder, "--methods", methods, "--seeds", "0",
            "--descriptions", descriptions, "--templates", templates, "--output-dir", tmp_path / "out",
            "--model", f"openai:{tiny_openai_checkpoint}", "--cache-dir", tmp_path / "text", "--view-cache",
            tmp_path / "views", "--saliency", "uniform", "--crops", "3", "--random-crops", "3", "--batch-size", "4",
            "--shard-size", "4", "--workers", "0"]
    assert cli.main([str(a) for a in args]) == 0
    records = {r["method"]: r for r in map(json.loads, (tmp_path / "out" / "results.jsonl").read_text().splitlines())}
    assert set(records) == set(methods.split(","))
    for name in ("zpe", "zpe+wca", "zpe+mce", "zpe+abs"):
        assert records[name]["n_samples"] == 9 and records[name]["adaptation"]["setting"] == "transductive"
    assert records["zpe"]["adaptation"]["prompts"] == 4
    # the folder's classes (bird, cat, dog): the eval's zpe predictions are the classifier's
    backbone = create_backbone(f"openai:{tiny_openai_checkpoint}", pretrained=None, device="cpu")
    clf = ZeroShotClassifier(backbone, "zpe", ["bird", "cat", "dog"], options=MethodOptions(templates=str(templates)),
                             cache_dir="", batch_size=2)
    paths = sorted(str(p) for p in folder.rglob("*.png") if p.name != "broken.png")
    assert len(clf.predict(paths).labels) == 9 and records["zpe"]["metrics"]


def test_zpe_with_equal_scores_is_clip_e_end_to_end(folder: Path, tiny_openai_checkpoint: Path,
                                                    tmp_path: Path) -> None:
    """Identical templates score identically, so the weights are uniform and ZPE is CLIP-E on the same file."""
    from absclip.backbones import create_backbone
    from absclip.classifier import ZeroShotClassifier

    same = tmp_path / "same.json"
    same.write_text(json.dumps(["a blurry photo of a {}."] * 3))
    backbone = create_backbone(f"openai:{tiny_openai_checkpoint}", pretrained=None, device="cpu")
    paths = sorted(str(p) for p in folder.rglob("*.png") if p.name != "broken.png")
    options = MethodOptions(templates=str(same))
    zpe = ZeroShotClassifier(backbone, "zpe", CLASSES, options=options, cache_dir="", batch_size=4)
    clip_e = ZeroShotClassifier(backbone, "clip-e", CLASSES, options=options, cache_dir="", batch_size=4)
    got, want = zpe.predict(paths), clip_e.predict(paths)
    assert zpe.method.record["top_prompts"][0][1] == pytest.approx(1 / 3)  # type: ignore[attr-defined]
    torch.testing.assert_close(got.logits, backbone.logit_scale * want.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.probabilities, want.probabilities, atol=1e-6, rtol=0)
    assert got.labels == want.labels
