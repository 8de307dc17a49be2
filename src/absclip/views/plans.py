"""Crop plans: the exact crops and windows used for one image, as versioned JSON lines.

Format ``absclip.plan`` version 1, one object per image::

    {"format": "absclip.plan", "version": 1, "image": "<key>", "width": W, "height": H,
     "grid": G, "seed": S, "sampler": "abs" | "random",
     "boxes": [[x0, y0, x1, y1], ...],    # raw-space crops, original pixels, end-exclusive
     "windows": [[r0, c0, r1, c1], ...]}  # feature-space windows on the VLM token grid, end-exclusive

Supplying plans back (``--plans``) reproduces a run crop for crop, or compares with another
implementation.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import InputFileError
from ..io import write_jsonl

PLAN_FORMAT = "absclip.plan"
PLAN_VERSION = 1


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

    def to_json(self) -> dict[str, object]:
        record = asdict(self)
        del record["centres"]
        return {"format": PLAN_FORMAT, "version": PLAN_VERSION, **record}

    @classmethod
    def from_json(cls, data: dict[str, object], where: str = "<plan>") -> CropPlan:
        if data.get("format") != PLAN_FORMAT or data.get("version") != PLAN_VERSION:
            raise InputFileError(f"{where}: not an {PLAN_FORMAT} version {PLAN_VERSION} record")
        try:
            plan = cls(**{k: data[k] for k in ("image", "width", "height", "grid", "seed", "sampler",
                                                 "boxes", "windows")})
        except KeyError as exc:
            raise InputFileError(f"{where}: plan record lacks {exc}") from None
        plan.validate(where)
        return plan

    def validate(self, where: str = "<plan>") -> None:
        for x0, y0, x1, y1 in self.boxes:
            if not (0 <= x0 < x1 <= self.width and 0 <= y0 < y1 <= self.height):
                raise InputFileError(f"{where}: box {[x0, y0, x1, y1]} outside a {self.width}×{self.height} image")
        for r0, c0, r1, c1 in self.windows:
            g = self.grid or 0
            if not (0 <= r0 < r1 <= g and 0 <= c0 < c1 <= g):
                raise InputFileError(f"{where}: window {[r0, c0, r1, c1]} outside a {g}×{g} token grid")


def write_plans(path: str | Path, plans: list[CropPlan]) -> None:
    write_jsonl(path, [p.to_json() for p in plans])


def read_plans(path: str | Path) -> dict[str, CropPlan]:
    """Plans by image key."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"plan file not found: {path}")
    plans = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputFileError(f"{path}:{n}: not valid JSON ({exc})") from exc
        plan = CropPlan.from_json(record, f"{path}:{n}")
        plans[plan.image] = plan
    return plans
