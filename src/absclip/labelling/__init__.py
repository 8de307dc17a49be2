"""Labelling image collections: batched classification with streamed, resumable, mergeable output."""

from .run import Labeller, Record, error_record, split_for_rank
from .stream import ResultStream, complete_lines, csv_text, parts_dir
from .transductive import ObservationStore, TransductiveLabeller, run_signature

__all__ = ["Labeller", "ObservationStore", "Record", "ResultStream", "TransductiveLabeller", "complete_lines",
           "csv_text", "error_record", "parts_dir", "run_signature", "split_for_rank"]
