"""Entry points of ``absclip describe``: describe classes, write the file, or top up an existing one.

The engine (planning, requests, validation) is :class:`~absclip.describe.runner.Runner`; this module
decides what to ask for and how the result reaches the output file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from ..errors import InputFileError
from ..io import write_json
from ..text.classes import ClassList
from ..text.descriptions import normalize_name, read_description_file, resolve_descriptions
from .prompts import load_prompt_book
from .runner import Runner
from .settings import DescribeSettings
from .summary import DescribeResult

__all__ = ["DescribeResult", "DescribeSettings", "describe_classes", "ensure_descriptions", "write_descriptions"]

log = logging.getLogger(__name__)


def describe_classes(
    classes: ClassList, settings: DescribeSettings | None = None, only: Iterable[int] | None = None
) -> DescribeResult:
    """Descriptions for ``classes`` (or the class indices in ``only``), asked, cached and validated.

    Classes whose names are equal up to case and underscores share one entry, as they do when the
    description file is read back; the entry is asked for once, keyed by the first such index.
    Raises :class:`EndpointError` when the endpoint rejects requests outright and
    :class:`AbsclipError` after ``max_failures`` requests failed despite retries.
    """
    settings = settings or DescribeSettings()
    book = load_prompt_book(settings.prompts)
    style = book.style(settings.style)
    runner = Runner(classes, settings, book, style)
    return runner.run(only)


def write_descriptions(
    classes: ClassList, output: str | Path, settings: DescribeSettings | None = None
) -> DescribeResult:
    """Run :func:`describe_classes` and write ``{class: [texts]}`` to ``output`` atomically."""
    result = describe_classes(classes, settings)
    write_json(output, result.descriptions)
    return result


def ensure_descriptions(
    classes: ClassList, output: str | Path, *, report: Callable[[str], None] | None = None, **settings: object
) -> Path:
    """Make ``output`` hold descriptions for every class; return its path.

    An existing file that covers every class (a non-empty entry per name, as ``load_descriptions``
    matches them) is reused untouched. Otherwise only the uncovered classes are described and their
    entries merged into the file, so hand edits and entries for other classes survive. ``settings``
    are :class:`DescribeSettings` fields. The run's summary lines (short classes and why, failed
    requests) go to ``report``, by default to this module's logger as warnings; classes left without
    descriptions fall back to the plain prompt when the file is loaded.
    """
    output = Path(output)
    config = DescribeSettings(**settings)  # type: ignore[arg-type]
    existing: dict[str, list[str]] = {}
    todo: list[int] | None = None
    if output.exists():
        data = read_description_file(output)
        resolution = resolve_descriptions(classes, data, source=str(output)).resolution
        todo = sorted(set(resolution.missing) | set(resolution.empty))
        if not todo:
            log.info("reusing %s: it has descriptions for all %d classes", output, len(classes))
            return output
        if isinstance(data, list):
            raise InputFileError(
                f"{output}: a list-form description file lacks entries for classes {todo[:10]}; "
                "fill it, or pass another output path to generate a new file"
            )
        existing = data
        log.info("%s lacks descriptions for %d classes; describing those", output, len(todo))
    result = describe_classes(classes, config, only=todo)
    new_keys = {normalize_name(k) for k in result.descriptions}
    merged = {k: v for k, v in existing.items() if normalize_name(k) not in new_keys}
    merged.update(result.descriptions)
    write_json(output, merged)
    lines = result.summary.lines()
    if report is not None:
        for line in lines:
            report(line)
    else:
        log.info("%s", lines[0])
        for line in lines[1:]:
            log.warning("%s", line)
    return output
