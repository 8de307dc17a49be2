"""The CLI end to end on generated images and a tiny OpenAI-format model, including bad inputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from absclip.cli import main
from absclip.methods import METHODS as METHOD_REGISTRY
from absclip.methods import list_methods
from absclip.views import read_plans

# every registered method (a new one is tested without editing this file), less those that ask an LLM
# while they score: tests/test_fudd.py runs them against a loopback LLM server
METHODS = [m for m in list_methods() if not METHOD_REGISTRY.get(m).needs_llm]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    (root / "sub").mkdir()
    for i, (w, h) in enumerate([(64, 48), (40, 90), (33, 33)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"img{i}.png")
    Image.fromarray(rng.integers(0, 256, (500, 3, 3), dtype=np.uint8)).save(root / "sub" / "thin.png")
    Image.new("RGB", (1, 1), (200, 10, 10)).save(root / "sub" / "one.png")
    Image.new("CMYK", (30, 20), (0, 0, 0, 0)).save(root / "cmyk.jpg")
    Image.fromarray((rng.integers(0, 65535, (20, 20))).astype(np.uint16)).save(root / "deep16.png")
    Image.new("P", (16, 16)).save(root / "palette.png")
    Image.new("RGBA", (16, 16), (0, 0, 255, 128)).save(root / "alpha.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 20)).save(root / "rotated.jpg", exif=exif)
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.png").write_text("not an image")
    good = root / "img0.png"
    (root / "truncated.png").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return root


BAD = {"empty.jpg", "notes.png", "truncated.png"}


def _run(args: list[str]) -> int:
    return main([str(a) for a in args])


def _common(model: Path, cache: Path) -> list[str]:
    return ["--model", f"openai:{model}", "--cache-dir", str(cache), "--saliency", "uniform", "--crops", "4",
            "--random-crops", "4", "--zero-views", "4", "--awt-views", "4", "--batch-size", "4"]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_end_to_end(method: str, image_dir: Path, descriptions: Path, tiny_openai_checkpoint: Path,
                                 tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.jsonl"
    code = _run(["classify", image_dir, "--classes", "cat,dog,bird", "--descriptions", descriptions,
                 "--method", method, "--output", out, "--top-k", "2", *_common(tiny_openai_checkpoint, tmp_path)])
    assert code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    names = {Path(r["path"]).name for r in records}
    assert len(records) == 13 and "thin.png" in names and "one.png" in names
    for r in records:
        if Path(r["path"]).name in BAD:
            assert r["error"] and r["label"] is None
        else:
            assert r["error"] is None and r["label"] in {"cat", "dog", "bird"}
            assert len(r["top_k"]) == 2 and r["top_k"][0]["score"] >= r["top_k"][1]["score"]
            assert r["label"] == r["top_k"][0]["label"]
    err = capsys.readouterr().err
    for bad in BAD:
        assert str(image_dir / bad) in err  # reported with its path


def test_plans_round_trip_reproduces_logits(image_dir: Path, descriptions: Path, tiny_openai_checkpoint: Path,
                                            tmp_path: Path) -> None:
    plans = tmp_path / "plans.jsonl"
    assert _run(["plan", image_dir / "img0.png", image_dir / "img1.png", "--output", plans, "--method", "abs",
                 *_common(tiny_openai_checkpoint, tmp_path)]) == 0
    loaded = read_plans(plans)
    assert set(loaded) == {str(image_dir / "img0.png"), str(image_dir / "img1.png")}
    assert all(len(p.boxes) == 4 and len(p.windows) == 4 for p in loaded.values())
    outs = []
    for extra in ([], ["--plans", plans], ["--plans", plans, "--seed", "5"]):
        out = tmp_path / f"out{len(outs)}.csv"
        assert _run(["classify", image_dir / "img0.png", image_dir / "img1.png", "--classes", "cat,dog,bird",
                     "--descriptions", descriptions, "--method", "abs", "--output", out,
                     *_common(tiny_openai_checkpoint, tmp_path), *extra]) == 0
        outs.append(list(csv.DictReader(out.open())))
    # sampled with seed 0 == supplied plans (sampled with seed 0), whatever --seed says when plans are given
    assert outs[0] == outs[1] == outs[2]


def test_seed_changes_crops(image_dir: Path, tiny_openai_checkpoint: Path, tmp_path: Path) -> None:
    files = []
    for seed in (0, 1):
        path = tmp_path / f"plans{seed}.jsonl"
        _run(["plan", image_dir / "img0.png", "--output", path, "--method", "abs", "--seed", str(seed),
              *_common(tiny_openai_checkpoint, tmp_path)])
        files.append(next(iter(read_plans(path).values())).boxes)
    assert files[0] != files[1]


def test_strict_stops_on_bad_image(image_dir: Path, tiny_openai_checkpoint: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.csv"
    code = _run(["classify", image_dir, "--classes", "cat,dog", "--strict", "--output", out,
                 *_common(tiny_openai_checkpoint, tmp_path)])
    assert code == 2
    assert not out.exists()  # nothing half-written
    assert "empty.jpg" in capsys.readouterr().err


def test_csv_output_and_descriptions_report(image_dir: Path, tiny_openai_checkpoint: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    desc = tmp_path / "partial.json"
    desc.write_text(json.dumps({"cat": ["whiskers"], "dog": [], "unicorn": ["horn"]}))
    out = tmp_path / "out.csv"
    code = _run(["classify", image_dir / "img0.png", "--classes", "cat,dog,bird", "--descriptions", desc,
                 "--method", "cupl", "--output", out, *_common(tiny_openai_checkpoint, tmp_path)])
    assert code == 0
    rows = list(csv.DictReader(out.open()))
    assert rows[0]["label"] in {"cat", "dog", "bird"} and len(rows[0]["top_k_labels"].split("|")) == 3
    err = capsys.readouterr().err
    assert "2:'bird'" in err and "1:'dog'" in err and "'unicorn'" in err


def test_errors_are_one_line(tmp_path: Path, image_dir: Path, tiny_openai_checkpoint: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    common = _common(tiny_openai_checkpoint, tmp_path)
    assert _run(["classify", tmp_path / "missing", "--classes", "a,b", *common]) == 2
    assert str(tmp_path / "missing") in capsys.readouterr().err
    assert _run(["classify", image_dir / "img0.png", "--classes", "a,b", "--method", "cupl", *common]) == 2
    assert "needs class descriptions" in capsys.readouterr().err
    assert _run(["classify", image_dir / "img0.png", "--classes", "a,b", "--output", tmp_path / "x.txt", *common]) == 2
    assert "--output must end in .jsonl, .csv, .parquet" in capsys.readouterr().err


def test_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("classify", "plan", "visualize", "describe"):
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0
        text = capsys.readouterr().out
        options = [line.split()[0] for line in text.splitlines() if line.strip().startswith("--")]
        assert options, command
        for line in text.splitlines():
            stripped = line.strip()
            if stripped.startswith("--") and len(stripped.split()) <= 2:
                continue  # help text wrapped onto the next line
            if stripped.startswith("--"):
                assert len(stripped.split("  ")) > 1 or stripped.count(" ") > 1, line


def test_visualize_writes_png(image_dir: Path, tiny_openai_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "vis.png"
    assert _run(["visualize", image_dir / "img1.png", "--output", out, "--saliency", "clip",
                 "--model", f"openai:{tiny_openai_checkpoint}", "--crops", "6"]) == 0
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 100


def test_python_api_accepts_paths_pil_and_tensors(image_dir: Path, descriptions: Path,
                                                  tiny_openai_checkpoint: Path) -> None:
    from absclip import MethodOptions, ZeroShotClassifier, create_backbone

    bb = create_backbone(f"openai:{tiny_openai_checkpoint}", pretrained=None, device="cpu")
    clf = ZeroShotClassifier(bb, "abs", ["cat", "dog", "bird"], descriptions,
                             options=MethodOptions(saliency="uniform"), cache_dir="")
    path = image_dir / "img0.png"
    pil = Image.open(path).convert("RGB")
    tensor = torch.from_numpy(np.array(pil)).permute(2, 0, 1).contiguous()
    preds = [clf.predict([x], keys=["same"]) for x in (path, pil, tensor)]
    assert torch.allclose(preds[0].logits, preds[1].logits) and torch.allclose(preds[0].logits, preds[2].logits)
    assert preds[0].logits.shape == (1, 3) and preds[0].labels[0] in {"cat", "dog", "bird"}
    assert len(preds[0].plans[0].boxes) == 50  # the reference N


def test_classify_describe_writes_then_reuses(image_dir: Path, tiny_openai_checkpoint: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from itertools import count

    from llm_server import FakeLLM, Reply

    monkeypatch.setenv("ABSCLIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    numbers = count()
    desc = tmp_path / "described.json"
    args = ["classify", image_dir / "img0.png", "--classes", "cat,dog", "--method", "cupl", "--describe",
            "--descriptions", desc, *_common(tiny_openai_checkpoint, tmp_path)]
    with FakeLLM(lambda seen: Reply(content=f"A photo showing a distinct shape number {next(numbers)}.")) as server:
        assert _run([*args, "--llm-endpoint", server.url, "--llm-model", "test-model"]) == 0
        asked = server.count()
        written = json.loads(desc.read_text())
        assert set(written) == {"cat", "dog"} and all(written.values())
        assert asked > 0
        assert _run([*args, "--llm-endpoint", server.url, "--llm-model", "test-model"]) == 0
        assert server.count() == asked  # the file covers every class: nothing asked again


def test_abs_soft_match_only_scores_the_full_image(image_dir: Path, descriptions: Path,
                                                   tiny_openai_checkpoint: Path) -> None:
    """Table 4's soft-matching-only row: no crops, the full image soft-matched (independent formula)."""
    from absclip import MethodOptions, ZeroShotClassifier, create_backbone
    from absclip.classifier import to_uint8_tensor
    from absclip.text import load_classes, load_descriptions

    bb = create_backbone(f"openai:{tiny_openai_checkpoint}", pretrained=None, device="cpu")
    classes = load_classes("cat,dog,bird")
    clf = ZeroShotClassifier(bb, "abs", classes, descriptions, cache_dir="",
                             options=MethodOptions(raw=False, feature=False, saliency="uniform"))
    pred = clf.predict([image_dir / "img0.png"])
    assert pred.plans == []
    views, _ = clf.extractor([to_uint8_tensor(image_dir / "img0.png")], ["k"])
    z = views.full[0]
    texts = load_descriptions(classes, descriptions).texts
    sims = [[float(z @ t) / 0.03 for t in bb.encode_text(group)] for group in texts]
    flat = torch.tensor([s for group in sims for s in group])
    p = torch.softmax(flat, dim=0)
    expected, k = [], 0
    for group in sims:
        expected.append(sum(float(p[k + j]) * s for j, s in enumerate(group)))
        k += len(group)
    assert torch.allclose(pred.logits[0], torch.tensor(expected), atol=1e-4)


def test_plans_for_other_paths_are_a_clear_error(image_dir: Path, descriptions: Path, tiny_openai_checkpoint: Path,
                                                 tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plans = tmp_path / "plans.jsonl"
    assert _run(["plan", image_dir / "img0.png", "--output", plans, *_common(tiny_openai_checkpoint, tmp_path)]) == 0
    code = _run(["classify", image_dir / "img1.png", "--classes", "cat,dog", "--descriptions", descriptions,
                 "--method", "abs", "--plans", plans, *_common(tiny_openai_checkpoint, tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "no crop plan for" in err and "img1.png" in err and "Traceback" not in err


def test_relative_saliency_dir_fails_without_network(tiny_openai_checkpoint: Path, tmp_path: Path) -> None:
    from absclip.attention import create_saliency
    from absclip.backbones import create_backbone
    from absclip.errors import WeightsNotFoundError

    bb = create_backbone(f"openai:{tiny_openai_checkpoint}", pretrained=None, device="cpu")
    for spec in ("dino:./no/such/dir", "dino:models/dino/vitb16", f"dinov2:{tmp_path / 'missing'}"):
        with pytest.raises(WeightsNotFoundError, match="not found"):
            create_saliency(spec, bb)


def test_probabilities_use_the_method_scale(image_dir: Path, descriptions: Path, tiny_openai_checkpoint: Path) -> None:
    """clip: softmax(model logit scale × cosine); abs: softmax(sum of per-view scores / number of views)."""
    from absclip import MethodOptions, ZeroShotClassifier, create_backbone
    from absclip.views import AbsSamplerConfig

    bb = create_backbone(f"openai:{tiny_openai_checkpoint}", pretrained=None, device="cpu")
    scale = float(bb.model.logit_scale.exp())
    assert abs(bb.logit_scale - scale) < 1e-6 and abs(scale - 1 / 0.07) < 0.05  # open_clip's init, in fp16
    image = image_dir / "img0.png"
    clip = ZeroShotClassifier(bb, "clip", ["cat", "dog", "bird"], cache_dir="").predict([image])
    assert torch.allclose(clip.probabilities, torch.softmax(clip.logits * scale, dim=1), atol=1e-6)
    opts = MethodOptions(saliency="uniform", abs_sampler=AbsSamplerConfig(crops=3))
    abs_pred = ZeroShotClassifier(bb, "abs", ["cat", "dog", "bird"], descriptions, options=opts,
                                  cache_dir="").predict([image])
    assert torch.allclose(abs_pred.probabilities, torch.softmax(abs_pred.logits / 6, dim=1), atol=1e-6)
    probs, idx = abs_pred.topk(2)
    assert idx[0, 0] == abs_pred.logits.argmax() and torch.allclose(probs[0], abs_pred.probabilities[0][idx[0]])


@pytest.mark.parametrize(("option", "message"), [
    (["--crops", "0"], "ABS needs at least one crop per image, got crops=0"),
    (["--random-crops", "0", "--method", "wca"], "random crops need at least one crop per image"),
    (["--micro-batch", "0"], "micro_batch must be positive, got 0"),
])
def test_bad_view_settings_fail_before_any_model_loads(option: list[str], message: str, image_dir: Path,
                                                       descriptions: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The model named here does not exist: the settings error must come first, as one line."""
    args = ["classify", image_dir / "img0.png", "--classes", "cat,dog,bird", "--descriptions", descriptions,
            "--method", "abs", "--model", f"openai:{tmp_path / 'missing.pt'}", "--cache-dir", tmp_path, *option]
    assert _run(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("absclip: error: ") and message in err[0]
