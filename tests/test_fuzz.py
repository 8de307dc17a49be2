"""Property tests (hypothesis) over everything a user can hand absclip as text: class lists, description
files, crop plans and the CLI's numeric options. The property: any input gives a success that satisfies
the parser's contract, or one of absclip's own errors with a one-line message, never another exception."""

from __future__ import annotations

import contextlib
import io
import json
import math
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from absclip.backbones import Backbone, create_backbone
from absclip.cli import main
from absclip.errors import AbsclipError
from absclip.text import ClassList, Descriptions, load_classes, load_descriptions, resolve_descriptions
from absclip.views import CropPlan, ViewConfig, ViewExtractor, read_plans

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

JSON_SCALARS = (st.none() | st.booleans() | st.integers(-(10**6), 10**20) | st.floats()
                | st.text(max_size=12))
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=25,
)


def outcome(call: Callable[[], Any]) -> Any:
    """``call()``'s result, or None if it raised an AbsclipError with a one-line message (anything else fails)."""
    try:
        return call()
    except AbsclipError as exc:
        message = str(exc)
        assert message and "\n" not in message and "\r" not in message, repr(message)
        return None


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    # module-scoped: hypothesis runs many examples per test, and function-scoped fixtures are not reset
    with tempfile.TemporaryDirectory(prefix="absclip-fuzz-") as name:
        yield Path(name)


# ==== class lists ============================================================================================
def _check_class_list(classes: ClassList | None) -> None:
    if classes is None:
        return
    assert len(classes) >= 2
    assert all(isinstance(n, str) and n == n.strip() and n for n in classes.names)


@FAST
@given(spec=st.text(max_size=60))
def test_class_spec_strings(spec: str) -> None:
    assume(not spec.lstrip().startswith(("/dev", "/proc", "/sys")))  # not a device the test would read
    _check_class_list(outcome(lambda: load_classes(spec)))


@FAST
@given(names=st.lists(st.text(max_size=12), max_size=6))
def test_class_name_lists(names: list[str]) -> None:
    _check_class_list(outcome(lambda: load_classes(names)))


@FAST
@given(content=st.binary(max_size=120) | st.text(max_size=120).map(lambda t: t.encode("utf-8", "surrogatepass")),
       suffix=st.sampled_from([".txt", ".json", ".csv", ".tsv", ".names", ""]))
def test_class_files_of_any_bytes(content: bytes, suffix: str, scratch: Path) -> None:
    path = scratch / f"classes{suffix}"
    path.write_bytes(content)
    _check_class_list(outcome(lambda: load_classes(path)))


@FAST
@given(data=JSON_VALUES)
def test_class_files_of_any_json(data: object, scratch: Path) -> None:
    path = scratch / "classes.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    _check_class_list(outcome(lambda: load_classes(path)))


# ==== descriptions ===========================================================================================
CLASSES = ClassList(("cat", "dog", "Crane", "crane", "sea_lion"))
KEYS = st.sampled_from(["cat", "Cat", "CAT", "dog", "crane", "Crane", "sea lion", "sea_lion", "zebra"]) | st.text(
    max_size=8)
DESCRIPTION_DATA = (
    JSON_VALUES
    | st.dictionaries(KEYS, st.lists(st.text(max_size=10), max_size=4) | JSON_VALUES, max_size=6)
    | st.lists(st.lists(st.text(max_size=10), max_size=3) | JSON_VALUES, min_size=0, max_size=6)
)


def _check_descriptions(desc: Descriptions | None) -> None:
    if desc is None:
        return
    assert len(desc.texts) == len(CLASSES)
    assert all(texts and all(isinstance(t, str) and t.strip() for t in texts) for texts in desc.texts)
    assert all(isinstance(m, str) for m in desc.resolution.messages(CLASSES))


@FAST
@given(data=DESCRIPTION_DATA)
def test_description_files(data: object, scratch: Path) -> None:
    path = scratch / "descriptions.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    _check_descriptions(outcome(lambda: load_descriptions(CLASSES, path)))


@FAST
@given(data=DESCRIPTION_DATA)
def test_description_data_from_python(data: object) -> None:
    _check_descriptions(outcome(lambda: resolve_descriptions(CLASSES, data)))  # type: ignore[arg-type]


@FAST
@given(content=st.binary(max_size=80))
def test_description_files_of_any_bytes(content: bytes, scratch: Path) -> None:
    path = scratch / "raw.json"
    path.write_bytes(content)
    _check_descriptions(outcome(lambda: load_descriptions(CLASSES, path)))


# ==== crop plans =============================================================================================
NUMBERS = st.integers(-3, 60) | JSON_SCALARS
QUADS = st.lists(st.lists(NUMBERS, min_size=0, max_size=5) | JSON_SCALARS, max_size=4) | JSON_SCALARS


@st.composite
def plan_records(draw: st.DrawFn) -> object:
    """Mostly plausible records with some fields replaced by anything, plus arbitrary JSON lines."""
    record: dict[str, object] = {"format": "absclip.plan", "version": 1, "image": "img", "width": 40, "height": 30,
                                 "grid": 4, "seed": 0, "sampler": "abs",
                                 "boxes": [[0, 0, 40, 30], [5, 5, 20, 12]], "windows": [[0, 0, 4, 4], [1, 1, 2, 2]]}
    for key in draw(st.lists(st.sampled_from(sorted(record)), max_size=3, unique=True)):
        if draw(st.booleans()):
            del record[key]
        elif key in ("boxes", "windows"):
            record[key] = draw(QUADS)
        else:
            record[key] = draw(NUMBERS)
    return draw(st.just(record) | JSON_VALUES) if draw(st.integers(0, 4)) == 0 else record


def _check_plans(plans: dict[str, CropPlan] | None) -> None:
    for plan in (plans or {}).values():
        assert plan.boxes and all(len(b) == 4 and all(type(v) is int for v in b) for b in plan.boxes)
        assert all(0 <= x0 < x1 <= plan.width and 0 <= y0 < y1 <= plan.height for x0, y0, x1, y1 in plan.boxes)
        assert not plan.windows or len(plan.windows) == len(plan.boxes)


@FAST
@given(records=st.lists(plan_records(), min_size=1, max_size=3))
def test_plan_files(records: list[object], scratch: Path) -> None:
    path = scratch / "plans.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    _check_plans(outcome(lambda: read_plans(path)))


@FAST
@given(content=st.binary(max_size=120))
def test_plan_files_of_any_bytes(content: bytes, scratch: Path) -> None:
    path = scratch / "raw.jsonl"
    path.write_bytes(content)
    _check_plans(outcome(lambda: read_plans(path)))


@pytest.fixture(scope="module")
def tiny(tiny_open_clip_checkpoint: tuple[str, Path]) -> Backbone:
    name, path = tiny_open_clip_checkpoint
    return create_backbone(f"open_clip:{name}", pretrained=str(path), device="cpu")


@st.composite
def valid_plans(draw: st.DrawFn, width: int, height: int, grid: int) -> CropPlan:
    """A plan that passes every check, with 1 to 4 crops of any size and place."""
    n = draw(st.integers(1, 4))
    boxes, windows = [], []
    for _ in range(n):
        x0, y0 = draw(st.integers(0, width - 1)), draw(st.integers(0, height - 1))
        boxes.append([x0, y0, draw(st.integers(x0 + 1, width)), draw(st.integers(y0 + 1, height))])
        r0, c0 = draw(st.integers(0, grid - 1)), draw(st.integers(0, grid - 1))
        windows.append([r0, c0, draw(st.integers(r0 + 1, grid)), draw(st.integers(c0 + 1, grid))])
    return CropPlan("k", width, height, grid, 0, "abs", boxes, windows)


@SLOW
@given(data=st.data())
def test_valid_plans_of_any_shape_give_views(tiny: Backbone, data: st.DataObject) -> None:
    """Any plans that pass the checks, ragged across the batch, give finite views for every crop."""
    grid = tiny.grid_size
    assert grid is not None
    sizes = data.draw(st.lists(st.tuples(st.integers(1, 40), st.integers(1, 40)), min_size=1, max_size=3))
    rng = np.random.default_rng(0)
    images = [torch.from_numpy(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).permute(2, 0, 1) for w, h in sizes]
    plans = [data.draw(valid_plans(w, h, grid)) for w, h in sizes]
    extractor = ViewExtractor(tiny, ViewConfig(crops="abs", raw=True, feature=True, micro_batch=3, saliency="uniform"))
    grouped = extractor.groups(images, [str(i) for i in range(len(images))], plans)
    assert sorted(i for g in grouped.groups for i in g.indices) == list(range(len(images)))
    for group in grouped.groups:
        n = len(plans[group.indices[0]].boxes)
        for views in (group.views.raw, group.views.feature):
            assert views is not None and views.shape == (len(group.indices), n, tiny.embed_dim)
            assert torch.isfinite(views).all()


# ==== the CLI's numeric options ==============================================================================
INT_OPTIONS = ["--crops", "--cell-top-k", "--random-crops", "--max-descriptions", "--waffle-count", "--micro-batch",
               "--seed", "--feature-layer", "--top-k", "--batch-size"]
FLOAT_OPTIONS = ["--temperature", "--alpha"]
OPTION_VALUES = st.lists(
    st.tuples(st.sampled_from(INT_OPTIONS), st.integers(-(10**12), 10**12).map(str))
    | st.tuples(st.sampled_from(FLOAT_OPTIONS), st.floats().map(repr))
    | st.tuples(st.just("--crop-ratio"), st.tuples(st.floats(), st.floats()).map(lambda p: f"{p[0]!r},{p[1]!r}")),
    max_size=4,
)


@pytest.fixture(scope="module")
def cli_inputs(scratch: Path) -> tuple[Path, Path]:
    image = scratch / "img.png"
    Image.new("RGB", (20, 10), (120, 30, 200)).save(image)
    desc = scratch / "d.json"
    desc.write_text(json.dumps({"a": ["x"], "b": ["y"]}), encoding="utf-8")
    return image, desc


@FAST
@given(options=OPTION_VALUES, method=st.sampled_from(["clip", "waffle", "wca", "mce", "abs"]))
def test_numeric_options_give_one_line(options: list[tuple[str, str]], method: str, cli_inputs: tuple[Path, Path],
                                       scratch: Path) -> None:
    """The model named here is missing, so every run fails; it must fail on the first bad option, or on
    the missing model, as one `absclip: error:` line (an option's own error before any model is looked for)."""
    image, desc = cli_inputs
    args = ["classify", str(image), "--classes", "a,b", "--descriptions", str(desc), "--method", method,
            "--model", f"openai:{scratch / 'missing.pt'}", "--cache-dir", str(scratch), "--saliency", "uniform",
            *(f"{flag}={value}" for flag, value in options)]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(args)
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("absclip: error: "), lines
    if "missing.pt" in lines[0]:  # got as far as the model: then every option was in range
        values = dict(options)
        for flag in ("--crops", "--cell-top-k", "--random-crops", "--waffle-count", "--top-k", "--batch-size"):
            assert flag not in values or int(values[flag]) >= 1
        assert "--max-descriptions" not in values or int(values["--max-descriptions"]) >= 0
        t = float(values.get("--temperature", "0.03"))
        assert math.isfinite(t) and t > 0
