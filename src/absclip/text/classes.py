"""Class lists: read from a JSON/text file or a comma list; classes are identified by index."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputFileError


@dataclass(frozen=True)
class ClassList:
    """Class names in label order. Names may repeat (ImageNet has two "crane"s): use indices."""

    names: tuple[str, ...]
    source: str = "<list>"

    def __post_init__(self) -> None:
        if not self.names:
            raise InputFileError(f"{self.source}: the class list is empty")
        blank = [i for i, n in enumerate(self.names) if not n.strip()]
        if blank:
            raise InputFileError(f"{self.source}: class names at indices {blank[:10]} are empty")

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> str:
        return self.names[index]

    def duplicates(self) -> dict[str, list[int]]:
        """Names that occur more than once, with all their indices."""
        counts = Counter(self.names)
        return {n: [i for i, m in enumerate(self.names) if m == n] for n, c in counts.items() if c > 1}

    def subset(self, indices: list[int]) -> ClassList:
        return ClassList(tuple(self.names[i] for i in indices), source=f"{self.source}[subset]")


def load_classes(spec: str | Path | list[str] | tuple[str, ...]) -> ClassList:
    """Build a class list from a list, a file path or a comma-separated string.

    Files: ``.json`` holding a list of names (or of synonym lists, first synonym used), or a
    text file with one name per line (blank lines and ``#`` comments skipped).
    """
    if isinstance(spec, (list, tuple)):
        return ClassList(tuple(str(n).strip() for n in spec))
    path = Path(spec)
    if path.is_file():
        return _read_class_file(path)
    text = str(spec)
    looks_like_file = path.suffix.lower() in (".json", ".txt", ".lst") or "/" in text
    if not looks_like_file:
        return ClassList(tuple(n.strip() for n in text.split(",") if n.strip()), source="--classes")
    raise InputFileError(f"class file not found: {path} (pass an existing file or a comma list like 'cat,dog')")


def _read_class_file(path: Path) -> ClassList:
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"{path}: cannot read class file ({exc})") from exc
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
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
    return ClassList(tuple(n for n in lines if n and not n.startswith("#")), source=str(path))


def _dict_in_index_order(path: Path, data: dict[str, object]) -> list[object]:
    """Accept ``{"0": "tench", "1": "goldfish", ...}`` as written by some dataset tools."""
    try:
        indexed = sorted((int(k), v) for k, v in data.items())
    except ValueError:
        raise InputFileError(f"{path}: a JSON object of classes needs integer keys (index -> name)") from None
    if [i for i, _ in indexed] != list(range(len(indexed))):
        raise InputFileError(f"{path}: class indices must run 0..{len(indexed) - 1} without gaps")
    return [v for _, v in indexed]
