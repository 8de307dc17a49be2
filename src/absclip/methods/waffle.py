"""WaffleCLIP (Roth et al.): CLIP-D sentences with random words / random characters as descriptors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..data import DataFiles
from ..errors import InputFileError
from ..text.prompts import clip_d_texts, waffle_descriptors
from .base import MethodOptions, TextInputs, register_method
from .clip import ClipMethod

WORD_LIST = "waffle_word_list.json"
"""The reference's word list, at the top of the shared data directory."""


@register_method
class WaffleMethod(ClipMethod):
    name = "waffle"
    seed_dependent_text = True  # the random descriptors are drawn from the seed
    imagenet_classnames = "classnames-openai"
    summary = ("CLIP-D sentences with random-word / random-character descriptors drawn from the seed; "
               "waffle_count=15, waffle_words=the reference's list")

    def __init__(self, options: MethodOptions | None = None) -> None:
        super().__init__(options)
        self.words = load_word_list(self.options.waffle_words)

    @classmethod
    def dataset_options(cls, files: DataFiles, imagenet_labels: bool) -> dict[str, Any]:
        words = files.shared(WORD_LIST)
        return {} if words is None else {"waffle_words": str(words)}

    def prepare(self, inputs: TextInputs) -> None:
        opts = self.options
        descriptors = waffle_descriptors(opts.waffle_count, opts.seed, self.words)
        texts = [clip_d_texts(name, descriptors, opts.clip_d_reference_quirk) for name in inputs.classes.names]
        self.text = inputs.embedder.mean_embeddings(texts)


def load_word_list(words: str | list[str] | None) -> list[str] | None:
    """The words themselves, read from a JSON list file when given a path."""
    if words is None or isinstance(words, list):
        return words
    try:
        data = json.loads(Path(words).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputFileError(f"{words}: not a JSON word list ({exc})") from exc
    if not isinstance(data, list) or not all(isinstance(w, str) for w in data):
        raise InputFileError(f"{words}: a word list must be a JSON list of strings")
    return data
