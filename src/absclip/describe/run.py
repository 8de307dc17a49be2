"""Entry points of ``absclip describe``: describe classes, write the file, or top up an existing one.

The engine (planning, requests, validation) is :class:`~absclip.describe.runner.Runner`; this module
decides what to ask for and how the result reaches the output file.

Only a complete run writes the output file. A run in which requests failed despite retries writes
what it got to ``NAME.partial.json`` beside it (never to the output, which ``classify`` would take
for finished), and a run that kept no description at all writes nothing. Every answer is cached
either way, so rerunning the same command completes the file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from ..errors import AbsclipError, InputFileError
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


def partial_path(output: str | Path) -> Path:
    """Where an incomplete run leaves what it got: ``out.json`` -> ``out.partial.json``."""
    output = Path(output)
    return output.with_name(f"{output.stem}.partial{output.suffix or '.json'}")


def _write(result: DescribeResult, output: Path, descriptions: dict[str, list[str]]) -> DescribeResult:
    """The output if the run is complete (removing an older partial file), else the partial file with
    the classes that got descriptions, else nothing."""
    partial = partial_path(output)
    if result.complete:
        write_json(output, descriptions)
        partial.unlink(missing_ok=True)
        result.written, result.partial = output, False
        return result
    kept = {name: texts for name, texts in descriptions.items() if texts}
    if kept:
        write_json(partial, kept)
        result.written, result.partial = partial, True
    return result


def write_descriptions(
    classes: ClassList, output: str | Path, settings: DescribeSettings | None = None
) -> DescribeResult:
    """Run :func:`describe_classes` and write ``{class: [texts]}`` to ``output`` atomically, if complete
    (see the module docstring); ``result.written`` says where the descriptions went, if anywhere."""
    result = describe_classes(classes, settings)
    return _write(result, Path(output), result.descriptions)


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
    _write(result, output, merged)
    lines = result.summary.lines()
    if report is not None:
        for line in lines:
            report(line)
    else:
        log.info("%s", lines[0])
        for line in lines[1:]:
            log.warning("%s", line)
    if not result.complete:
        raise AbsclipError(incomplete_message(result, output))
    return output


def incomplete_message(result: DescribeResult, output: Path) -> str:
    """One line on why ``output`` was not written, where the partial result is, and what to do."""
    failed = result.summary.failed_requests
    why = f"{failed} requests failed despite retries" if failed else "no answer gave a usable description"
    where = f"; what was obtained is in {result.written}" if result.written else ""
    return (f"describe: {output} not written: {why}{where}; answers are cached, rerun the same command to "
            "complete it")
