"""On-disk answer cache: one JSON file per request, so a killed run resumes where it stopped.

One file per answer (written atomically) rather than one big file means a crash can lose at most the
answer being written, concurrent workers never contend for a shared file, and an interrupted write
leaves no half-record behind. Keys hash everything that changes the answer; the API key is never part
of a key or a record.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io import atomic_open
from ..paths import cache_dir

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


@dataclass(frozen=True)
class RequestKey:
    """Everything that determines one sampled answer (and nothing secret)."""

    endpoint: str
    model: str
    messages: tuple[tuple[str, str], ...]
    class_name: str
    class_index: int
    question: int
    sample: int
    temperature: float
    seed: int | None
    max_tokens: int | None

    def digest(self) -> str:
        payload = {
            "format": CACHE_FORMAT,
            "endpoint": self.endpoint.rstrip("/"),
            "model": self.model,
            "messages": [list(m) for m in self.messages],
            "class_name": self.class_name,
            "class_index": self.class_index,
            "question": self.question,
            "sample": self.sample,
            "temperature": self.temperature,
            "seed": self.seed,
            "max_tokens": self.max_tokens,
        }
        canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedAnswer:
    text: str
    finish_reason: str | None


def default_cache_dir() -> Path:
    """The ``describe`` directory under absclip's one cache root (:func:`absclip.paths.cache_root`)."""
    return cache_dir("describe")


class AnswerCache:
    """Answers by request digest, stored as ``root/ab/abcdef....json``.

    The two-level layout keeps directories small for runs of tens of thousands of answers.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    def _path(self, digest: str) -> Path:
        return self.root / digest[:2] / f"{digest}.json"

    def get(self, key: RequestKey) -> CachedAnswer | None:
        path = self._path(key.digest())
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            # Atomic writes make this unlikely; if it happens (disk full, manual edit), ask again.
            log.warning("ignoring unreadable cache entry %s (%s)", path, type(exc).__name__)
            return None
        answer = record.get("answer") if isinstance(record, dict) else None
        if not isinstance(answer, str):
            log.warning("ignoring malformed cache entry %s", path)
            return None
        finish = record.get("finish_reason")
        return CachedAnswer(answer, finish if isinstance(finish, str) else None)

    def put(self, key: RequestKey, answer: CachedAnswer) -> None:
        record: dict[str, Any] = {
            "format": CACHE_FORMAT,
            "model": key.model,
            "class_name": key.class_name,
            "class_index": key.class_index,
            "question": key.question,
            "sample": key.sample,
            "temperature": key.temperature,
            "seed": key.seed,
            "messages": [{"role": r, "content": c} for r, c in key.messages],
            "answer": answer.text,
            "finish_reason": answer.finish_reason,
        }
        with atomic_open(self._path(key.digest()), "w", encoding="utf-8") as handle:
            json.dump(record, handle, ensure_ascii=False, indent=1)
