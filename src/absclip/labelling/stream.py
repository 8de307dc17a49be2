"""Streamed, resumable classify output.

While a run is going, records are appended to ``OUTPUT.parts/rank-R.jsonl`` (one file per process,
flushed after every batch), so a run killed at any point loses at most the batch in flight. A
process only ever appends whole lines, but a kill can still cut the last one: readers drop a final
line without its newline (or one that does not parse), and a writer resuming a part truncates it
away first, so a half-written record is never trusted nor glued to the next one. When every input
is done, the parts (and any earlier finished output) are merged in input order, each path once,
into OUTPUT (JSONL, or CSV / Parquet made from the merged records), written atomically; the parts are then
removed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

from ..errors import InputFileError
from ..io import atomic_open

CSV_HEADER = ["path", "label", "score", "top_k_labels", "top_k_scores", "error"]
SUFFIXES = (".jsonl", ".csv", ".parquet")


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise InputFileError("Parquet output needs pyarrow: pip install 'absclip[ray]'") from None
    return pyarrow


def write_parquet(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """One row per record; ``top_k`` as a list of (label, index, score) structs."""
    pa = _pyarrow()
    table = pa.Table.from_pylist([dict(r) for r in records], schema=pa.schema([
        ("path", pa.string()), ("label", pa.string()), ("score", pa.float64()),
        ("top_k", pa.list_(pa.struct([("label", pa.string()), ("index", pa.int64()), ("score", pa.float64())]))),
        ("error", pa.string())]))
    sink = pa.BufferOutputStream()
    pa.parquet.write_table(table, sink)
    with atomic_open(path, "wb") as handle:
        handle.write(sink.getvalue().to_pybytes())


def read_parquet(path: Path) -> list[dict[str, Any]]:
    return _pyarrow().parquet.read_table(path).to_pylist()


def parts_dir(output: Path) -> Path:
    return output.with_name(output.name + ".parts")


def complete_lines(path: Path, key: str = "path") -> tuple[list[dict[str, Any]], int]:
    """The records (objects holding ``key``) of a JSONL file up to its last complete, parseable line,
    and that line's end offset."""
    data = path.read_bytes()
    records: list[dict[str, Any]] = []
    good = 0
    start = 0
    while True:
        end = data.find(b"\n", start)
        if end < 0:
            break  # no newline: a line cut by a kill
        try:
            record = json.loads(data[start:end])
        except (json.JSONDecodeError, UnicodeDecodeError):
            break  # a damaged line: it and everything after it is redone
        if isinstance(record, dict) and key in record:
            records.append(record)
        good = start = end + 1
    return records, good


def read_csv_records(path: Path, classes: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Records back from a classify CSV (the inverse of :func:`csv_text`); ``index`` is looked up in
    ``classes`` (None without them). A malformed row is an error naming ``path:line``."""
    index = {name: i for i, name in enumerate(classes)}
    out = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in CSV_HEADER if c not in (reader.fieldnames or [])]
        if missing:
            raise InputFileError(f"{path}: not an absclip classify CSV (no {', '.join(missing)} column)")
        for n, row in enumerate(reader, 2):
            labels = [s for s in (row["top_k_labels"] or "").split("|") if s]
            try:
                scores = [float(s) for s in (row["top_k_scores"] or "").split("|") if s]
                score = float(row["score"]) if row["score"] else None
            except ValueError as exc:
                raise InputFileError(f"{path}:{n}: a score is not a number ({exc})") from None
            if len(labels) != len(scores):
                raise InputFileError(f"{path}:{n}: {len(labels)} top-k labels but {len(scores)} scores")
            top = [{"label": name, "index": index.get(name), "score": s}
                   for name, s in zip(labels, scores, strict=True)]
            out.append({"path": row["path"], "label": row["label"] or None, "score": score, "top_k": top,
                        "error": row["error"] or None})
    return out


def csv_text(records: Iterable[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_HEADER)
    for r in records:
        writer.writerow([r["path"], r["label"] or "", "" if r["score"] is None else f"{r['score']:.6f}",
                         "|".join(t["label"] for t in r["top_k"]), "|".join(f"{t['score']:.6f}" for t in r["top_k"]),
                         r["error"] or ""])
    return buffer.getvalue()


class ResultStream:
    """The output of one classify run: what is already done, this process's part, and the final merge.

    Args:
        output: the final ``.jsonl`` or ``.csv`` file.
        classes: class names (to read a finished CSV back).
        resume: continue an interrupted or finished run; without it (or ``overwrite``) existing output
            is an error, never silently replaced.
        overwrite: discard existing output and parts.
        key: the field naming a record's input (``path`` for results, ``image`` for crop plans).
    """

    def __init__(self, output: Path, classes: Sequence[str] = (), resume: bool = False, overwrite: bool = False,
                 key: str = "path") -> None:
        if output.suffix.lower() not in SUFFIXES:
            raise InputFileError(f"--output must end in {', '.join(SUFFIXES)}, got {output}")
        self.output = output
        self.key = key
        self.classes = list(classes)
        self.parts = parts_dir(output)
        existing = [p for p in (output, self.parts) if p.exists()]
        if existing and overwrite:
            self.discard()
        elif existing and not resume:
            raise InputFileError(f"{existing[0]} exists: pass --resume to continue that run, or --overwrite to "
                                 "start again")
        self._handle: TextIO | None = None

    def discard(self) -> None:
        if self.parts.exists():
            shutil.rmtree(self.parts)
        self.output.unlink(missing_ok=True)

    def done(self) -> list[dict[str, Any]]:
        """Every record already written: the finished output, if any, then every part."""
        records: list[dict[str, Any]] = []
        if self.output.is_file():
            suffix = self.output.suffix.lower()
            if suffix == ".csv":
                records.extend(read_csv_records(self.output, self.classes))
            elif suffix == ".parquet":
                records.extend(read_parquet(self.output))
            else:
                records.extend(complete_lines(self.output, self.key)[0])
        for part in sorted(self.parts.glob("rank-*.jsonl")):
            records.extend(complete_lines(part, self.key)[0])
        return records

    def open_part(self, rank: int) -> None:
        """Start appending to this process's part, cutting a line a kill left half-written."""
        self.parts.mkdir(parents=True, exist_ok=True)
        path = self.parts / f"rank-{rank}.jsonl"
        if path.exists():
            _, good = complete_lines(path, self.key)
            with path.open("r+b") as handle:
                handle.truncate(good)
        self._handle = path.open("a", encoding="utf-8")

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Write whole lines and flush them to the OS (a killed process keeps them)."""
        assert self._handle is not None, "open_part first"
        self._handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close_part(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def finish(self, order: Sequence[str], complete: bool = True) -> list[dict[str, Any]]:
        """Merge everything written into OUTPUT in input order (each of ``order`` once), remove the parts.

        With ``complete`` an input without a record is an error (the run is not finished: resume it);
        without it such inputs are left out (crop plans exist only for readable images).
        """
        by_path: dict[str, dict[str, Any]] = {}
        for record in self.done():
            by_path.setdefault(record[self.key], record)
        missing = [p for p in order if p not in by_path]
        if missing and complete:
            raise InputFileError(f"{len(missing)} of {len(order)} inputs have no result yet (first: {missing[0]}); "
                                 "rerun with --resume")
        records = [by_path[p] for p in order if p in by_path]
        suffix = self.output.suffix.lower()
        if suffix == ".csv":
            with atomic_open(self.output, "w", encoding="utf-8", newline="") as handle:
                handle.write(csv_text(records))
        elif suffix == ".parquet":
            write_parquet(self.output, records)
        else:
            with atomic_open(self.output, "w", encoding="utf-8") as handle:
                handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        if self.parts.exists():
            shutil.rmtree(self.parts)
        return records
