"""Prompt styles as data: the packaged ``describe_prompts.json``, optionally overridden by a user file.

The prompts are data rather than code so that a user can adapt the questions to a domain (satellite
images, medical scans, ...) without touching Python, and so that the exact text sent to the model is
reviewable in one place. A user file has the same schema; styles and filters it defines replace the
packaged ones of the same name, everything else is inherited.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import InputFileError

PACKAGED_PROMPTS = "describe_prompts.json"
PARSE_MODES = ("sentences", "list")
_QUESTION_FIELDS = {"name", "article"}
_COMPOSE_FIELDS = {"sentences": {"text", "name"}, "list": {"feature", "clause", "name"}}


@dataclass(frozen=True)
class StyleSpec:
    """One way of asking for descriptions.

    ``parse`` says how an answer becomes descriptions: ``sentences`` keeps each answer (or each item of
    a listed answer) as one description, ``list`` splits the answer into short feature phrases which
    ``compose`` turns into texts. ``samples_per_question=None`` spreads ``per_class`` over the questions.
    """

    name: str
    parse: str
    questions: tuple[str, ...]
    compose: str
    system: str | None
    samples_per_question: int | None
    temperature: float
    max_tokens: int | None
    per_class: int
    paper: str = ""

    def messages(self, class_name: str, question: int) -> list[dict[str, str]]:
        """The chat messages for one question about one class (the exact text that is cached)."""
        text = self.questions[question].format(name=class_name, article=article(class_name))
        out = [{"role": "system", "content": self.system}] if self.system else []
        out.append({"role": "user", "content": text})
        return out


@dataclass(frozen=True)
class PromptBook:
    """All styles plus the answer filters (refusal and off-topic regular expressions)."""

    styles: dict[str, StyleSpec]
    refusal: tuple[re.Pattern[str], ...]
    off_topic: tuple[re.Pattern[str], ...]
    source: str

    def style(self, name: str) -> StyleSpec:
        try:
            return self.styles[name]
        except KeyError:
            known = ", ".join(sorted(self.styles))
            raise InputFileError(f"unknown description style {name!r} in {self.source}; known: {known}") from None


def article(name: str) -> str:
    """'a' or 'an' for a class name, by its first letter (good enough for prompts; CuPL wrote 'a(n)')."""
    return "an" if name[:1].lower() in "aeiou" else "a"


def load_prompt_book(path: str | Path | None = None) -> PromptBook:
    """The packaged prompt book, with the styles and filters of ``path`` (if given) laid over it."""
    packaged_text = (
        resources.files("absclip").joinpath("resources").joinpath(PACKAGED_PROMPTS).read_text(encoding="utf-8")
    )
    data = _parse(packaged_text, f"<packaged {PACKAGED_PROMPTS}>")
    source = f"<packaged {PACKAGED_PROMPTS}>"
    if path is not None:
        path = Path(path)
        try:
            user_text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputFileError(f"{path}: cannot read prompts file ({exc})") from exc
        user = _parse(user_text, str(path))
        data["styles"] = {**data.get("styles", {}), **user.get("styles", {})}
        data["filters"] = {**data.get("filters", {}), **user.get("filters", {})}
        source = str(path)
    return _build(data, source)


def _parse(text: str, source: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputFileError(f"{source}: prompts file is not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("styles", {}), dict):
        raise InputFileError(f"{source}: expected an object with a 'styles' object")
    return data


def _build(data: dict[str, Any], source: str) -> PromptBook:
    styles = {name: _style(name, raw, source) for name, raw in data.get("styles", {}).items()}
    if not styles:
        raise InputFileError(f"{source}: no styles defined")
    filters = data.get("filters", {})
    if not isinstance(filters, dict):
        raise InputFileError(f"{source}: 'filters' must be an object of pattern lists")
    return PromptBook(
        styles=styles,
        refusal=_patterns(filters.get("refusal", []), "refusal", source),
        off_topic=_patterns(filters.get("off_topic", []), "off_topic", source),
        source=source,
    )


def _style(name: str, raw: Any, source: str) -> StyleSpec:
    where = f"{source}: style {name!r}"
    if not isinstance(raw, dict):
        raise InputFileError(f"{where} must be an object")
    parse = raw.get("parse", "sentences")
    if parse not in PARSE_MODES:
        raise InputFileError(f"{where}: 'parse' must be one of {PARSE_MODES}, not {parse!r}")
    questions = raw.get("questions")
    if not isinstance(questions, list) or not questions or not all(isinstance(q, str) for q in questions):
        raise InputFileError(f"{where}: 'questions' must be a non-empty list of strings")
    for question in questions:
        _check_template(question, _QUESTION_FIELDS, f"{where}: question {question[:40]!r}...")
    compose = raw.get("compose", "{text}" if parse == "sentences" else "{feature}")
    if not isinstance(compose, str):
        raise InputFileError(f"{where}: 'compose' must be a string")
    _check_template(compose, _COMPOSE_FIELDS[parse], f"{where}: compose {compose!r}")
    system = raw.get("system")
    if system is not None and not isinstance(system, str):
        raise InputFileError(f"{where}: 'system' must be a string or null")
    samples = raw.get("samples_per_question")
    per_class = raw.get("per_class", 10)
    max_tokens = raw.get("max_tokens")
    for label, value, allow_none in (
        ("samples_per_question", samples, True),
        ("per_class", per_class, False),
        ("max_tokens", max_tokens, True),
    ):
        if value is None and allow_none:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputFileError(f"{where}: {label!r} must be a positive integer{' or null' if allow_none else ''}")
    temperature = raw.get("temperature", 1.0)
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or temperature < 0:
        raise InputFileError(f"{where}: 'temperature' must be a non-negative number")
    return StyleSpec(
        name=name,
        parse=parse,
        questions=tuple(questions),
        compose=compose,
        system=system or None,
        samples_per_question=samples,
        temperature=float(temperature),
        max_tokens=max_tokens,
        per_class=per_class,
        paper=str(raw.get("paper", "")),
    )


def _check_template(template: str, allowed: set[str], where: str) -> None:
    """Fail at load time, not after a thousand requests, if a template has unknown ``{fields}``."""
    try:
        template.format(**dict.fromkeys(allowed, "x"))
    except (KeyError, IndexError, ValueError) as exc:
        raise InputFileError(
            f"{where} uses an unknown or malformed placeholder ({exc}); allowed: "
            + ", ".join("{" + f + "}" for f in sorted(allowed))
            + " (write literal braces as {{ }})"
        ) from None


def _patterns(raw: Any, label: str, source: str) -> tuple[re.Pattern[str], ...]:
    if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
        raise InputFileError(f"{source}: filters.{label} must be a list of regular expressions")
    compiled = []
    for pattern in raw:
        try:
            compiled.append(re.compile(pattern, re.IGNORECASE))
        except re.error as exc:
            raise InputFileError(f"{source}: filters.{label} pattern {pattern!r} is invalid ({exc})") from None
    return tuple(compiled)
