"""Hostile and broken input (issue 14): class lists, description files, crop plans, numeric options and
checkpoints. Each must give one clear error line that names the input and the fix, or be handled,
never a traceback or a silently wrong answer."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from absclip.backbones import Backbone, create_backbone
from absclip.backbones.checkpoints import checkpoint_errors, load_state_dict_file
from absclip.cli import main
from absclip.errors import ConfigError, InputFileError
from absclip.methods import MethodOptions
from absclip.text import ClassList, load_classes, load_descriptions, resolve_descriptions
from absclip.views import CropPlan, ViewConfig, ViewExtractor, read_plans
from absclip.views.extract import GroupedViews


def _run(args: list[object]) -> int:
    return main([str(a) for a in args])


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The run's stderr: notes and warnings, then exactly one ``absclip: error:`` line, nothing else."""
    err = [line for line in capsys.readouterr().err.splitlines()
           if line.strip() and not line.startswith(("absclip: note: ", "absclip: warning: "))]
    assert len(err) == 1, err
    assert err[0].startswith("absclip: error: "), err
    return err[0]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("hostile_images")
    rng = np.random.default_rng(14)
    paths = []
    for i, (w, h) in enumerate([(64, 48), (40, 90), (33, 33), (50, 70), (90, 30)]):
        path = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _model(checkpoint: Path, cache: Path) -> list[object]:
    return ["--model", f"openai:{checkpoint}", "--cache-dir", cache, "--saliency", "uniform"]


# ==== class lists ============================================================================================
def test_a_directory_is_not_a_class(images: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`--classes mydir` used to classify every image as 'mydir (1.000)'."""
    (tmp_path / "mydir").mkdir()
    monkeypatch.chdir(tmp_path)
    for spec in ("mydir", str(tmp_path / "mydir")):
        assert _run(["classify", images[0], "--classes", spec, "--model", f"openai:{tmp_path / 'missing.pt'}"]) == 2
        line = _one_error_line(capsys)
        assert f"--classes {spec}: is a directory" in line


@pytest.mark.parametrize("spec", ["classes.csv", "clases.txt", "labels", "data/classes", "names.json"])
def test_a_missing_class_file_is_not_a_class(spec: str, images: list[Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A mistyped or missing file name is an error, whether or not it has a known extension."""
    with pytest.raises(InputFileError, match=r"class file|no such class file") as info:
        load_classes(spec)
    assert spec in str(info.value)
    assert _run(["classify", images[0], "--classes", spec, "--model", f"openai:{tmp_path / 'missing.pt'}"]) == 2
    assert spec in _one_error_line(capsys)


def test_a_one_line_comma_file_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "classes.txt"
    path.write_text("cat,dog\n", encoding="utf-8")
    with pytest.raises(InputFileError, match="one class name per line") as info:
        load_classes(path)
    assert str(path) in str(info.value) and "--classes 'cat,dog'" in str(info.value)
    # the same names one per line are two classes
    path.write_text("cat\ndog\n", encoding="utf-8")
    assert load_classes(path).names == ("cat", "dog")


@pytest.mark.parametrize("content", ["cat\n", "# one\ncat\n", '["cat"]', '[["cat", "kitty"]]', '{"0": "cat"}'])
def test_fewer_than_two_classes_is_an_error(content: str, tmp_path: Path) -> None:
    path = tmp_path / ("c.json" if content.startswith(("[", "{")) else "c.txt")
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputFileError, match="needs at least 2") as info:
        load_classes(path)
    assert str(path) in str(info.value)


def test_a_one_class_command_line_is_an_error(images: list[Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    for spec in ("cat", "cat,", " , cat"):
        assert _run(["classify", images[0], "--classes", spec, "--model", f"openai:{tmp_path / 'missing.pt'}"]) == 2
        line = _one_error_line(capsys)
        assert "class" in line and "missing.pt" not in line  # refused before the model is looked for


def test_class_files_that_look_like_tables_are_refused(tmp_path: Path) -> None:
    table = tmp_path / "classes.csv"
    table.write_text("0,tench\n1,goldfish\n", encoding="utf-8")
    with pytest.raises(InputFileError, match="several fields"):
        load_classes(table)
    column = tmp_path / "column.csv"
    column.write_text("tench\ngoldfish\n", encoding="utf-8")
    assert load_classes(column).names == ("tench", "goldfish")


def test_long_comma_lists_and_odd_names(tmp_path: Path) -> None:
    # longer than a file name may be: still a comma list, not an OSError from the file system
    names = [f"class number {i}" for i in range(300)]
    assert load_classes(",".join(names)).names == tuple(names)
    with pytest.raises(InputFileError, match="control characters"):
        load_classes(["cat", "dog\tfish"])
    odd = tmp_path / "odd.json"
    odd.write_text('{"0": "cat", "00": ["dog"]}', encoding="utf-8")  # two keys for index 0
    with pytest.raises(InputFileError, match="without gaps"):
        load_classes(odd)


def test_duplicate_class_names_without_descriptions_are_reported() -> None:
    """Same-named classes with no descriptions have identical text embeddings, so identical scores."""
    classes = load_classes("crane,cat,Crane,dog")
    messages = classes.messages()
    assert len(messages) == 1 and "[0, 2]" in messages[0] and "identical" in messages[0]
    assert load_classes("cat,dog").messages() == []
    # with descriptions that leave them on the same fallback prompt, the resolution says it too
    res = resolve_descriptions(classes, {"cat": ["whiskers"]}).resolution
    assert res.identical == {"crane": [0, 2]}
    assert any("identical" in m and "[0, 2]" in m for m in res.messages(classes))


# ==== descriptions ===========================================================================================
def test_keys_differing_in_case_are_merged_and_reported() -> None:
    """`Lighthouse` and `lighthouse` used to drop one entry silently."""
    classes = ClassList(("lighthouse", "cat"))
    desc = resolve_descriptions(classes, {"Lighthouse": ["tall tower"], "LIGHTHOUSE": ["a lamp", "tall tower"],
                                          "cat": ["whiskers"]})
    assert desc.texts[0] == ["tall tower", "a lamp"]  # both entries, file order, no repeat
    assert desc.resolution.merged == {0: ["Lighthouse", "LIGHTHOUSE"]}
    text = "\n".join(desc.resolution.messages(classes))
    assert "'Lighthouse'" in text and "'LIGHTHOUSE'" in text and "merged" in text


def test_an_exact_key_wins_and_the_other_is_reported() -> None:
    classes = ClassList(("lighthouse", "cat"))
    desc = resolve_descriptions(classes, {"Lighthouse": ["tall tower"], "lighthouse": ["a lamp"], "cat": ["x"]})
    assert desc.texts[0] == ["a lamp"]
    assert desc.resolution.shadowed == {"Lighthouse": "lighthouse"}
    assert any("'Lighthouse' is not used" in m for m in desc.resolution.messages(classes))
    # two classes whose names differ only in case each keep their own exact entry
    both = ClassList(("Crane", "crane"))
    desc = resolve_descriptions(both, {"Crane": ["a bird"], "crane": ["a machine"]})
    assert desc.texts == [["a bird"], ["a machine"]] and desc.resolution.shared == {}


@pytest.mark.parametrize("content", [
    [["a"], [1, 2]], [["a"], None], [["a"], [["nested"]]], [["a"], [None]], [["a"], "text"], [1, 2],
    {"cat": [1]}, {"cat": None}, {"cat": [["x"]]}, "text", 3, None,
])
def test_malformed_description_files_are_one_line(content: object, tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(InputFileError) as info:
        load_descriptions(ClassList(("cat", "dog")), path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_duplicate_json_keys_are_an_error(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text('{"cat": ["whiskers"], "dog": ["barks"], "cat": ["purrs"]}', encoding="utf-8")
    with pytest.raises(InputFileError, match="'cat' appears twice"):
        load_descriptions(ClassList(("cat", "dog")), path)


# ==== crop plans =============================================================================================
def _record(**changes: object) -> dict[str, object]:
    record = CropPlan("k", 100, 50, 4, 0, "abs", [[0, 0, 100, 50], [10, 5, 20, 6]],
                      [[0, 0, 4, 4], [1, 1, 2, 2]]).to_json()
    record.update(changes)
    return record


@pytest.mark.parametrize(("line", "needle"), [
    (_record(boxes=[[0, 0, 10], [0, 0, 1, 1]]), "box 0 must be 4 integers"),
    (_record(boxes=[["0", "0", "10", "10"], [0, 0, 1, 1]]), "box 0 must be 4 integers"),
    (_record(boxes=[[0.0, 0.0, 10.0, 10.0], [0, 0, 1, 1]]), "box 0 must be 4 integers"),
    (_record(boxes=[[0, 0, 10, 10], [0.5, 0, 1, 1]]), "box 1 must be 4 integers"),
    (_record(boxes=[[0, 0, 10, 10], [True, 0, 1, 1]]), "box 1 must be 4 integers"),
    (_record(boxes=None), "'boxes' must be a list"),
    (_record(boxes=[], windows=[]), "'boxes' is empty"),
    (_record(boxes=[[], [0, 0, 1, 1]]), "box 0 must be 4 integers"),
    (_record(windows=[[0, 0, 1, 1]]), "1 windows for 2 boxes"),
    (_record(windows=[[0, 0, 1.0, 1], [0, 0, 1, 1]]), "window 0 must be 4 integers"),
    (_record(width=0), "'width' must be a positive integer"),
    (_record(height="50"), "'height' must be a positive integer"),
    (_record(width=100.0), "'width' must be a positive integer"),
    (_record(grid=0), "'grid' must be null or a positive integer"),
    (_record(grid=None), "windows need a token grid"),
    (_record(image=7), "'image' must be a non-empty string"),
    (_record(seed="0"), "'seed' must be an integer"),
    ([_record()], "must be a JSON object"),
    ("just text", "must be a JSON object"),
])
def test_malformed_plan_records_name_file_and_line(line: object, needle: str, tmp_path: Path) -> None:
    path = tmp_path / "plans.jsonl"
    path.write_text(json.dumps(_record(image="good")) + "\n" + json.dumps(line) + "\n", encoding="utf-8")
    with pytest.raises(InputFileError, match=needle) as info:
        read_plans(path)
    assert str(info.value).startswith(f"{path}:2: ") and "\n" not in str(info.value)


def test_two_plans_for_one_image_are_an_error(tmp_path: Path) -> None:
    path = tmp_path / "plans.jsonl"
    path.write_text(json.dumps(_record()) + "\n" + json.dumps(_record()) + "\n", encoding="utf-8")
    with pytest.raises(InputFileError, match=r"plans.jsonl:2: a second plan for image 'k' \(the first is at .*:1\)"):
        read_plans(path)


def test_undecodable_plan_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "plans.jsonl"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InputFileError, match="cannot read the plan file"):
        read_plans(path)


@pytest.fixture(scope="module")
def tiny_plans(images: list[Path], tiny_openai_checkpoint: Path,
               tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, object]]:
    """ABS plan records (4 crops) for every image, made by `absclip plan` with the tiny model (grid 4)."""
    tmp = tmp_path_factory.mktemp("tiny_plans")
    path = tmp / "plans.jsonl"
    assert _run(["plan", *images, "--output", path, "--method", "abs", "--crops", "4",
                 *_model(tiny_openai_checkpoint, tmp)]) == 0
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [r["grid"] for r in records] == [4] * len(images)
    return records


def _classify_with(plans: list[dict[str, object]], images: list[Path], checkpoint: Path, tmp_path: Path,
                   *extra: object) -> int:
    path = tmp_path / "edited.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in plans), encoding="utf-8")
    return _run(["classify", *images, "--classes", "cat,dog,bird", "--plans", path, "--method", "abs",
                 "--descriptions", tmp_path / "d.json", *_model(checkpoint, tmp_path), *extra])


@pytest.mark.parametrize(("change", "needle"), [
    ({"grid": 2, "windows": [[0, 0, 2, 2]] * 4}, "2×2 token grid, but the model's grid is 4×4"),
    ({"grid": 100, "windows": [[0, 0, 100, 100]] * 4}, "100×100 token grid, but the model's grid is 4×4"),
    ({"width": 65}, "is for a 65×48 image, the image is 64×48"),
    ({"windows": []}, "0 windows for 4 boxes"),
])
def test_plans_that_do_not_fit_the_model_or_image(change: dict[str, object], needle: str, images: list[Path],
                                                  tiny_plans: list[dict[str, object]], tiny_openai_checkpoint: Path,
                                                  tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A plan for a 2×2 or 100×100 grid used to run silently (or crash) on the tiny model's 4×4 grid."""
    (tmp_path / "d.json").write_text(json.dumps({"cat": ["whiskers"]}), encoding="utf-8")
    edited = [dict(tiny_plans[0], **change)]
    assert _classify_with(edited, images[:1], tiny_openai_checkpoint, tmp_path) == 2
    line = _one_error_line(capsys)
    assert needle in line and f"{tmp_path / 'edited.jsonl'}:1: " in line


def test_raw_only_views_ignore_the_grid(images: list[Path], tiny_plans: list[dict[str, object]],
                                        tiny_openai_checkpoint: Path, tmp_path: Path) -> None:
    """Boxes are in pixels: with --no-feature a plan from another model's grid is still exact."""
    (tmp_path / "d.json").write_text(json.dumps({"cat": ["whiskers"]}), encoding="utf-8")
    edited = [dict(tiny_plans[0], grid=7, windows=[[0, 0, 7, 7]] * 4)]
    assert _classify_with(edited, images[:1], tiny_openai_checkpoint, tmp_path, "--no-feature") == 0


def _ragged(tiny_plans: list[dict[str, object]], counts: list[int]) -> list[dict[str, object]]:
    """The plans cut to ``counts`` crops each."""
    return [dict(p, boxes=p["boxes"][:n], windows=p["windows"][:n])  # type: ignore[index]
            for p, n in zip(tiny_plans, counts, strict=True)]


@pytest.mark.parametrize("method", ["abs", "mce", "wca"])
def test_different_crop_counts_in_one_batch(method: str, images: list[Path], tiny_plans: list[dict[str, object]],
                                            tiny_openai_checkpoint: Path, tmp_path: Path) -> None:
    """Supplied plans may give each image its own crop count: --batch-size 4 scores each image exactly as
    --batch-size 1 does (a batch of [4, 2, 4, 3] crops, then one of [1])."""
    desc = tmp_path / "d.json"
    desc.write_text(json.dumps({"cat": ["whiskers", "a pet"], "dog": ["barks"], "bird": ["feathers"]}))
    plans = tmp_path / "ragged.jsonl"
    supplied = _ragged(tiny_plans, [4, 2, 4, 3, 1])
    plans.write_text("".join(json.dumps(p) + "\n" for p in supplied), encoding="utf-8")
    scores = []
    for batch in (4, 1):
        out = tmp_path / f"out{batch}.jsonl"
        saved = tmp_path / f"saved{batch}.jsonl"
        assert _run(["classify", *images, "--classes", "cat,dog,bird", "--descriptions", desc, "--method", method,
                     "--plans", plans, "--save-plans", saved, "--top-k", "3", "--output", out,
                     "--batch-size", batch, *_model(tiny_openai_checkpoint, tmp_path)]) == 0
        records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        assert [r["path"] for r in records] == [str(p) for p in images]
        scores.append(torch.tensor([[t["score"] for t in sorted(r["top_k"], key=lambda t: t["index"])]
                                    for r in records]))
        # the plans used are the ones supplied, in image order
        assert [p.boxes for p in read_plans(saved).values()] == [p["boxes"] for p in supplied]
    torch.testing.assert_close(scores[0], scores[1], atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def tiny_openai(tiny_openai_checkpoint: Path) -> Backbone:
    return create_backbone(f"openai:{tiny_openai_checkpoint}", device="cpu")


def test_grouped_views_equal_each_image_alone(tiny_openai: Backbone, images: list[Path],
                                              tiny_plans: list[dict[str, object]]) -> None:
    """ViewExtractor.groups: views of a ragged batch, per group of equal crop count, equal to each image's
    views extracted on its own; assemble() puts per-group rows back in batch order."""
    from absclip.classifier import to_uint8_tensor

    bb = tiny_openai
    plans = [CropPlan.from_json(p) for p in _ragged(tiny_plans, [4, 2, 4, 3, 1])]
    tensors = [to_uint8_tensor(p) for p in images]
    keys = [str(p) for p in images]
    extractor = ViewExtractor(bb, ViewConfig(crops="abs", raw=True, feature=True, micro_batch=3, saliency="uniform"))
    grouped = extractor.groups(tensors, keys, plans)
    assert isinstance(grouped, GroupedViews)
    assert [g.indices for g in grouped.groups] == [[0, 2], [1], [3], [4]]
    assert grouped.plans == plans
    for group in grouped.groups:
        for row, i in enumerate(group.indices):
            alone, _ = extractor(tensors[i : i + 1], keys[i : i + 1], plans[i : i + 1])
            for ours, theirs in ((group.views.full, alone.full), (group.views.raw, alone.raw),
                                 (group.views.feature, alone.feature)):
                assert ours is not None and theirs is not None
                torch.testing.assert_close(ours[row], theirs[0], atol=1e-5, rtol=0)
    rows = grouped.assemble([g.views.full for g in grouped.groups])
    whole = extractor.groups(tensors, keys, [CropPlan.from_json(p) for p in _ragged(tiny_plans, [4] * 5)])
    torch.testing.assert_close(rows, whole.groups[0].views.full, atol=1e-5, rtol=0)
    # a single ViewSet cannot hold ragged views: the error says what to use
    with pytest.raises(InputFileError, match=r"\[1, 2, 3, 4\] crops per image.*groups\(\)"):
        extractor(tensors, keys, plans)


def test_plans_built_in_python_are_checked_too(tiny_openai: Backbone, images: list[Path]) -> None:
    from absclip.classifier import to_uint8_tensor

    image = to_uint8_tensor(images[0])  # 64×48
    extractor = ViewExtractor(tiny_openai, ViewConfig(crops="abs", raw=True, feature=True, saliency="uniform"))
    floats = CropPlan("a", 64, 48, 4, 0, "abs", [[0.0, 0.0, 10.0, 10.0]], [[0, 0, 1, 1]])  # type: ignore[list-item]
    with pytest.raises(InputFileError, match="plan for a: box 0 must be 4 integers"):
        extractor([image], ["a"], [floats])
    with pytest.raises(InputFileError, match="1 crop plans for 2 images"):
        extractor([image, image], ["a", "b"], [CropPlan("a", 64, 48, 4, 0, "abs", [[0, 0, 9, 9]], [[0, 0, 1, 1]])])


# ==== numeric options ========================================================================================
@pytest.mark.parametrize(("option", "needle"), [
    (["--temperature", "0"], "temperature must be a positive number"),
    (["--temperature", "-1"], "temperature must be a positive number"),
    (["--temperature=nan"], "temperature must be a positive number"),
    (["--temperature=inf"], "temperature must be a positive number"),
    (["--alpha", "5", "--method", "wca"], "--alpha must be in (0, 0.9]"),
    (["--alpha=nan", "--method", "wca"], "--alpha must be in (0, 0.9]"),
    (["--cell-top-k", "0"], "--cell-top-k must be at least 1, got 0"),
    (["--crops", "0"], "at least one crop per image"),
    (["--random-crops", "0", "--method", "wca"], "at least one crop per image"),
    (["--max-descriptions", "-3"], "--max-descriptions must be at least 0"),
    (["--waffle-count", "0", "--method", "waffle"], "--waffle-count must be at least 1"),
    (["--crop-ratio", "0.9,0.6"], "--crop-ratio needs 0 < r1 <= r2 <= 1"),
])
def test_bad_numbers_fail_before_any_model_loads(option: list[str], needle: str, images: list[Path],
                                                 tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The model named here does not exist: the option's error must come first, as one line."""
    desc = tmp_path / "d.json"
    desc.write_text(json.dumps({"cat": ["whiskers"]}))
    args = ["classify", images[0], "--classes", "cat,dog", "--descriptions", desc, "--method", "abs",
            "--model", f"openai:{tmp_path / 'missing.pt'}", "--cache-dir", tmp_path, *option]
    assert _run(args) == 2
    assert needle in _one_error_line(capsys)


def test_temperature_zero_never_reaches_the_scores() -> None:
    """--temperature 0 used to give NaN scores; the library refuses it as well."""
    for bad in (0, -1.0, float("nan"), float("inf"), "0.03", True):
        with pytest.raises(ConfigError, match="temperature"):
            MethodOptions(temperature=bad)  # type: ignore[arg-type]
    for name, bad in (("max_descriptions", 0), ("max_descriptions", -3), ("wca_max_descriptions", 0),
                      ("waffle_count", 0), ("micro_batch", 0), ("feature_layer", 1.5), ("seed", "1")):
        with pytest.raises(ConfigError, match=name):
            MethodOptions(**{name: bad})  # type: ignore[arg-type]
    MethodOptions(temperature=np.float32(0.05), max_descriptions=np.int64(3))  # numpy numbers are numbers


def test_feature_layer_out_of_range_is_one_line(images: list[Path], tiny_openai_checkpoint: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """It can only be checked against the model's blocks; it used to end in a ValueError traceback."""
    desc = tmp_path / "d.json"
    desc.write_text(json.dumps({"cat": ["whiskers"]}))
    assert _run(["classify", images[0], "--classes", "cat,dog", "--descriptions", desc, "--method", "abs",
                 "--feature-layer", "99", *_model(tiny_openai_checkpoint, tmp_path)]) == 2
    line = _one_error_line(capsys)
    assert "feature layer 99 out of range" in line and "--feature-layer 0..1" in line


# ==== checkpoints ============================================================================================
class _Payload:
    """Unpickling this creates ``marker``: proof of whether a loader ran the file's code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.marker,))


def _code_refusal(message: str) -> None:
    assert "contains code" in message and "--trust-checkpoint is for trusted sources only" in message
    assert "weights_only=False" not in message and "\n" not in message and "\x1b" not in message


def test_pickle_renamed_safetensors_is_one_line(images: list[Path], tiny_openai_checkpoint: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "ran"
    evil = tmp_path / "weights.safetensors"
    torch.save({"w": torch.zeros(2), "x": _Payload(marker)}, evil)
    assert _run(["classify", images[0], "--classes", "a,b", "--model", f"openai:{evil}"]) == 2
    line = _one_error_line(capsys)
    _code_refusal(line)
    assert f"{evil}: named .safetensors but is a PyTorch pickle" in line
    assert not marker.exists()
    # a benign state dict with a wrong name is read as what it is, weights-only
    renamed = tmp_path / "renamed.safetensors"
    shutil.copy(tiny_openai_checkpoint, renamed)
    assert set(load_state_dict_file(renamed)) == set(torch.load(tiny_openai_checkpoint, weights_only=True))
    # and a file that is neither says so
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10" * 64)
    with pytest.raises(InputFileError, match="not a valid safetensors file"):
        load_state_dict_file(junk)


def test_pickle_with_code_via_the_cli_is_one_line(images: list[Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "x": _Payload(marker)}, evil)
    assert _run(["classify", images[0], "--classes", "a,b", "--model", f"openai:{evil}"]) == 2
    _code_refusal(_one_error_line(capsys))
    assert not marker.exists()


def test_trust_checkpoint_loads_a_trusted_pickle(tiny_openai_checkpoint: Path, tmp_path: Path) -> None:
    """The refusal's advice works: --trust-checkpoint loads a pickle holding more than tensors."""
    state = torch.load(tiny_openai_checkpoint, weights_only=True)
    path = tmp_path / "with_args.pt"
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(InputFileError, match="contains code"):
        load_state_dict_file(path)
    assert set(load_state_dict_file(path, trust_checkpoint=True)) == set(state)


def _evil_folder(source: Path, target: Path, marker: Path) -> Path:
    """A transformers folder whose weights are a pickle with a payload instead of safetensors."""
    shutil.copytree(source, target)
    for weights in target.glob("*.safetensors"):
        weights.unlink()
    torch.save({"w": torch.zeros(2), "x": _Payload(marker)}, target / "pytorch_model.bin")
    return target


def test_code_in_transformers_weights_is_one_line(tiny_hf_dir: Path, tmp_path: Path) -> None:
    """checkpoint_errors: transformers' own loader, refusing the pickle, becomes one line naming the file."""
    from transformers import CLIPModel

    marker = tmp_path / "ran"
    folder = _evil_folder(tiny_hf_dir, tmp_path / "evil_hf", marker)
    with pytest.raises(InputFileError) as info, checkpoint_errors(folder):
        CLIPModel.from_pretrained(str(folder))
    _code_refusal(str(info.value))
    assert str(folder / "pytorch_model.bin") in str(info.value)
    assert not marker.exists()
    (folder / "pytorch_model.bin").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(InputFileError, match="corrupt or truncated"), checkpoint_errors(folder):
        CLIPModel.from_pretrained(str(folder))
    with pytest.raises(KeyError), checkpoint_errors(folder):  # anything else passes through unchanged
        raise KeyError("unrelated")


def test_code_in_an_hf_model_folder_via_the_cli(tiny_hf_dir: Path, images: list[Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "ran"
    folder = _evil_folder(tiny_hf_dir, tmp_path / "evil_hf", marker)
    assert _run(["classify", images[0], "--classes", "a,b", "--model", f"hf:{folder}"]) == 2
    _code_refusal(_one_error_line(capsys))
    assert not marker.exists()


def test_code_in_a_dino_folder_via_the_cli(images: list[Path], tiny_openai_checkpoint: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from transformers import ViTConfig, ViTModel

    clean = tmp_path / "dino"
    ViTModel(ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                       image_size=32, patch_size=8), add_pooling_layer=False).save_pretrained(clean)
    marker = tmp_path / "ran"
    folder = _evil_folder(clean, tmp_path / "evil_dino", marker)
    desc = tmp_path / "d.json"
    desc.write_text(json.dumps({"a": ["x"]}))
    assert _run(["classify", images[0], "--classes", "a,b", "--descriptions", desc, "--method", "abs",
                 "--model", f"openai:{tiny_openai_checkpoint}", "--cache-dir", tmp_path,
                 "--saliency", f"dino:{folder}"]) == 2
    _code_refusal(_one_error_line(capsys))
    assert not marker.exists()


# ==== checkpoints that do not fit their model: never a silently random model (issue 9) ======================
def _edited_state(source: Path, target: Path, drop: str | None = None, extra: bool = False) -> Path:
    """A copy of a state-dict file with one weight deleted and/or one stray weight added, in the same format."""
    if source.suffix == ".safetensors":
        from safetensors.torch import load_file, save_file

        state = load_file(str(source))
    else:
        state = torch.load(source, weights_only=True)
    if drop is not None:
        del state[drop]
    if extra:
        state["visual.stray.weight"] = torch.zeros(3)
    if target.suffix == ".safetensors":
        save_file(state, str(target))
    else:
        torch.save(state, target)
    return target


@pytest.mark.parametrize("edit", ["drop", "extra"])
def test_open_clip_file_that_does_not_fit_is_one_line(edit: str, tiny_open_clip_checkpoint: tuple[str, Path],
                                                      tmp_path: Path) -> None:
    name, path = tiny_open_clip_checkpoint
    target = _edited_state(path, tmp_path / "edited.safetensors", drop="visual.ln_post.weight" if edit == "drop"
                           else None, extra=edit == "extra")
    with pytest.raises(InputFileError) as err:
        create_backbone(f"open_clip:{name}", pretrained=str(target), device="cpu")
    line = str(err.value)
    assert "\n" not in line and str(target) in line and name in line
    assert ("missing visual.ln_post.weight" if edit == "drop" else "unexpected visual.stray.weight") in line


@pytest.mark.parametrize("drop, extra", [("visual.ln_post.weight", False), ("text_projection", False),
                                         (None, True)])
def test_openai_file_that_does_not_fit_is_one_line(drop: str | None, extra: bool, tiny_openai_checkpoint: Path,
                                                   images: list[Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A deleted weight (one the architecture is read from, or one loaded strictly) or a stray one: the file,
    the model kind and the key, in one line; never a model with a random part."""
    target = _edited_state(tiny_openai_checkpoint, tmp_path / "edited.pt", drop=drop, extra=extra)
    with pytest.raises(InputFileError) as err:
        create_backbone(f"openai:{target}", pretrained=None, device="cpu")
    line = str(err.value)
    assert "\n" not in line and str(target) in line and "OpenAI CLIP" in line
    assert (drop or "visual.stray.weight") in line
    assert _run(["classify", images[0], "--classes", "a,b", "--model", f"openai:{target}"]) == 2
    assert (drop or "visual.stray.weight") in _one_error_line(capsys)


def test_hf_folder_with_a_deleted_weight_via_the_cli(tiny_hf_dir: Path, images: list[Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "hf_partial"
    shutil.copytree(tiny_hf_dir, folder)
    state = load_file(str(folder / "model.safetensors"))
    del state["visual_projection.weight"]
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    assert _run(["classify", images[0], "--classes", "a,b", "--model", f"hf:{folder}"]) == 2
    line = _one_error_line(capsys)
    assert str(folder) in line and "'clip'" in line and "1 missing (first: visual_projection.weight)" in line
