"""Labelling image collections: batched classification with streamed, resumable, mergeable output."""

from .run import Labeller, Record, error_record, split_for_rank
from .stream import ResultStream, complete_lines, csv_text, parts_dir

__all__ = ["Labeller", "Record", "ResultStream", "complete_lines", "csv_text", "error_record", "parts_dir",
           "split_for_rank"]
