"""What a describe run produced, and for each short class, why it is short."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .clean import NOT_ABOUT_THE_CLASS

_MAX_LISTED = 20


@dataclass
class ClassOutcome:
    """One output entry (a class name, possibly shared by several class indices)."""

    name: str
    indices: list[int]
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    too_long: int = 0

    def why_short(self) -> str:
        parts = []
        if self.dropped:
            parts.append("dropped " + ", ".join(f"{n} {reason}" for reason, n in self.dropped.most_common()))
        if self.failures:
            parts.append(f"{len(self.failures)} request(s) failed: {self.failures[-1]}")
        return "; ".join(parts) or "the answers held fewer usable texts"


@dataclass
class DescribeSummary:
    """Counts and per-class outcomes of one run; ``lines()`` is what the CLI prints."""

    style: str
    model: str
    endpoint: str
    per_class: int
    cache_dir: Path
    token_method: str
    outcomes: list[ClassOutcome] = field(default_factory=list)
    requests_sent: int = 0
    retries: int = 0
    cache_hits: int = 0
    too_long_examples: list[tuple[str, int, str]] = field(default_factory=list)

    @property
    def failed_requests(self) -> int:
        return sum(len(o.failures) for o in self.outcomes)

    @property
    def short(self) -> list[ClassOutcome]:
        return [o for o in self.outcomes if o.kept < self.per_class]

    @property
    def shared(self) -> list[ClassOutcome]:
        return [o for o in self.outcomes if len(o.indices) > 1]

    @property
    def too_long(self) -> int:
        return sum(o.too_long for o in self.outcomes)

    @property
    def not_about_the_class(self) -> Counter[str]:
        """Answers dropped because they did not describe the class asked about, by reason."""
        total: Counter[str] = Counter()
        for o in self.outcomes:
            total.update({r: n for r, n in o.dropped.items() if r in NOT_ABOUT_THE_CLASS})
        return total

    def lines(self) -> list[str]:
        total = sum(o.kept for o in self.outcomes)
        out = [
            f"describe: style {self.style}, model {self.model!r} at {self.endpoint}: "
            f"{total} descriptions for {len(self.outcomes)} class names; "
            f"{self.requests_sent} requests sent ({self.retries} retries), "
            f"{self.cache_hits} answers from the cache in {self.cache_dir}"
        ]
        for o in self.shared[:_MAX_LISTED]:
            out.append(f"classes {o.indices} share the name {o.name!r}: one entry, asked for once")
        suspicious = self.not_about_the_class
        if suspicious:
            out.append(
                f"{sum(suspicious.values())} answers did not describe the class they were asked about and were "
                "dropped (" + ", ".join(f"{n} {reason}" for reason, n in suspicious.most_common()) + ")"
            )
        short = self.short
        if short:
            out.append(f"{len(short)} class names have fewer than {self.per_class} descriptions:")
            for o in short[:_MAX_LISTED]:
                out.append(f"  {o.indices[0]} {o.name!r}: {o.kept} ({o.why_short()})")
            if len(short) > _MAX_LISTED:
                out.append(f"  ... and {len(short) - _MAX_LISTED} more")
        if self.too_long:
            name, tokens, text = self.too_long_examples[0]
            out.append(
                f"{self.too_long} descriptions exceed CLIP's 77-token context ({self.token_method}) "
                f"and will be truncated by the text encoder, e.g. {name!r}: {tokens} tokens: {text[:80]!r}..."
            )
        if self.failed_requests:
            out.append(
                f"{self.failed_requests} requests failed after all retries; rerun the same command to ask "
                "them again (everything answered so far is cached)"
            )
        return out


@dataclass
class DescribeResult:
    """``descriptions`` maps each requested class name to its texts, in class order.

    ``written`` is the file the descriptions went to (set by the writers in :mod:`.run`), None when
    nothing was written; ``partial`` says it is the ``.partial.json`` file of an incomplete run.
    """

    descriptions: dict[str, list[str]]
    summary: DescribeSummary
    written: Path | None = None
    partial: bool = False

    @property
    def complete(self) -> bool:
        """Every request answered, and at least one description kept: safe to write as the output."""
        return self.summary.failed_requests == 0 and any(self.descriptions.values())
