"""Description files (``{class: [text, ...]}`` as CuPL and CLIP-D publish them), resolved per class index.

Published files have fewer keys than classes, empty lists and names shared by two classes; every such
case is resolved explicitly and listed in a :class:`Resolution` report, never silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputFileError
from .classes import ClassList


@dataclass
class Resolution:
    """How each class got its descriptions."""

    shared: dict[str, list[int]] = field(default_factory=dict)  # one key used by several class indices
    missing: list[int] = field(default_factory=list)  # no key: fallback used
    empty: list[int] = field(default_factory=list)  # key with an empty list: fallback used
    unused_keys: list[str] = field(default_factory=list)  # keys naming no class

    def messages(self, classes: ClassList) -> list[str]:
        out = []
        for name, idx in self.shared.items():
            out.append(f"classes {idx} share the name {name!r}: they all use that entry's descriptions")
        for label, idx in (("no entry", self.missing), ("an empty entry", self.empty)):
            if idx:
                shown = ", ".join(f"{i}:{classes[i]!r}" for i in idx[:8]) + (" ..." if len(idx) > 8 else "")
                out.append(f"{len(idx)} classes have {label} and use the fallback prompt: {shown}")
        if self.unused_keys:
            shown = ", ".join(repr(k) for k in self.unused_keys[:8])
            out.append(f"{len(self.unused_keys)} description keys match no class: {shown}")
        return out


@dataclass
class Descriptions:
    """Per class index, a (possibly empty before fallback) list of texts; ragged by design."""

    texts: list[list[str]]
    resolution: Resolution
    source: str

    def capped(self, limit: int | None) -> list[list[str]]:
        return [t[:limit] if limit else list(t) for t in self.texts]


def read_description_file(path: str | Path) -> dict[str, list[str]] | list[list[str]]:
    """Read ``{class: [text, ...]}`` or a list aligned with the class indices."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"description file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputFileError(f"{path}: not a readable JSON description file ({exc})") from exc
    if isinstance(data, dict):
        for key, value in data.items():
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise InputFileError(f"{path}: entry {key!r} must be a list of strings")
        return data
    if isinstance(data, list) and all(isinstance(v, list) for v in data):
        return data
    raise InputFileError(f"{path}: expected {{class name: [text, ...]}} or a list of lists, one per class")


def resolve_descriptions(
    classes: ClassList,
    data: dict[str, list[str]] | list[list[str]],
    fallback: str = "a photo of a {}.",
    source: str = "<descriptions>",
) -> Descriptions:
    """Match description entries to class indices; fill gaps with ``fallback.format(name)``."""
    res = Resolution()
    if isinstance(data, list):
        if len(data) != len(classes):
            raise InputFileError(
                f"{source}: a list-form description file needs one entry per class "
                f"({len(data)} entries for {len(classes)} classes)"
            )
        entries: list[list[str] | None] = [list(v) for v in data]
    else:
        lookup = {normalize_name(k): v for k, v in data.items()}
        entries = [lookup.get(normalize_name(name)) for name in classes.names]
        used = {normalize_name(n) for n in classes.names}
        res.unused_keys = [k for k in data if normalize_name(k) not in used]
        groups: dict[str, list[int]] = {}  # by normalised name: "Crane" and "crane" share one entry too
        for i, name in enumerate(classes.names):
            groups.setdefault(normalize_name(name), []).append(i)
        for key, idx in groups.items():
            if len(idx) > 1 and lookup.get(key):
                res.shared[classes[idx[0]]] = idx
    texts = []
    for i, entry in enumerate(entries):
        cleaned = [t.strip() for t in entry or [] if t.strip()]
        if entry is None:
            res.missing.append(i)
        elif not cleaned:
            res.empty.append(i)
        texts.append(cleaned or [fallback.format(classes[i])])
    return Descriptions(texts=texts, resolution=res, source=source)


def load_descriptions(classes: ClassList, path: str | Path, fallback: str = "a photo of a {}.") -> Descriptions:
    return resolve_descriptions(classes, read_description_file(path), fallback=fallback, source=str(path))


def normalize_name(name: str) -> str:
    """How class names and description keys are matched: case, underscores and spacing ignored."""
    return " ".join(name.replace("_", " ").split()).lower()
