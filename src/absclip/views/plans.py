"""Crop plans: the exact crops and windows used for one image, as versioned JSON lines.

Format ``absclip.plan`` version 1, one object per image::

    {"format": "absclip.plan", "version": 1, "image": "<key>", "width": W, "height": H,
     "grid": G, "seed": S, "sampler": "abs" | "random",
     "boxes": [[x0, y0, x1, y1], ...],    # raw-space crops, original pixels, end-exclusive
     "windows": [[r0, c0, r1, c1], ...]}  # feature-space windows on the VLM token grid, end-exclusive

Every number is a JSON integer (``10.0`` is refused: a plan is exact or it is wrong). ``width`` and
``height`` are at least 1; ``grid`` is null (no token grid) or at least 1; ``boxes`` holds at least one
box; ``windows`` is empty or holds one window per box; each image has one record. Whether a plan fits
an image and a model (its size, its grid) is checked where they meet (``ViewExtractor.prepare``), with
the file and line this module records.

Supplying plans back (``--plans``) reproduces a run crop for crop, or compares with another
implementation. Images in one batch may have different numbers of crops.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import InputFileError
from ..io import write_jsonl

PLAN_FORMAT = "absclip.plan"
PLAN_VERSION = 1
_FIELDS = ("image", "width", "height", "grid", "seed", "sampler", "boxes", "windows")


@dataclass
class CropPlan:
    image: str
    width: int
    height: int
    grid: int | None
    seed: int
    sampler: str
    boxes: list[list[int]] = field(default_factory=list)
    windows: list[list[int]] = field(default_factory=list)
    # the sampled crop centres (x, y) before the boxes were clipped, for drawing (`absclip visualize`);
    # not part of the file format, so a plan read back has none
    centres: list[list[float]] | None = field(default=None, compare=False, repr=False)
    # "file:line" a plan was read from, so errors found later (wrong image size, wrong grid) name it
    source: str | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, object]:
        record = asdict(self)
        del record["centres"], record["source"]
        return {"format": PLAN_FORMAT, "version": PLAN_VERSION, **record}

    @classmethod
    def from_json(cls, data: object, where: str = "<plan>") -> CropPlan:
        if not isinstance(data, dict):
            raise InputFileError(f"{where}: a plan record must be a JSON object, got {_kind(data)}")
        if data.get("format") != PLAN_FORMAT or data.get("version") != PLAN_VERSION:
            raise InputFileError(f"{where}: not an {PLAN_FORMAT} version {PLAN_VERSION} record")
        missing = [k for k in _FIELDS if k not in data]
        if missing:
            raise InputFileError(f"{where}: plan record lacks {missing[0]!r}")
        plan = cls(**{k: data[k] for k in _FIELDS}, source=where)
        plan.validate(where)
        return plan

    @property
    def where(self) -> str:
        """How messages name this plan: its file and line when it was read from one."""
        return self.source or f"plan for {self.image}"

    def validate(self, where: str | None = None) -> None:
        """Types and ranges of every field (see the module docstring); an error names ``where``."""
        where = where or self.where
        if not isinstance(self.image, str) or not self.image:
            raise InputFileError(f"{where}: 'image' must be a non-empty string (the image key)")
        for name in ("width", "height"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise InputFileError(f"{where}: {name!r} must be a positive integer, got {_shown(value)}")
        if self.grid is not None and (not _is_int(self.grid) or self.grid < 1):
            raise InputFileError(f"{where}: 'grid' must be null or a positive integer, got {_shown(self.grid)}")
        if not _is_int(self.seed):
            raise InputFileError(f"{where}: 'seed' must be an integer, got {_shown(self.seed)}")
        if not isinstance(self.sampler, str):
            raise InputFileError(f"{where}: 'sampler' must be a string, got {_shown(self.sampler)}")
        _check_quads(self.boxes, "boxes", "box", where)
        _check_quads(self.windows, "windows", "window", where)
        if not self.boxes:
            raise InputFileError(f"{where}: 'boxes' is empty; a plan needs at least one crop")
        if self.windows and len(self.windows) != len(self.boxes):
            raise InputFileError(f"{where}: {len(self.windows)} windows for {len(self.boxes)} boxes; feature "
                                 "windows pair one to one with boxes (or leave 'windows' empty)")
        for x0, y0, x1, y1 in self.boxes:
            if not (0 <= x0 < x1 <= self.width and 0 <= y0 < y1 <= self.height):
                raise InputFileError(f"{where}: box {[x0, y0, x1, y1]} outside a {self.width}×{self.height} image")
        if self.windows and self.grid is None:
            raise InputFileError(f"{where}: windows need a token grid, but 'grid' is null")
        for r0, c0, r1, c1 in self.windows:
            g = self.grid or 0
            if not (0 <= r0 < r1 <= g and 0 <= c0 < c1 <= g):
                raise InputFileError(f"{where}: window {[r0, c0, r1, c1]} outside a {g}×{g} token grid")


def _is_int(value: object) -> bool:
    # bool is an int subclass, and JSON true would otherwise pass as 1
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: object) -> str:
    names = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a string",
             dict: "an object", list: "a list"}
    return names.get(type(value), type(value).__name__)


def _shown(value: object) -> str:
    """A value for a message: short, on one line."""
    text = json.dumps(value) if isinstance(value, (int, float, str, bool, type(None))) else _kind(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_quads(value: object, field_name: str, item: str, where: str) -> None:
    """``value`` is a list of [a, b, c, d] integer lists."""
    if not isinstance(value, list):
        raise InputFileError(f"{where}: {field_name!r} must be a list of [4 integers], got {_kind(value)}")
    for i, quad in enumerate(value):
        if not isinstance(quad, list) or len(quad) != 4 or not all(_is_int(v) for v in quad):
            got = (f"{len(quad)} values" if isinstance(quad, list) and len(quad) != 4
                   else _shown(quad) if not isinstance(quad, list) else
                   ", ".join(_shown(v) for v in quad))
            raise InputFileError(f"{where}: {item} {i} must be 4 integers [{_order(item)}], got {got}")


def _order(item: str) -> str:
    return "x0, y0, x1, y1" if item == "box" else "r0, c0, r1, c1"


def write_plans(path: str | Path, plans: list[CropPlan]) -> None:
    write_jsonl(path, [p.to_json() for p in plans])


def read_plans(path: str | Path) -> dict[str, CropPlan]:
    """Plans by image key."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"plan file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"{path}: cannot read the plan file ({exc})") from exc
    plans: dict[str, CropPlan] = {}
    # split on "\n" only: keys written with ensure_ascii=False may hold U+2028 and other characters that
    # str.splitlines() would also break at
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise InputFileError(f"{path}:{n}: not valid JSON ({exc})") from exc
        plan = CropPlan.from_json(record, f"{path}:{n}")
        if plan.image in plans:
            raise InputFileError(f"{path}:{n}: a second plan for image {plan.image!r} (the first is at "
                                 f"{plans[plan.image].source}); each image has one plan")
        plans[plan.image] = plan
    return plans
