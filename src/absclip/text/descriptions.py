"""Description files (``{class: [text, ...]}`` as CuPL and CLIP-D publish them), resolved per class index.

Published files have fewer keys than classes, empty lists and names shared by two classes; every such
case is resolved explicitly and listed in a :class:`Resolution` report, never silently.

Keys match class names exactly first, then after :func:`normalize_name` (case, underscores and spacing
ignored). When several keys normalise to one name (``Lighthouse`` and ``lighthouse``) and none is the
class's exact name, their entries are merged in file order, so no description is dropped; a key that
loses to an exact match is reported as unused. Both are listed in the report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputFileError
from .classes import ClassList, shown


@dataclass
class Resolution:
    """How each class got its descriptions."""

    shared: dict[str, list[int]] = field(default_factory=dict)  # one entry used by several class indices
    missing: list[int] = field(default_factory=list)  # no key: fallback used
    empty: list[int] = field(default_factory=list)  # key with an empty list: fallback used
    unused_keys: list[str] = field(default_factory=list)  # keys naming no class
    merged: dict[int, list[str]] = field(default_factory=dict)  # class index -> keys whose entries were joined
    shadowed: dict[str, str] = field(default_factory=dict)  # unused key -> the exact key used instead
    identical: dict[str, list[int]] = field(default_factory=dict)  # same-named classes left on one fallback

    def messages(self, classes: ClassList) -> list[str]:
        out = []
        for name, idx in self.shared.items():
            out.append(f"classes {idx} share the name {name!r}: they all use that entry's descriptions")
        for name, idx in self.identical.items():
            out.append(f"classes {idx} share the name {name!r} and have no descriptions to tell them apart: "
                       "their scores are identical")
        for i, keys in self.merged.items():
            out.append(f"keys {', '.join(repr(k) for k in keys)} all name class {i}:{classes[i]!r}: "
                       "their descriptions were merged")
        for key, used in self.shadowed.items():
            out.append(f"key {key!r} is not used: {used!r} matches its class exactly")
        for label, idx in (("no entry", self.missing), ("an empty entry", self.empty)):
            if idx:
                shown_ = ", ".join(f"{i}:{classes[i]!r}" for i in idx[:8]) + (" ..." if len(idx) > 8 else "")
                out.append(f"{len(idx)} classes have {label} and use the fallback prompt: {shown_}")
        if self.unused_keys:
            listed = ", ".join(repr(k) for k in self.unused_keys[:8])
            out.append(f"{len(self.unused_keys)} description keys match no class: {listed}")
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
        raise InputFileError(f"description file not found: {shown(path)}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise InputFileError(f"{shown(path)}: key {exc.key!r} appears twice; JSON keeps only the last, so merge "
                             "the two lists") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InputFileError(f"{shown(path)}: not a readable JSON description file ({exc})") from exc
    return check_description_data(data, shown(path))


def check_description_data(data: object, source: str = "<descriptions>") -> dict[str, list[str]] | list[list[str]]:
    """``data`` if it is ``{class: [text, ...]}`` or a list of text lists; else an error naming the entry."""
    if isinstance(data, dict):
        for key, value in data.items():
            if not isinstance(key, str):
                raise InputFileError(f"{source}: description keys must be class names, got {key!r}")
            if not _is_text_list(value):
                raise InputFileError(f"{source}: entry {key!r} must be a list of strings, got {_what(value)}")
        return data
    if isinstance(data, list):
        for i, value in enumerate(data):
            if not _is_text_list(value):
                raise InputFileError(f"{source}: entry {i} of the list must be a list of strings (the "
                                     f"descriptions of class {i}), got {_what(value)}")
        return data
    raise InputFileError(f"{source}: expected {{class name: [text, ...]}} or a list of lists, one per class, "
                         f"got {_what(data)}")


def _is_text_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _what(value: object) -> str:
    """A short description of a wrong JSON value, for messages."""
    if isinstance(value, list):
        odd = [v for v in value if not isinstance(v, str)]
        return f"a list holding {_kind(odd[0])}" if odd else "a list"
    return _kind(value)


def _kind(value: object) -> str:
    names = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a string",
             dict: "an object", list: "a list"}
    return names.get(type(value), type(value).__name__)


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def resolve_descriptions(
    classes: ClassList,
    data: dict[str, list[str]] | list[list[str]],
    fallback: str = "a photo of a {}.",
    source: str = "<descriptions>",
) -> Descriptions:
    """Match description entries to class indices; fill gaps with ``fallback.format(name)``."""
    data = check_description_data(data, source)
    res = Resolution()
    used_by: list[tuple[str, ...]] = []  # per class, the keys its entry came from
    if isinstance(data, list):
        if len(data) != len(classes):
            raise InputFileError(
                f"{source}: a list-form description file needs one entry per class "
                f"({len(data)} entries for {len(classes)} classes)"
            )
        entries: list[list[str] | None] = [list(v) for v in data]
        used_by = [(str(i),) for i in range(len(classes))]
    else:
        by_norm: dict[str, list[str]] = {}
        for key in data:
            by_norm.setdefault(normalize_name(key), []).append(key)
        entries = []
        used: set[str] = set()
        for i, name in enumerate(classes.names):
            keys = [name] if name in data else by_norm.get(normalize_name(name), [])
            if len(keys) > 1 and keys not in res.merged.values():  # once per key set, not per class
                res.merged[i] = list(keys)
            used.update(keys)
            used_by.append(tuple(keys))
            entries.append(_merge([data[k] for k in keys]) if keys else None)
        for key in data:
            if key in used:
                continue
            exact = next((k for k in by_norm[normalize_name(key)] if k in used), None)
            if exact is not None:
                res.shadowed[key] = exact
            else:
                res.unused_keys.append(key)
    texts = []
    for i, entry in enumerate(entries):
        cleaned = [t.strip() for t in entry or [] if t.strip()]
        if entry is None:
            res.missing.append(i)
        elif not cleaned:
            res.empty.append(i)
        texts.append(cleaned or [fallback.format(classes[i])])
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, keys in enumerate(used_by):
        if keys and i not in res.missing and i not in res.empty:
            groups.setdefault(keys, []).append(i)
    res.shared = {classes[idx[0]]: idx for idx in groups.values() if len(idx) > 1}
    # classes on the fallback prompt whose names read the same to the tokenizer score identically
    on_fallback = set(res.missing) | set(res.empty)
    res.identical = {name: idx for name, idx in classes.indistinct().items()
                     if all(i in on_fallback for i in idx) and len({_as_tokenized(texts[i]) for i in idx}) == 1}
    return Descriptions(texts=texts, resolution=res, source=source)


def _as_tokenized(texts: list[str]) -> tuple[str, ...]:
    """Texts as CLIP tokenizers see them: lower-cased, whitespace collapsed."""
    return tuple(" ".join(t.split()).lower() for t in texts)


def _merge(lists: list[list[str]]) -> list[str]:
    """Entries of several keys in file order, without repeating a text."""
    out: list[str] = []
    for texts in lists:
        out.extend(t for t in texts if t not in out)
    return out


def load_descriptions(classes: ClassList, path: str | Path, fallback: str = "a photo of a {}.") -> Descriptions:
    return resolve_descriptions(classes, read_description_file(path), fallback=fallback, source=shown(path))


def normalize_name(name: str) -> str:
    """How class names and description keys are matched: case, underscores and spacing ignored."""
    return " ".join(name.replace("_", " ").split()).lower()
