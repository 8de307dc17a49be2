"""Class lists: read from a JSON/text file or a comma list; classes are identified by index.

How a ``--classes`` string is read (so that a typo or a wrong file never becomes a one-class list that
"classifies" every image with certainty):

1. an existing directory is an error; an existing file is a class file;
2. otherwise a string without a comma is a missing class file (it cannot be a class list: one name is
   not enough to classify), and the error says both;
3. otherwise a string that ends in a file extension (``.txt``, ``.json``, ``.csv`` ...) is a missing
   class file; any other string is a comma list.

Class files: ``.json`` holding a list of names (or of synonym lists, first synonym used) or an
index -> name object; any other file is text with one name per line (blank lines and ``#`` comments
skipped). A text file whose only line holds commas is refused: that is a comma list in the wrong place.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputFileError

# Classification needs a choice: with one class every image gets it with probability 1.
MIN_CLASSES = 2

# Endings that mark a --classes string as a file name, not a comma list of class names.
_FILE_SUFFIX = re.compile(r"\.(txt|text|json|jsonl|lst|list|csv|tsv|names|ya?ml|md)$", re.IGNORECASE)
_COMMA_HINT = ("put one class name per line, or pass the comma list itself on the command line "
               "(--classes 'cat,dog')")


@dataclass(frozen=True)
class ClassList:
    """Class names in label order. Names may repeat (ImageNet has two "crane"s): use indices."""

    names: tuple[str, ...]
    source: str = "<list>"

    def __post_init__(self) -> None:
        if not self.names:
            raise InputFileError(f"{self.source}: the class list is empty")
        if not all(isinstance(n, str) for n in self.names):
            raise InputFileError(f"{self.source}: every class name must be a string")
        blank = [i for i, n in enumerate(self.names) if not n.strip()]
        if blank:
            raise InputFileError(f"{self.source}: class names at indices {blank[:10]} are empty")
        # control characters (tabs, newlines, escapes) would forge lines in listings and prompts, and
        # lone surrogates cannot even be printed; no real class name holds either
        odd = [i for i, n in enumerate(self.names) if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in n)]
        if odd:
            raise InputFileError(f"{self.source}: class names at indices {odd[:10]} contain control characters")

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> str:
        return self.names[index]

    def duplicates(self) -> dict[str, list[int]]:
        """Names that occur more than once, with all their indices."""
        counts = Counter(self.names)
        return {n: [i for i, m in enumerate(self.names) if m == n] for n, c in counts.items() if c > 1}

    def indistinct(self) -> dict[str, list[int]]:
        """Names that give the same prompt to the text encoder, by their first spelling.

        CLIP tokenizers lower-case and collapse whitespace, so ``Crane`` and ``crane`` are one text.
        """
        groups: dict[str, list[int]] = {}
        for i, name in enumerate(self.names):
            groups.setdefault(" ".join(name.split()).lower(), []).append(i)
        return {self.names[idx[0]]: idx for idx in groups.values() if len(idx) > 1}

    def messages(self) -> list[str]:
        """Warnings for a run without descriptions: classes whose scores cannot differ."""
        return [f"classes {idx} are all named {name!r} and have no descriptions to tell them apart: "
                "their scores are identical" for name, idx in self.indistinct().items()]

    def subset(self, indices: list[int]) -> ClassList:
        return ClassList(tuple(self.names[i] for i in indices), source=f"{self.source}[subset]")


def load_classes(spec: str | Path | list[str] | tuple[str, ...], min_classes: int = MIN_CLASSES) -> ClassList:
    """Build a class list from a list, a file path or a comma-separated string (rules: module docstring).

    ``min_classes``: fewer names are an error (2 for classification; ``absclip describe`` can take 1).
    """
    if isinstance(spec, (list, tuple)):
        if not all(isinstance(n, str) for n in spec):
            raise InputFileError("every class name must be a string")
        return _enough(ClassList(tuple(n.strip() for n in spec)), min_classes)
    text = str(spec)
    try:
        path = Path(text).expanduser()
    except RuntimeError:  # "~name" for a user that does not exist: not a path, maybe a class name
        path = Path(text)
    kind = _file_kind(path)
    if kind == "dir":
        raise InputFileError(f"--classes {shown(text)}: is a directory; pass a class file (one name per line, or a "
                             "JSON list) or a comma list like 'cat,dog'")
    if kind == "file":
        return _enough(_read_class_file(path), min_classes, single_line_hint=True)
    if "," not in text:
        if _looks_like_path(text):
            raise InputFileError(f"class file not found: {shown(text)} (pass an existing file or a comma list "
                                 "like 'cat,dog')")
        if min_classes <= 1:
            return ClassList((text.strip(),), source="--classes")
        raise InputFileError(f"--classes {shown(text)}: no such class file, and one name is not a class list: pass "
                             "a class file (one name per line, or a JSON list) or at least two names, e.g. 'cat,dog'")
    if _FILE_SUFFIX.search(text.strip()):
        raise InputFileError(f"class file not found: {shown(text)} (pass an existing file or a comma list "
                             "like 'cat,dog')")
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise InputFileError(f"--classes {shown(text)}: the class list is empty")
    return _enough(ClassList(names, source="--classes"), min_classes)


def shown(text: object) -> str:
    """``text`` for a one-line error message: as is when printable, else its escaped ``repr``."""
    value = str(text)
    return value if value.isprintable() else repr(value)


def _file_kind(path: Path) -> str | None:
    """"dir", "file" or None; a name the OS refuses (too long, a NUL byte) is no file, e.g. a long comma list."""
    try:
        return "dir" if path.is_dir() else "file" if path.is_file() else None
    except (OSError, ValueError):
        return None


def _looks_like_path(text: str) -> bool:
    return "/" in text or "\\" in text or bool(_FILE_SUFFIX.search(text.strip()))


def _enough(classes: ClassList, min_classes: int, single_line_hint: bool = False) -> ClassList:
    if len(classes) >= min_classes:
        return classes
    hint = ""
    if single_line_hint and "," in classes.names[0]:
        hint = f": {_COMMA_HINT}"
    elif classes.source == "--classes" or classes.source == "<list>":
        hint = ": pass at least two names, e.g. 'cat,dog'"
    count = f"{len(classes)} class name" + ("s" if len(classes) > 1 else "")
    raise InputFileError(f"{classes.source}: only {count} ({', '.join(repr(n) for n in classes.names[:3])}); "
                         f"classification needs at least {min_classes}{hint}")


def _read_class_file(path: Path) -> ClassList:
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"{path}: cannot read class file ({exc})") from exc
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise InputFileError(f"{path}: not valid JSON ({exc})") from exc
        if isinstance(data, dict):
            data = _dict_in_index_order(path, data)
        if not isinstance(data, list):
            raise InputFileError(f"{path}: expected a JSON list of class names")
        names = [entry[0] if isinstance(entry, list) and entry else entry for entry in data]
        if not all(isinstance(n, str) for n in names):
            raise InputFileError(f"{path}: every class entry must be a string (or a list of synonyms)")
        return ClassList(tuple(n.strip() for n in names), source=str(path))
    lines = [line.strip() for line in raw.splitlines()]
    names = tuple(n for n in lines if n and not n.startswith("#"))
    if not names:
        raise InputFileError(f"{path}: the class list is empty (one class name per line)")
    if path.suffix.lower() in (".csv", ".tsv"):
        sep = "," if path.suffix.lower() == ".csv" else "\t"
        if all(sep in n for n in names):
            # "0,tench" or "tench,goldfish" rows: which field is the name is a guess absclip does not make
            raise InputFileError(f"{path}: every row has several fields; absclip reads one class name per line "
                                 "(a .txt file), or a JSON list")
    return ClassList(names, source=str(path))


def _dict_in_index_order(path: Path, data: dict[str, object]) -> list[object]:
    """Accept ``{"0": "tench", "1": "goldfish", ...}`` as written by some dataset tools."""
    try:
        indexed = sorted(((int(k), v) for k, v in data.items()), key=lambda item: item[0])
    except ValueError:
        raise InputFileError(f"{path}: a JSON object of classes needs integer keys (index -> name)") from None
    if [i for i, _ in indexed] != list(range(len(indexed))):
        raise InputFileError(f"{path}: class indices must run 0..{len(indexed) - 1} without gaps")
    return [v for _, v in indexed]
