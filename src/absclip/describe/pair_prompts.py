"""Pair prompts as data (the ``pair_styles`` of ``describe_prompts.json``) and the parsing of their answers.

A pair style asks one question about two classes at once: the visual attributes in which they differ, and
a description of each class under each attribute (FuDD's differential descriptions). Its placeholders are
``{first}``, ``{second}``, ``{first_article}``, ``{second_article}`` and ``{count}``, so it lives beside the
one-class ``styles`` rather than among them. A user prompts file (``--prompts``) may define or replace pair
styles by name, as it does styles.

An answer is one line per attribute, ``attribute | description of the first | description of the second``.
Each description is cleaned and judged like any description (:class:`~absclip.describe.clean.AnswerCleaner`:
refusals, injected instructions, echoed secrets, off-topic text), and a line is kept only when both of its
descriptions are: the two sides of an attribute belong together. A side that names the other class and
not its own was swapped by the model and drops its line too.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import InputFileError
from .clean import DUPLICATE, EMPTY, OTHER_CLASS, AnswerCleaner, dedupe_key, display_name, sanitize
from .prompts import PACKAGED_PROMPTS, PromptBook, StyleSpec, article

_PAIR_FIELDS = {"first", "second", "first_article", "second_article", "count"}
_LEAD = re.compile(r"^\s*(?:[-*•·–—+]+|\(?\d{1,3}[.)\]:])\s*")  # a bullet or a number before the attribute
MALFORMED = "not 'attribute | first | second'"
TRUNCATED = "cut off by max_tokens"


@dataclass(frozen=True)
class PairStyle:
    """One way of asking for the differences of a class pair."""

    name: str
    question: str
    system: str | None
    per_pair: int
    temperature: float
    max_tokens: int | None
    paper: str = ""

    def messages(self, first: str, second: str, count: int | None = None) -> list[dict[str, str]]:
        """The chat messages for one pair (the exact text that is cached)."""
        text = self.question.format(first=first, second=second, first_article=article(first),
                                     second_article=article(second), count=count or self.per_pair)
        out = [{"role": "system", "content": self.system}] if self.system else []
        out.append({"role": "user", "content": text})
        return out

    def sentence_style(self) -> StyleSpec:
        """The one-class style whose cleaning rules each description goes through."""
        return StyleSpec(name=self.name, parse="sentences", questions=("{name}",), compose="{text}", system=None,
                         samples_per_question=1, temperature=self.temperature, max_tokens=self.max_tokens,
                         per_class=self.per_pair, paper=self.paper)


@dataclass(frozen=True)
class PairAnswer:
    """The kept lines of one answer: attribute names and the two aligned description lists."""

    attributes: tuple[str, ...]
    first: tuple[str, ...]
    second: tuple[str, ...]
    dropped: Counter[str]


def load_pair_style(name: str = "fudd", path: str | Path | None = None) -> PairStyle:
    """The packaged pair style ``name``, or the one of that name in the user prompts file ``path``."""
    packaged = resources.files("absclip").joinpath("resources").joinpath(PACKAGED_PROMPTS).read_text(encoding="utf-8")
    styles: dict[str, Any] = dict(json.loads(packaged).get("pair_styles", {}))
    source = f"<packaged {PACKAGED_PROMPTS}>"
    if path is not None:
        try:
            user = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputFileError(f"{path}: cannot read the prompts file ({exc})") from None
        extra = user.get("pair_styles", {}) if isinstance(user, dict) else None
        if not isinstance(extra, dict):
            raise InputFileError(f"{path}: 'pair_styles' must be an object of pair styles")
        if name in extra:
            source = str(path)
        styles.update(extra)
    if name not in styles:
        raise InputFileError(f"unknown pair style {name!r}; known: {', '.join(sorted(styles)) or 'none'}")
    return _build(name, styles[name], source)


def _build(name: str, raw: Any, source: str) -> PairStyle:
    where = f"{source}: pair style {name!r}"
    if not isinstance(raw, dict) or not isinstance(raw.get("question"), str):
        raise InputFileError(f"{where} must be an object with a 'question' string")
    try:
        raw["question"].format(**dict.fromkeys(_PAIR_FIELDS, "x"))
    except (KeyError, IndexError, ValueError) as exc:
        raise InputFileError(f"{where}: the question uses an unknown or malformed placeholder ({exc}); allowed: "
                             + ", ".join("{" + f + "}" for f in sorted(_PAIR_FIELDS))) from None
    per_pair, max_tokens, temperature = raw.get("per_pair", 4), raw.get("max_tokens"), raw.get("temperature", 0.0)
    for label, value, allow_none in (("per_pair", per_pair, False), ("max_tokens", max_tokens, True)):
        if not (value is None and allow_none) and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise InputFileError(f"{where}: {label!r} must be a positive integer")
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or temperature < 0:
        raise InputFileError(f"{where}: 'temperature' must be a non-negative number")
    system = raw.get("system")
    if system is not None and not isinstance(system, str):
        raise InputFileError(f"{where}: 'system' must be a string or null")
    return PairStyle(name, raw["question"], system or None, per_pair, float(temperature), max_tokens,
                     str(raw.get("paper", "")))


def parse_pair_answer(answer: str, finish_reason: str | None, first: str, second: str, book: PromptBook,
                      style: PairStyle, all_names: list[str] | tuple[str, ...], limit: int) -> PairAnswer:
    """The usable ``attribute | first | second`` lines of ``answer`` (at most ``limit``), with drop reasons."""
    cleaner = AnswerCleaner(book, style.sentence_style(), all_names)
    lines = [line.strip() for line in sanitize(answer).split("\n") if line.strip()]
    if finish_reason == "length" and lines:
        lines.pop()  # the last line was cut off mid-way
        dropped: Counter[str] = Counter({TRUNCATED: 1})
    else:
        dropped = Counter()
    attributes: list[str] = []
    kept: tuple[list[str], list[str]] = ([], [])
    seen: set[tuple[str, str]] = set()
    for line in lines:
        if "|" not in line:
            continue  # chatter around the lines ("Sure, here are ...") is not an attribute
        parts = [p.strip() for p in _LEAD.sub("", line, count=1).split("|")]
        if len(parts) != 3 or not all(parts):
            dropped[MALFORMED] += 1
            continue
        attribute, texts = parts[0].strip(" .:*"), []
        for text, own, other in ((parts[1], first, second), (parts[2], second, first)):
            judged = cleaner.candidates(text, None, own)
            if len(judged) != 1 or judged[0].reason:
                dropped[judged[0].reason or MALFORMED] += 1
                break
            if _names(judged[0].text, other) and not _names(judged[0].text, own):
                dropped[OTHER_CLASS] += 1
                break
            texts.append(judged[0].text)
        if len(texts) != 2:
            continue
        key = (dedupe_key(texts[0]), dedupe_key(texts[1]))
        if key in seen:
            dropped[DUPLICATE] += 1
            continue
        seen.add(key)
        if len(attributes) < limit:
            attributes.append(attribute)
            kept[0].append(texts[0])
            kept[1].append(texts[1])
    if not attributes and not dropped:
        dropped[EMPTY] += 1
    return PairAnswer(tuple(attributes), tuple(kept[0]), tuple(kept[1]), dropped)


def _names(text: str, name: str) -> bool:
    """Whether ``text`` mentions the class ``name`` as a whole phrase (case and underscores ignored)."""
    shown = re.escape(display_name(name).lower())
    return re.search(rf"(?<!\w){shown}(?!\w)", text.lower()) is not None
