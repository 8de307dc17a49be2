"""``absclip reproduce``: preset grids (dry runs), the published numbers, and tiny end-to-end runs.

The end-to-end runs use the tiny random model and generated folder datasets standing in for the
paper's datasets; the report's cells are checked against numbers recomputed here from results.jsonl
and the raw published.json, and one row's accuracy against a ZeroShotClassifier with the same options.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import absclip.cli as cli
from absclip.methods import MethodOptions
from absclip.reproduce import PRESETS, DatasetSpec, Preset, Row, TimingSpec, overrides, planning
from absclip.reproduce import published as pub
from absclip.reproduce import report as rep
from absclip.reproduce import runner as rr
from absclip.views import AbsSamplerConfig
from tiny_folders import write_folder_dataset

PUBLISHED = Path(rr.__file__).parent.parent / "resources" / "published.json"
CLASSES = ["cat", "dog", "bird"]
BASELINE_METHODS = ["clip", "clip-e", "clip-d", "waffle", "cupl", "wca", "abs"]


# ---- helpers -------------------------------------------------------------------------------------
def _main(monkeypatch: pytest.MonkeyPatch, *args: object) -> int:
    """Run ``absclip reproduce ...`` through the real CLI."""
    return cli.main([str(a) for a in ("reproduce", *args)])


def _dry(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], preset: str, root: Path,
         *extra: object) -> list[dict[str, Any]]:
    assert _main(monkeypatch, preset, "--data-root", root, "--dry-run", "--json", *extra) == 0
    return json.loads(capsys.readouterr().out)



def _published_raw(table: str, dataset: str, method: str, metric: str = "top1",
                   backbone: str = "ViT-B/16") -> float:
    entries = json.loads(PUBLISHED.read_text(encoding="utf-8"))["entries"]
    (hit,) = [e for e in entries if (e["table"], e["backbone"], e["dataset"], e["method"], e["metric"])
              == (table, backbone, dataset, method, metric)]
    return float(hit["value"])


def _cell(ours: float, pub: float, signed: bool = False) -> str:
    """The expected "ours (published, delta)" text, computed independently of the runner."""
    shown = float(f"{ours:.2f}")
    delta = float(f"{shown - pub:.2f}")

    def num(v: float) -> str:
        text = f"{abs(v):.2f}"
        return ("−" if v < 0 else "+" if signed else "") + text

    return f"{num(shown)} ({num(pub)}, {'−' if delta < 0 else '+'}{abs(delta):.2f})"


def _table_rows(markdown: str) -> dict[str, list[str]]:
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("| Method"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


# ---- published numbers ---------------------------------------------------------------------------
def test_published_entries_have_sources_and_hold_the_design_numbers() -> None:
    doc = json.loads(PUBLISHED.read_text(encoding="utf-8"))
    entries = doc["entries"]
    assert entries
    keys = set()
    for e in entries:
        assert {"table", "backbone", "dataset", "method", "metric", "value", "source"} <= set(e)
        assert re.fullmatch(r"ABS \(ICML 2025\) Table \d+", e["source"]) and e["source"].endswith(e["table"])
        assert isinstance(e["value"], float | int)
        key = (e["table"], e["backbone"], e["dataset"], e["method"], e["metric"])
        assert key not in keys, key
        keys.add(key)
    design = {  # DESIGN.md §4, ViT-B/16
        ("Table 1", "imagenet", "abs"): 71.92, ("Table 1", "imagenet-v2", "abs"): 66.19,
        ("Table 1", "imagenet-r", "abs"): 79.57, ("Table 1", "imagenet-sketch", "abs"): 50.54,
        ("Table 1", "imagenet-a", "abs"): 61.80, ("Table 2", "cub", "abs"): 61.01,
        ("Table 2", "oxford-pet", "abs"): 92.64, ("Table 2", "dtd", "abs"): 54.26,
        ("Table 2", "food101", "abs"): 89.69, ("Table 2", "places365", "abs"): 41.88,
        ("Table 1", "imagenet", "clip"): 66.74,
        ("Table 6", "imagenet", "saliency:uniform"): 69.60, ("Table 6", "imagenet", "saliency:clip"): 70.37,
        ("Table 6", "imagenet", "saliency:dino-s16"): 71.77, ("Table 6", "imagenet", "saliency:dino-b16"): 71.92,
    }
    ablation = {"cupl": (69.61, 50.53, 63.27), "raw": (69.34, 51.52, 63.56), "feature": (69.34, 51.81, 63.10),
                "soft-match": (70.03, 52.89, 63.68), "raw+feature+soft-match": (71.92, 54.26, 66.19)}
    for row, values in ablation.items():
        for dataset, value in zip(("imagenet", "dtd", "imagenet-v2"), values, strict=True):
            design[("Table 4", dataset, row)] = value
    published = pub.load_published()
    for (table, dataset, method), value in design.items():
        assert _published_raw(table, dataset, method) == value
        assert published.value(table, "ViT-B/16", dataset, method) == value


def test_published_backbone_from_model() -> None:
    assert pub.published_backbone("open_clip:ViT-B-16", "openai") == "ViT-B/16"
    assert pub.published_backbone("open_clip:ViT-B-32", "openai") == "ViT-B/32"
    assert pub.published_backbone("open_clip:ViT-L-14", "openai") == "ViT-L/14"
    assert pub.published_backbone("open_clip:ViT-L-14-336", "openai") is None
    assert pub.published_backbone("open_clip:ViT-B-16", "laion2b_s34b_b88k") is None
    assert pub.published_backbone("openai:/w/ViT-B-16.pt", None) == "ViT-B/16"
    assert pub.published_backbone("hf:openai/clip-vit-base-patch32", None) == "ViT-B/32"
    assert pub.published_backbone("hf:laion/CLIP-ViT-B-16-laion2B-s34B-b88K", None) is None


def test_overrides_and_cells() -> None:
    opts = overrides.apply_overrides(MethodOptions(), {"abs_sampler.ratio": "0.4,0.9", "raw": "false",
                                                       "feature_layer": "7", "abs_sampler.crops": 5,
                                                       "max_descriptions": "none"})
    assert opts.abs_sampler == AbsSamplerConfig(crops=5, ratio=(0.4, 0.9)) and opts.raw is False
    assert opts.feature_layer == 7 and opts.max_descriptions is None and MethodOptions().raw is True
    with pytest.raises(Exception, match=r"unknown option 'abs_sampler\.bogus'"):
        overrides.apply_overrides(MethodOptions(), {"abs_sampler.bogus": 1})
    assert rep.format_cell(71.1, 71.92) == "71.10 (71.92, −0.82)"
    assert rep.format_cell(72.004, 71.92) == "72.00 (71.92, +0.08)"
    assert rep.format_cell(1.5, 2.98, signed=True) == "+1.50 (+2.98, −1.48)"
    assert rep.format_cell(50.0, None, std=1.234) == "50.00 ± 1.23"
    for preset in PRESETS.values():
        overrides.check_row_options(preset)


# ---- dry runs ------------------------------------------------------------------------------------
@pytest.fixture()
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dry run must not load a model."""
    import absclip.backbones as backbones

    def fail(*_: object, **__: object) -> None:
        raise AssertionError("a dry run loaded a model")

    monkeypatch.setattr(backbones, "create_backbone", fail)


def _grid(runs: list[dict[str, Any]]) -> list[tuple[str, str, str, dict[str, Any]]]:
    return [(r["dataset"], r["row"], r["method"], r["overrides"]) for r in runs]


def test_dry_run_table1_and_table2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str], no_model: None) -> None:
    (tmp_path / "imagenet").mkdir()
    (tmp_path / "food-101").mkdir()
    runs = _dry(monkeypatch, capsys, "table1", tmp_path)
    ood = ["imagenet", "imagenet-v2", "imagenet-r", "imagenet-sketch", "imagenet-a"]
    assert [(r["dataset"], r["method"]) for r in runs] == [(d, m) for d in ood for m in BASELINE_METHODS]
    assert all(r["overrides"] == {} for r in runs)
    assert {r["dataset"] for r in runs if r["status"] == planning.READY} <= {"imagenet"}
    assert {r["status"] for r in runs if r["dataset"] != "imagenet"} == {planning.MISSING_DATA}
    abs_in = next(r for r in runs if (r["dataset"], r["method"]) == ("imagenet", "abs"))
    assert abs_in["published"] == 71.92 and abs_in["options"]["abs_sampler.pairing"] == "independent"
    assert abs_in["root"] == str(tmp_path / "imagenet")

    runs = _dry(monkeypatch, capsys, "table2", tmp_path, "--data-dir", tmp_path / "none")
    zs = ["imagenet", "cub", "oxford-pet", "dtd", "food101", "places365"]
    assert [(r["dataset"], r["method"]) for r in runs] == [(d, m) for d in zs for m in BASELINE_METHODS]
    food = {r["method"]: r for r in runs if r["dataset"] == "food101"}
    assert food["clip"]["root"] == str(tmp_path / "food-101") and food["clip"]["status"] == planning.READY
    assert food["abs"]["status"] == planning.MISSING_DESCRIPTIONS  # no data dir holding descriptions
    assert food["abs"]["published"] == 89.69


def test_dry_run_table4_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str], no_model: None) -> None:
    runs = _dry(monkeypatch, capsys, "table4", tmp_path)
    assert [r["dataset"] for r in runs[::8]] == ["imagenet", "dtd", "imagenet-v2"]
    rows = {r["row"]: r for r in runs if r["dataset"] == "imagenet"}
    assert len(rows) == 8
    assert rows["CuPL"]["method"] == "cupl" and rows["CuPL"]["overrides"] == {}
    full = rows["raw+feature+soft-match (ABS)"]
    assert full["method"] == "abs" and full["overrides"] == {"raw": True, "feature": True, "soft_match": True}
    assert full["published"] == 71.92
    assert rows["raw"]["overrides"] == {"raw": True, "feature": False, "soft_match": False}
    assert rows["feature"]["overrides"] == {"raw": False, "feature": True, "soft_match": False}
    assert rows["raw+feature"]["overrides"] == {"raw": True, "feature": True, "soft_match": False}
    assert rows["raw+soft-match"]["overrides"] == {"raw": True, "feature": False, "soft_match": True}
    assert rows["feature+soft-match"]["overrides"] == {"raw": False, "feature": True, "soft_match": True}
    assert rows["soft-match"]["overrides"] == {"raw": False, "feature": False, "soft_match": True}
    assert rows["soft-match"]["published"] == 70.03
    assert {r["status"] for r in runs} == {planning.MISSING_DATA}


def test_dry_run_table5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str], no_model: None) -> None:
    runs = _dry(monkeypatch, capsys, "table5", tmp_path)
    assert {r["dataset"] for r in runs} == {"imagenet"} and {r["method"] for r in runs} == {"abs"}
    raw = [r["overrides"] for r in runs if r["row"].startswith("raw space")]
    assert raw == [{"raw": True, "feature": False, "soft_match": True, "raw_augment": a}
                   for a in ("mask", "highlight", "redcircle", "crop")]
    fea = [r["overrides"] for r in runs if r["row"].startswith("feature space")]
    assert fea == [{"raw": False, "feature": True, "soft_match": True, "feature_augment": a}
                   for a in ("mask", "highlight-fea", "highlight-attn", "crop")]
    assert [r["published"] for r in runs] == [53.65, 66.44, 62.63, 70.98, 62.72, 65.03, 67.37, 70.31]
    runs = _dry(monkeypatch, capsys, "table5", tmp_path, "--published-backbone", "none")
    assert [r["published"] for r in runs] == [None] * 8


def test_dry_run_table6_table7_fig4_table9(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str], no_model: None) -> None:
    runs = _dry(monkeypatch, capsys, "table6", tmp_path)
    assert [r["dataset"] for r in runs[::4]] == ["imagenet", "cub", "dtd", "imagenet-a"]
    saliency = [r["overrides"]["saliency"] for r in runs if r["dataset"] == "imagenet"]
    assert saliency == ["uniform", "clip", "dino:facebook/dino-vits16", "dino"]
    assert [r["published"] for r in runs if r["dataset"] == "imagenet"] == [69.60, 70.37, 71.77, 71.92]

    runs = _dry(monkeypatch, capsys, "table7", tmp_path, "--published-backbone", "ViT-B/32")
    assert [r["overrides"] for r in runs] == [{"feature_layer": i} for i in range(1, 12)]
    assert runs[-1]["published"] == 67.74 and runs[0]["published"] == 66.14

    runs = _dry(monkeypatch, capsys, "fig4", tmp_path)
    assert {r["dataset"] for r in runs} == {"imagenet"} and all(r["published"] is None for r in runs)
    keys = [next(iter(r["overrides"])) for r in runs]
    assert keys.count("abs_sampler.ratio") == 8 and keys.count("abs_sampler.crops") == 7
    assert keys.count("abs_sampler.top_k") == 7
    ratios = [tuple(r["overrides"]["abs_sampler.ratio"]) for r in runs if "abs_sampler.ratio" in r["overrides"]]
    assert [hi for _, hi in ratios] == [0.9] * 8

    runs = _dry(monkeypatch, capsys, "table9", tmp_path)
    assert [(r["method"], r["overrides"]) for r in runs] == [("clip", {})] + [
        ("abs", {"abs_sampler.crops": n}) for n in (10, 20, 30, 40, 50)]
    assert [r["published"] for r in runs] == [66.74, 71.72, 71.92, 71.98, 71.97, 71.93]
    assert PRESETS["table9"].timing == TimingSpec("imagenet", (10, 20, 30, 40, 50))


def test_dry_run_text_and_user_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str], no_model: None) -> None:
    assert _main(monkeypatch, "table4", "--data-root", tmp_path, "--dry-run", "--set", "abs_sampler.crops=10") == 0
    text = capsys.readouterr().out
    assert "imagenet-v2 [imagenet-v2] <- MISSING" in text and "not expressible" not in text
    assert "abs_sampler.crops=10" in text
    runs = rr.dry_run(PRESETS["table4"], rr.ReproduceConfig(data_root=tmp_path, overrides={"saliency": "uniform"}),
                      out=None)
    assert all(r["options"]["saliency"] == "uniform" for r in runs)
    assert _main(monkeypatch, "table4", "--data-root", tmp_path, "--dry-run", "--set", "bogus=1") == 2
    assert _main(monkeypatch, "nope", "--data-root", tmp_path, "--dry-run") == 2


# ---- end to end ----------------------------------------------------------------------------------
TINY_DATASETS = (DatasetSpec("imagenet", "folder", "ImageNet", ("imagenet",)),
                 DatasetSpec("dtd", "folder", "DTD", ("dtd",)),
                 DatasetSpec("imagenet-v2", "folder", "ImageNet-V2", ("imagenet-v2",)))
TINY_ABLATION = Preset(
    "tiny-ablation", "Tiny ablation", "Table 4", TINY_DATASETS,
    (Row("CuPL", "cupl", published="cupl"),
     Row("soft-match", "abs", {"soft_match": True}, published="soft-match", expressible=False, note="n/a here"),
     Row("ABS", "abs", {"raw": True, "feature": True, "soft_match": True}, published="raw+feature+soft-match"),
     Row("CLIP", "clip")),
    average="gain:CuPL",
)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for seed, name in enumerate(("imagenet", "dtd", "imagenet-v2")):
        write_folder_dataset(root / name, seed)
    return root


def _tiny_args(data_root: Path, model: Path, desc: Path, out: Path, cache: Path) -> list[object]:
    return ["--data-root", data_root, "--model", f"openai:{model}", "--published-backbone", "ViT-B/16",
            "--descriptions", f"imagenet={desc}", "--descriptions", f"dtd={desc}",
            "--descriptions", f"imagenet-v2={desc}", "--set", "saliency=uniform", "--set", "abs_sampler.crops=3",
            "--output-dir", out, "--cache-dir", cache / "text", "--view-cache", cache / "views",
            "--batch-size", "2", "--shard-size", "4"]


def test_tiny_preset_end_to_end(data_root: Path, descriptions: Path, tiny_openai_checkpoint: Path,
                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from absclip.backbones import create_backbone
    from absclip.classifier import ZeroShotClassifier
    from absclip.data import create_dataset

    monkeypatch.setitem(PRESETS, TINY_ABLATION.name, TINY_ABLATION)
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert _main(monkeypatch, TINY_ABLATION.name, *_tiny_args(data_root, tiny_openai_checkpoint, descriptions,
                                                             out, cache)) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    keys = {(r["row"], r["dataset_key"]) for r in records}
    assert keys == {(row, d) for row in ("CuPL", "ABS", "CLIP") for d in ("imagenet", "dtd", "imagenet-v2")}
    ours = {(r["row"], r["dataset_key"]): 100 * r["metrics"]["acc1"] for r in records}
    by = {(r["row"], r["dataset_key"]): r for r in records}
    assert by[("ABS", "dtd")]["method"] == "abs" and by[("ABS", "dtd")]["settings"]["saliency"] == "uniform"
    assert by[("ABS", "dtd")]["settings"]["abs_sampler"]["crops"] == 3
    assert by[("ABS", "dtd")]["settings"]["abs_sampler"]["pairing"] == "independent"
    assert by[("CuPL", "dtd")]["settings"]["descriptions"] == str(descriptions)

    # the ABS row's accuracy, recomputed with the classifier and the same options
    dataset = create_dataset("folder", data_root / "imagenet")
    backbone = create_backbone(f"openai:{tiny_openai_checkpoint}", pretrained=None, device="cpu")
    opts = MethodOptions(saliency="uniform", clip_d_reference_quirk=True,
                         abs_sampler=AbsSamplerConfig(crops=3, pairing="independent"))
    clf = ZeroShotClassifier(backbone, "abs", dataset.classes, descriptions, options=opts,
                             cache_dir=cache / "text", batch_size=4)
    paths = [p for p, _ in dataset.samples]
    logits = clf.predict(paths, keys=[str(p) for p in paths]).logits
    acc = (logits.argmax(1) == torch.tensor([y for _, y in dataset.samples])).float().mean().item()
    assert ours[("ABS", "imagenet")] == pytest.approx(100 * acc)

    # the Markdown cells against an independent computation
    markdown = (out / "results.md").read_text()
    table = _table_rows(markdown)
    pub_key = {"CuPL": "cupl", "ABS": "raw+feature+soft-match"}
    for col, dataset_key in enumerate(("imagenet", "dtd", "imagenet-v2")):
        for row, key in pub_key.items():
            expected = _cell(ours[(row, dataset_key)], _published_raw("Table 4", dataset_key, key))
            assert table[row][col] == expected
        assert table["CLIP"][col] == f"{ours[('CLIP', dataset_key)]:.2f}"
        assert table["soft-match"][col] == f"n/a ({_published_raw('Table 4', dataset_key, 'soft-match'):.2f})"
    gain = np.mean([ours[("ABS", d)] - ours[("CuPL", d)] for d in ("imagenet", "dtd", "imagenet-v2")])
    assert table["ABS"][3] == _cell(float(gain), _published_raw("Table 4", "avg-gain", "raw+feature+soft-match",
                                                                "top1_gain_vs_cupl"), signed=True)
    assert table["CuPL"][3] == "+0.00"
    assert "Avg. gain over CuPL" in markdown and "row soft-match: not expressible" in markdown

    comparison = json.loads((out / "published_comparison.json").read_text())
    cell = next(c for c in comparison["cells"] if (c["row"], c["dataset"]) == ("ABS", "dtd"))
    assert cell["published"] == 54.26 and cell["source"] == "ABS (ICML 2025) Table 4"
    assert cell["delta"] == pytest.approx(round(round(ours[("ABS", "dtd")], 2) - 54.26, 2))
    assert {s["row"] for s in comparison["skipped"]} == {"soft-match"}

    # a missing dataset folder is reported and skipped, not a crash; --strict makes it an error
    out2 = tmp_path / "out2"
    args = _tiny_args(data_root, tiny_openai_checkpoint, descriptions, out2, cache)
    args += ["--root", f"imagenet-v2={tmp_path / 'absent'}", "--datasets", "imagenet,imagenet-v2"]
    assert _main(monkeypatch, TINY_ABLATION.name, *args) == 0
    table2 = _table_rows((out2 / "results.md").read_text())
    assert table2["ABS"][1].startswith("— (66.19)") and table2["ABS"][2] == "— (+2.98)"
    assert table2["ABS"][0] == table["ABS"][0]  # same numbers from the view cache
    assert "imagenet-v2: missing data" in (out2 / "results.md").read_text()
    assert _main(monkeypatch, TINY_ABLATION.name, *args, "--strict") == 2


def test_tiny_sweep_plot_and_timing(data_root: Path, descriptions: Path, tiny_openai_checkpoint: Path,
                                    tmp_path: Path) -> None:
    from absclip.backbones import create_backbone

    backbone = create_backbone(f"openai:{tiny_openai_checkpoint}", pretrained=None, device="cpu")
    sweep = Preset("tiny-fig4", "Tiny sweep", None, TINY_DATASETS[:1],
                   (*(Row(f"N={n}", "abs", {"abs_sampler.crops": n}, group="(b) number of crops N", x=n)
                      for n in (2, 3)), Row("top-k=2", "abs", {"abs_sampler.top_k": 2}, group="(c) top-k", x=2)),
                   kind="sweep")
    cfg = rr.ReproduceConfig(data_root=data_root, model=f"openai:{tiny_openai_checkpoint}", pretrained=None,
                             output_dir=tmp_path / "sweep", descriptions={"imagenet": descriptions},
                             overrides={"saliency": "uniform", "abs_sampler.crops": 2}, batch_size=3,
                             view_cache=None, text_cache=str(tmp_path / "text"))
    report = rr.run_preset(sweep, cfg, lambda: backbone, log=lambda _: None)
    png = report.paths["plot"]
    assert png == tmp_path / "sweep" / "tiny-fig4.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    panels = rep.sweep_panels(sweep, report.comparison)
    assert [x for x, _ in panels["(b) number of crops N"]["ImageNet"]] == [2.0, 3.0]
    assert "No published comparison" in report.markdown

    timed = Preset("tiny-table9", "Tiny timing", "Table 9", TINY_DATASETS[:1], (Row("CLIP", "clip", published="clip"),),
                   kind="timing", timing=TimingSpec("imagenet", (2, 3), images=3))
    cfg.output_dir = tmp_path / "timing"
    cfg.published_backbone = "ViT-B/16"
    report = rr.run_preset(timed, cfg, lambda: backbone, log=lambda _: None)
    times = report.timing["seconds_per_image"]
    assert set(times) == {"clip", "abs:N=2", "abs:N=3"} and report.timing["images"] == 3
    for stages in times.values():
        assert stages["crop+preprocess"] > 0 and stages["encoding"] > 0
        assert stages["total"] == pytest.approx(stages["crop+preprocess"] + stages["encoding"])
    assert "| Crop+preprocess | " in report.markdown and "(0.0004)" in report.markdown  # CLIP's published time
    assert report.paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "timing" / "timing.json").read_text())["crops"] == [2, 3]


def test_table8_is_laid_out_like_the_paper_for_another_vlm(data_root: Path, descriptions: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``reproduce table8 --model hf:DIR`` on a (tiny) GroupViT: the published GroupViT line is found from the
    directory's model type, and the report has the paper's layout: methods across, one line per dataset."""
    from hf_tiny import save_tiny

    model = save_tiny("groupvit", tmp_path / "groupvit")
    assert pub.published_backbone(f"hf:{model}", None) == "GroupViT"
    assert pub.published_backbone("hf:kakaobrain/align-base", None) == "ALIGN"
    # the real preset on the folder replica (the imagenet loader wants 1000 wnid folders)
    tiny8 = dataclasses.replace(PRESETS["table8"], name="tiny-table8", datasets=TINY_DATASETS[:1])
    monkeypatch.setitem(PRESETS, tiny8.name, tiny8)
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["tiny-table8", "--data-root", data_root, "--model", f"hf:{model}",
            "--descriptions", f"imagenet={descriptions}",
            "--set", "saliency=uniform", "--set", "abs_sampler.crops=2", "--set", "random_crops.crops=2",
            "--output-dir", out, "--cache-dir", cache / "text", "--view-cache", cache / "views", "--batch-size", "2"]
    assert _main(monkeypatch, *args) == 0
    records = {r["row"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert set(records) == {"CLIP", "CLIP-E", "CLIP-D", "Waffle", "CuPL", "WCA", "ABS"}
    lines = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("|")]
    assert lines[0] == "| Base model: GroupViT | CLIP | CLIP-E | CLIP-D | Waffle | CuPL | WCA | ABS |"
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[0] == "ImageNet" and len(lines) == 3
    for label, text in zip(["CLIP", "CLIP-E", "CLIP-D", "Waffle", "CuPL", "WCA", "ABS"], cells[1:], strict=True):
        ours = 100 * records[label]["metrics"]["acc1"]
        assert text == _cell(ours, _published_raw("Table 8", "imagenet", records[label]["method"], backbone="GroupViT"))


def test_dry_run_related_flags_llm_rows_until_an_endpoint_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str],
                                                                   no_model: None) -> None:
    """The related-work preset: FuDD rows are skipped with the fix while no LLM is reachable, ready once one is."""
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "imagenet").mkdir()
    runs = [r for r in _dry(monkeypatch, capsys, "related", tmp_path) if r["dataset"] == "imagenet"]
    status = {r["row"]: (r["status"], r["reason"]) for r in runs}
    assert {row for row, (s, _) in status.items() if s == "missing LLM"} == {"FuDD", "ABS + FuDD"}
    assert "--set llm.endpoint=URL" in status["FuDD"][1]
    assert {r["method"] for r in runs} >= {"zpe", "fudd", "dsel", "perceptionclip", "zero", "awt", "zpe+abs"}
    assert next(r for r in runs if r["row"] == "ABS + description selection")["overrides"] == {"select_descriptions": 5}
    runs = _dry(monkeypatch, capsys, "related", tmp_path, "--set", "llm.endpoint=http://127.0.0.1:9/v1")
    assert not any(r["status"] == "missing LLM" for r in runs)


def test_a_row_of_another_paper_compares_with_that_papers_table(tmp_path: Path) -> None:
    """A related-work row (``Row.table``) takes its published number from its own paper's table, not the
    preset's, and the report names that source."""
    imagenet = PRESETS["table1"].datasets[0]
    preset = Preset("mixed", "ABS rows and one other paper's row", "Table 1", (imagenet,),
                    (Row("CLIP", "clip", published="clip"),
                     Row("ZERO", "zero", published="zero", table="Other (2024) Table 3")))
    other = {"table": "Other (2024) Table 3", "backbone": "ViT-B/16", "dataset": "imagenet", "method": "zero",
             "metric": "top1", "value": 69.31, "source": "Other (2024) Table 3"}
    clip = {"table": "Table 1", "backbone": "ViT-B/16", "dataset": "imagenet", "method": "clip", "metric": "top1",
            "value": 66.74, "source": "ABS (ICML 2025) Table 1"}
    # the same method key under the preset's table must not be picked for the ZERO row
    decoy = {**other, "table": "Table 1", "value": 1.0, "source": "ABS (ICML 2025) Table 1"}
    published = pub.Published([clip, other, decoy])
    (tmp_path / "imagenet").mkdir()
    cfg = planning.ReproduceConfig(data_root=tmp_path, published_backbone="ViT-B/16")
    grid = planning.plan_preset(preset, cfg, published)
    assert {r.row: r.published for r in grid} == {"CLIP": 66.74, "ZERO": 69.31}
    records = [{"row": "CLIP", "dataset_key": "imagenet", "metrics": {"acc1": 0.5}, "n_samples": 4},
               {"row": "ZERO", "dataset_key": "imagenet", "metrics": {"acc1": 0.75}, "n_samples": 4}]
    comparison = rep.build_comparison(preset, cfg, grid, records, published)
    cells = {c["row"]: c for c in comparison["cells"]}
    assert (cells["ZERO"]["published"], cells["ZERO"]["source"]) == (69.31, "Other (2024) Table 3")
    assert cells["ZERO"]["delta"] == pytest.approx(75.0 - 69.31)
    markdown = rep.render_markdown(preset, cfg, comparison, records)
    assert _table_rows(markdown)["ZERO"] == [_cell(75.0, 69.31)]
    assert "Rows of other papers compare with their own tables: Other (2024) Table 3." in markdown
