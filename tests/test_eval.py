"""``absclip eval`` and the evaluation library on a tiny generated folder dataset and a tiny model.

Metrics are checked against an independent computation from ZeroShotClassifier logits, the view cache
against re-extraction counts, and crash-resume against an uninterrupted run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import absclip.cli as cli
from absclip.cache import cache_key, key_digest
from absclip.evaluate import compute_metrics, plan_views, render_markdown, restrict_logits, summarise
from absclip.methods import METHODS as METHOD_REGISTRY
from absclip.methods import MethodOptions, create_method, list_methods
from absclip.views import AbsSamplerConfig, RandomCropConfig, ViewConfig, ViewExtractor
from tiny_folders import write_folder_dataset

# every registered method (a new one is tested without editing this file), less those that ask an LLM
# while they score: tests/test_fudd.py runs them against a loopback LLM server
METHODS = [m for m in list_methods() if not METHOD_REGISTRY.get(m).needs_llm]
CLASSES = ["cat", "dog", "bird"]


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes × 2 images of different sizes, plus one unreadable file in 'dog'."""
    return write_folder_dataset(tmp_path_factory.mktemp("folder"), 0, broken=b"not an image at all")


def _eval(root: Path, model: Path, desc: Path, out: Path, cache: Path, *extra: object,
          methods: list[str] = METHODS, seeds: str = "0,1") -> int:
    args = ["eval", "--dataset", "folder", "--root", root, "--descriptions", desc, "--methods", ",".join(methods),
            "--seeds", seeds, "--output-dir", out, "--model", f"openai:{model}", "--cache-dir", cache / "text",
            "--view-cache", cache / "views", "--saliency", "uniform", "--crops", "4", "--random-crops", "4",
            "--zero-views", "4", "--awt-views", "4",
            "--batch-size", "2", "--shard-size", "3", *extra]
    return cli.main([str(a) for a in args])


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


class _Counter:
    """Wraps ViewExtractor.__call__ to count extraction calls and optionally fail on the n-th one."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.calls = 0
        self.fail_on = fail_on
        self.original = ViewExtractor.__call__

    def install(self, monkeypatch: pytest.MonkeyPatch) -> _Counter:
        counter = self

        def wrapped(extractor: ViewExtractor, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
            counter.calls += 1
            if counter.fail_on is not None and counter.calls == counter.fail_on:
                raise RuntimeError("simulated crash")
            return counter.original(extractor, *args, **kwargs)

        monkeypatch.setattr(ViewExtractor, "__call__", wrapped)
        return self


@pytest.fixture(scope="module")
def first_run(dataset_root: Path, descriptions: Path, tiny_openai_checkpoint: Path,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out, cache = tmp_path_factory.mktemp("out"), tmp_path_factory.mktemp("cache")
    assert _eval(dataset_root, tiny_openai_checkpoint, descriptions, out, cache) == 0
    return out, cache


def test_outputs_and_metrics_match_classifier(first_run: tuple[Path, Path], dataset_root: Path, descriptions: Path,
                                              tiny_openai_checkpoint: Path) -> None:
    from absclip.backbones import create_backbone
    from absclip.classifier import ZeroShotClassifier
    from absclip.data import create_dataset

    out, cache = first_run
    records = _records(out)
    assert {(r["method"], r["seed"]) for r in records} == {(m, s) for m in METHODS for s in (0, 1)}
    dataset = create_dataset("folder", dataset_root)
    good = [(p, y) for p, y in dataset.samples if p.name != "broken.png"]
    backbone = create_backbone(f"openai:{tiny_openai_checkpoint}", pretrained=None, device="cpu")
    for r in records:
        assert r["dataset"] == "folder" and r["model"] == f"openai:{tiny_openai_checkpoint}"
        assert r["n_samples"] == 6 and r["n_failed"] == 1 and r["settings"]["seed"] == r["seed"]
        opts = MethodOptions(saliency="uniform", seed=r["seed"], abs_sampler=AbsSamplerConfig(crops=4),
                             random_crops=RandomCropConfig(crops=4), zero_views=4, awt_views=4)
        clf = ZeroShotClassifier(backbone, r["method"], dataset.classes, descriptions, options=opts,
                                 cache_dir=cache / "text", batch_size=4)
        logits = clf.predict([p for p, _ in good], keys=[str(p) for p, _ in good]).logits
        targets = torch.tensor([y for _, y in good])
        pred = logits.argmax(1)
        acc1 = (pred == targets).float().mean().item()
        recall = np.mean([(pred[targets == c] == c).float().mean().item() for c in range(3)])
        top3 = logits.topk(3, dim=1).indices  # 3 classes: top-5 is top-3, always correct
        acc5 = (top3 == targets[:, None]).any(1).float().mean().item()
        m = r["metrics"]
        assert m["acc1"] == pytest.approx(acc1) and m["acc5"] == pytest.approx(acc5) == 1.0
        assert m["mean_per_class_recall"] == pytest.approx(recall)

    summary = json.loads((out / "summary.json").read_text())
    for method in METHODS:
        acc = [r["metrics"]["acc1"] for r in records if r["method"] == method]
        entry = summary["methods"][method]
        assert entry["acc1"]["mean"] == pytest.approx(np.mean(acc))
        assert entry["acc1"]["std"] == pytest.approx(np.std(acc, ddof=1))
        assert entry["seeds"] == [0, 1]
    table = (out / "results.md").read_text().splitlines()
    rows = [line for line in table if line.startswith("| ") and "±" in line]
    assert [row.split("|")[1].strip() for row in rows] == METHODS
    clip = summary["methods"]["clip"]["acc1"]
    assert f"{100 * clip['mean']:.2f} ± {100 * clip['std']:.2f}" in rows[METHODS.index("clip")]


def test_clip_metrics_match_open_clip_own_pipeline(first_run: tuple[Path, Path], dataset_root: Path,
                                                    tiny_openai_checkpoint: Path) -> None:
    """An independent computation: open_clip's own PIL transform, tokenizer and encoders give the same
    CLIP logits, so the same metrics, as the evaluator's tensor pipeline."""
    import open_clip
    from PIL import Image as PILImage

    from absclip.backbones import create_backbone
    from absclip.classifier import ZeroShotClassifier

    out, _ = first_run
    backbone = create_backbone(f"openai:{tiny_openai_checkpoint}", pretrained=None, device="cpu")
    model = backbone.model
    transform = open_clip.image_transform(32, is_train=False)
    samples = [(root_path, CLASSES.index(root_path.parent.name)) for root_path in sorted(dataset_root.rglob("*.png"))
               if root_path.name != "broken.png"]
    with torch.no_grad():
        images = torch.stack([transform(PILImage.open(p).convert("RGB")) for p, _ in samples])
        image_emb = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
        text_emb = torch.nn.functional.normalize(
            model.encode_text(open_clip.tokenize([f"a photo of a {c}." for c in CLASSES])), dim=-1)
    logits = image_emb @ text_emb.T
    ours = ZeroShotClassifier(backbone, "clip", CLASSES, cache_dir="").predict([p for p, _ in samples]).logits
    torch.testing.assert_close(ours, logits, atol=2e-5, rtol=0)
    targets = torch.tensor([y for _, y in samples])
    expected = compute_metrics(logits, targets)
    for record in (r for r in _records(out) if r["method"] == "clip"):
        assert record["metrics"]["acc1"] == pytest.approx(expected["acc1"])
        assert record["metrics"]["mean_per_class_recall"] == pytest.approx(expected["mean_per_class_recall"])


def test_second_run_uses_cache(first_run: tuple[Path, Path], dataset_root: Path, descriptions: Path,
                               tiny_openai_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    out, cache = first_run
    counter = _Counter().install(monkeypatch)
    assert _eval(dataset_root, tiny_openai_checkpoint, descriptions, tmp_path, cache) == 0
    assert counter.calls == 0
    assert _records(tmp_path) == _records(out)
    assert "broken.png" in capsys.readouterr().err  # still reported, from the manifest


def test_crash_resume(dataset_root: Path, descriptions: Path, tiny_openai_checkpoint: Path, tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    """7 files in shards of 3 (one abs config: 2 calls per full shard; the last shard is the broken file)."""
    methods = ["clip", "abs"]
    cache = tmp_path / "cache"
    crash = _Counter(fail_on=3).install(monkeypatch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _eval(dataset_root, tiny_openai_checkpoint, descriptions, tmp_path / "a", cache, methods=methods, seeds="0")
    assert crash.calls == 3
    [views] = [d for d in (cache / "views").iterdir()]
    manifest = json.loads((views / "manifest.json").read_text())
    assert list(manifest["shards"]) == ["0"] and manifest["shards"]["0"]["stop"] == 3
    assert not list(views.glob("*.tmp")) and not (tmp_path / "a" / "results.jsonl").exists()

    resume = _Counter().install(monkeypatch)
    assert _eval(dataset_root, tiny_openai_checkpoint, descriptions, tmp_path / "a", cache,
                 methods=methods, seeds="0") == 0
    assert resume.calls == 2  # shard 1 only: shard 0 is not recomputed, shard 2 has no readable image

    fresh = _Counter().install(monkeypatch)
    assert _eval(dataset_root, tiny_openai_checkpoint, descriptions, tmp_path / "b", tmp_path / "cache2",
                 methods=methods, seeds="0") == 0
    assert fresh.calls == 4
    assert _records(tmp_path / "a") == _records(tmp_path / "b")


def test_cache_key_covers_settings() -> None:
    def digest(config: ViewConfig, fp: str = "abc") -> str:
        return key_digest(cache_key(dataset="folder", root="/data", model_fingerprint=fp, model={"name": "m"},
                                    config=config))

    base = ViewConfig(crops="abs", feature=True, abs=AbsSamplerConfig(crops=4))
    ref = digest(base)
    assert digest(ViewConfig(crops="abs", feature=True, abs=AbsSamplerConfig(crops=4), micro_batch=3)) == ref
    assert digest(ViewConfig(crops="abs", feature=True, abs=AbsSamplerConfig(crops=5))) != ref
    assert digest(ViewConfig(crops="abs", feature=True, abs=AbsSamplerConfig(crops=4), seed=1)) != ref
    assert digest(ViewConfig(crops="abs", feature=True, abs=AbsSamplerConfig(crops=4), saliency="uniform")) != ref
    assert digest(base, fp="abd") != ref
    rand = ViewConfig(crops="random", random=RandomCropConfig(crops=4))
    assert digest(rand) == digest(ViewConfig(crops="random", random=RandomCropConfig(crops=4), saliency="uniform"))
    assert digest(rand) != digest(ViewConfig(crops="random", random=RandomCropConfig(crops=5)))


def test_plan_views_shares_extraction() -> None:
    opts = MethodOptions(seed=3)
    methods = [create_method(m, opts) for m in ("clip", "cupl", "wca", "mce", "abs")]
    configs, assignment, sources = plan_views(methods)
    assert [c.crops for c in configs] == ["random", "abs"]
    assert assignment == [0, 0, 0, 0, 1]  # full-only methods take the random config's full view
    assert sources == [2, 4]  # wca builds the random extractor, abs the attention-guided one
    configs, assignment, sources = plan_views([create_method("clip", opts), create_method("cupl", opts)])
    assert configs == [ViewConfig()] and assignment == [0, 0] and sources == [0]


def test_metrics_and_subset() -> None:
    logits = torch.tensor([[3.0, 2, 1, 0, -1, -2], [0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [0, 0, 9, 0, 0, 0]])
    targets = torch.tensor([0, 0, 1, 2])
    m = compute_metrics(logits, targets)
    assert m["acc1"] == pytest.approx(0.5) and m["acc5"] == pytest.approx(0.75)
    assert m["mean_per_class_recall"] == pytest.approx((0.5 + 0 + 1) / 3)
    full = torch.arange(10.0).repeat(2, 1)
    assert restrict_logits(full, [1, 4, 7], 3).tolist() == [[1, 4, 7]] * 2
    assert torch.equal(restrict_logits(full[:, :3], [1, 4, 7], 3), full[:, :3])  # already the subset's columns
    with pytest.raises(ValueError, match="logits have 10 classes, the dataset 3"):
        restrict_logits(full, None, 3)
    records = [{"dataset": "d", "model": "m", "pretrained": None, "method": "x", "seed": s, "n_samples": 4,
                "metrics": {"acc1": a, "acc5": 1.0, "mean_per_class_recall": a}} for s, a in ((0, 0.5), (1, 0.7))]
    summary = summarise(records)
    assert summary["methods"]["x"]["acc1"]["mean"] == pytest.approx(0.6)
    assert "60.00 ± 14.14" in render_markdown(summary)


def test_sigkill_mid_run_then_resume(dataset_root: Path, descriptions: Path, tiny_openai_checkpoint: Path,
                                     tmp_path: Path) -> None:
    """A real kill (SIGKILL, no cleanup code runs) after the first shard: the rerun reuses it and gives
    the same records as an uninterrupted run; no partial files are left to be trusted."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["eval", "--dataset", "folder", "--root", dataset_root, "--descriptions", descriptions,
            "--methods", "clip,abs", "--seeds", "0", "--model", f"openai:{tiny_openai_checkpoint}",
            "--cache-dir", tmp_path / "text", "--view-cache", tmp_path / "views", "--saliency", "uniform",
            "--crops", "4", "--batch-size", "1", "--shard-size", "2", "--workers", "0"]
    slow = ("import sys, time\n"
            "from absclip.views import extract\n"
            "orig = extract.ViewExtractor.__call__\n"
            "def slow(self, *a, **k):\n"
            "    time.sleep(0.4)\n"
            "    return orig(self, *a, **k)\n"
            "extract.ViewExtractor.__call__ = slow\n"
            "from absclip.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", slow, *map(str, args), "--output-dir", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    manifests: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        manifests = list((tmp_path / "views").glob("*/manifest.json"))
        if manifests and json.loads(manifests[0].read_text()).get("shards"):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = json.loads(manifests[0].read_text())["shards"]
    assert 0 < len(done_before) < 3 and not (out / "results.jsonl").exists()

    counter_calls = []
    original = ViewExtractor.__call__

    def counting(extractor: ViewExtractor, *a: object, **k: object):  # type: ignore[no-untyped-def]
        counter_calls.append(1)
        return original(extractor, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ViewExtractor, "__call__", counting)
        assert cli.main([str(a) for a in (*args, "--output-dir", out)]) == 0
    fresh = tmp_path / "fresh"
    assert cli.main([str(a) for a in (*args, "--output-dir", fresh, "--view-cache", tmp_path / "views2")]) == 0
    strip = [{k: v for k, v in r.items() if k != "settings"} for r in _records(out)]
    assert strip == [{k: v for k, v in r.items() if k != "settings"} for r in _records(fresh)]
    # 7 files (one unreadable) in shards of 2 -> 4 shards; the killed run's finished shards were not redone
    assert len(counter_calls) <= 6 - 2 * len(done_before) + 1
    assert not list((tmp_path / "views").rglob("*.tmp"))


def test_cache_identity_ignores_the_device_index(tiny_openai_checkpoint: Path) -> None:
    """Under torchrun rank r runs on cuda:r; all ranks must share one cache key."""
    from absclip.backbones import create_backbone
    from absclip.evaluate import cache_identity

    bb = create_backbone(f"openai:{tiny_openai_checkpoint}", pretrained=None, device="cpu")
    cpu = cache_identity(bb)
    bb.device = torch.device("cuda", 3)  # only the recorded device changes; nothing runs
    cuda3 = cache_identity(bb)
    bb.device = torch.device("cuda", 0)
    assert cuda3 == cache_identity(bb) and cuda3["device"] == "cuda"
    assert cpu["device"] == "cpu" and cpu != cuda3
    assert cpu["dtype"] == "float32"


def test_eval_honours_micro_batch(dataset_root: Path, descriptions: Path, tiny_openai_checkpoint: Path,
                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--micro-batch reaches the extractors; it used to be dropped with the settings that do not change
    the views, so every encoder call took the device default (8 on CPU)."""
    from absclip.backbones.base import Backbone

    sizes: list[int] = []
    original = Backbone.encode_image

    def spy(self: Backbone, pixels: torch.Tensor) -> torch.Tensor:
        sizes.append(len(pixels))
        return original(self, pixels)

    monkeypatch.setattr(Backbone, "encode_image", spy)
    assert _eval(dataset_root, tiny_openai_checkpoint, descriptions, tmp_path / "out", tmp_path, "--micro-batch", "3",
                 methods=["wca"], seeds="0") == 0
    assert max(sizes) == 3 and sizes.count(3) >= 2  # 2 images × 4 crops per batch: calls of 3, 3, 2


# ---- per-sample predictions and the adaptation summary in records ------------------------------------
def _predictions(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def test_predictions_match_the_classifier(first_run: tuple[Path, Path], dataset_root: Path, descriptions: Path,
                                          tiny_openai_checkpoint: Path) -> None:
    """predictions.jsonl holds, per method × seed × readable image, the classes and logits an independent
    ZeroShotClassifier gives, so the report's per-class numbers come from the very logits the metrics did."""
    from absclip.backbones import create_backbone
    from absclip.classifier import ZeroShotClassifier
    from absclip.data import create_dataset

    out, cache = first_run
    preds = _predictions(out)
    records = _records(out)
    # one line per record's image, in run order, each run's lines in dataset order
    assert [(p["method"], p["seed"]) for p in preds] == [(r["method"], r["seed"]) for r in records for _ in range(6)]
    dataset = create_dataset("folder", dataset_root)
    good = [(p, y) for p, y in dataset.samples if p.name != "broken.png"]
    backbone = create_backbone(f"openai:{tiny_openai_checkpoint}", pretrained=None, device="cpu")
    for r in records:
        mine = [p for p in preds if (p["method"], p["seed"]) == (r["method"], r["seed"])]
        assert [p["path"] for p in mine] == [str(p) for p, _ in good]
        assert [(p["target"], p["target_label"]) for p in mine] == [(y, dataset.classes[y]) for _, y in good]
        assert all(p["dataset"] == "folder" and p["pred"] == p["top_k"][0] and len(p["top_k"]) == 3 for p in mine)
        assert all(p["pred_label"] == dataset.classes[p["pred"]] for p in mine)
        hits = sum(p["pred"] == p["target"] for p in mine)
        assert hits / 6 == pytest.approx(r["metrics"]["acc1"])
        if r["method"] not in ("clip", "abs"):
            continue
        opts = MethodOptions(saliency="uniform", seed=r["seed"], abs_sampler=AbsSamplerConfig(crops=4),
                             random_crops=RandomCropConfig(crops=4))
        clf = ZeroShotClassifier(backbone, r["method"], dataset.classes, descriptions, options=opts,
                                 cache_dir=cache / "text", batch_size=4)
        logits = clf.predict([p for p, _ in good], keys=[str(p) for p, _ in good]).logits
        for p, row in zip(mine, logits, strict=True):
            order = sorted(range(3), key=lambda c: -float(row[c]))  # a plain ranking, no topk
            assert p["top_k"] == order
            assert p["top_k_scores"] == pytest.approx([float(row[c]) for c in order], abs=1e-3)


def test_rerun_without_failures_drops_stale_outputs(tmp_path: Path) -> None:
    """A later run's directory never keeps an earlier run's failures or predictions beside its records."""
    from absclip.evaluate import write_outputs

    record = {"dataset": "d", "model": "m", "pretrained": None, "method": "x", "seed": 0, "n_samples": 1,
              "metrics": {"acc1": 1.0, "acc5": 1.0, "mean_per_class_recall": 1.0}}
    paths = write_outputs(tmp_path, [record], [("a.png", "broken")], iter([{"method": "x"}]))
    assert paths["predictions"].read_text() == '{"method": "x"}\n' and (tmp_path / "failed.jsonl").exists()
    write_outputs(tmp_path, [record])
    assert not (tmp_path / "failed.jsonl").exists() and not (tmp_path / "predictions.jsonl").exists()


def test_records_carry_the_adaptation_summary_in_eval_and_reproduce(
        dataset_root: Path, descriptions: Path, tiny_openai_checkpoint: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each few-shot / test-time record states its support draw or stream (issue 11), whichever writer made
    it: ``absclip eval`` and ``absclip reproduce`` on the same images and seeds record the same draw and
    stream; zero-shot records state none."""
    from absclip.reproduce import PRESETS, DatasetSpec, Preset, Row

    support = tmp_path / "support"
    rng = np.random.default_rng(5)
    for name in CLASSES:
        for i in range(4):
            (support / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(support / name / f"{i}.png")
    out = tmp_path / "eval"
    assert _eval(dataset_root, tiny_openai_checkpoint, descriptions, out, tmp_path / "cache", "--support", support,
                 "--shots", "2", "--workers", "0", methods=["clip", "tip-adapter", "tda"]) == 0
    by = {(r["method"], r["seed"]): r for r in _records(out)}
    assert "adaptation" not in by[("clip", 0)]
    for seed in (0, 1):
        tip, tda = by[("tip-adapter", seed)]["adaptation"], by[("tda", seed)]["adaptation"]
        assert tip["setting"] == "few-shot" and tip["support"]["seed"] == seed
        assert tip["support"]["shots_used"] == [2, 2, 2] and tip["support"]["root"] == str(support)
        assert tda["setting"] == "test-time" and tda["stream"]["seed"] == seed and tda["stream"]["length"] == 6
    assert by[("tip-adapter", 0)]["adaptation"]["support"]["draw"] != by[("tip-adapter", 1)]["adaptation"][
        "support"]["draw"]

    preset = Preset("tiny-adapt", "Tiny adaptation", None, (DatasetSpec("folder", "folder", "Folder", ("test",)),),
                    (Row("Zero-shot", "clip"), Row("Tip", "tip-adapter", {"adapt.shots": 2}), Row("TDA", "tda")))
    monkeypatch.setitem(PRESETS, preset.name, preset)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "test").symlink_to(dataset_root, target_is_directory=True)
    rep = tmp_path / "reproduce"
    args = ["reproduce", preset.name, "--data-root", tmp_path / "data", "--model", f"openai:{tiny_openai_checkpoint}",
            "--descriptions", f"folder={descriptions}", "--set", f"adapt.support={support}", "--seeds", "0,1",
            "--output-dir", rep, "--cache-dir", tmp_path / "cache" / "text", "--view-cache",
            tmp_path / "cache" / "views", "--batch-size", "2", "--shard-size", "3"]
    assert cli.main([str(a) for a in args]) == 0
    reproduced = {(r["row"], r["seed"]): r for r in _records(rep)}
    assert "adaptation" not in reproduced[("Zero-shot", 0)]
    for seed in (0, 1):
        assert reproduced[("Tip", seed)]["adaptation"]["support"] == by[("tip-adapter", seed)]["adaptation"]["support"]
        assert reproduced[("TDA", seed)]["adaptation"]["stream"] == by[("tda", seed)]["adaptation"]["stream"]
