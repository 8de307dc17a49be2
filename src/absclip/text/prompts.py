"""Text builders for each text-side method: pure functions from class names (+ descriptions) to texts."""

from __future__ import annotations

import json
import random
import string
from collections.abc import Sequence
from pathlib import Path

from ..errors import InputFileError

CLIP_PROMPT = "a photo of a {}."
_CLIP_D_VERB_STARTS = ("has", "often", "typically", "may", "can")


def format_template(template: str, name: str) -> str:
    """Templates use ``{}`` (CLIP_benchmark / CuPL style) or ``{c}``."""
    return template.replace("{c}", "{}").format(name)


def imagenet_templates() -> list[str]:
    """OpenAI's 80 ImageNet prompt templates, as open_clip ships them."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]


def load_templates(spec: str | Path) -> list[str]:
    """``imagenet`` (OpenAI's 80) or a JSON list / text file of templates containing ``{}``."""
    if str(spec) == "imagenet":
        return imagenet_templates()
    path = Path(spec)
    if not path.is_file():
        raise InputFileError(f"template file not found: {path} (or use 'imagenet' for OpenAI's 80)")
    text = path.read_text(encoding="utf-8")
    try:
        templates = json.loads(text) if path.suffix == ".json" else [t for t in text.splitlines() if t.strip()]
    except json.JSONDecodeError as exc:
        raise InputFileError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(templates, list) or not templates or not all(isinstance(t, str) for t in templates):
        raise InputFileError(f"{path}: expected a non-empty list of template strings")
    bad = [t for t in templates if "{}" not in t and "{c}" not in t]
    if bad:
        raise InputFileError(f"{path}: templates without a '{{}}' slot for the class name: {bad[:3]}")
    return templates


def clip_d_sentence(descriptor: str, reference_a_quirk: bool = False) -> str:
    """Menon & Vondrick's descriptor-to-clause rule.

    The reference tests ``startswith('a')``, so "antennae" becomes "which is antennae"; that quirk is
    kept behind ``reference_a_quirk`` to reproduce published numbers. Otherwise the first word must be
    the article "a" or "an".
    """
    words = descriptor.split()
    first = words[0].lower() if words else ""
    is_article = descriptor.startswith("a") if reference_a_quirk else first in ("a", "an")
    if is_article:
        return f"which is {descriptor}"
    if descriptor.startswith(_CLIP_D_VERB_STARTS):
        return f"which {descriptor}"
    if descriptor.startswith("used"):
        return f"which is {descriptor}"
    return f"which has {descriptor}"


def clip_d_texts(name: str, descriptors: Sequence[str], reference_a_quirk: bool = False) -> list[str]:
    return [f"{name}, {clip_d_sentence(d, reference_a_quirk)}" for d in descriptors]


def bpe_word_list(min_length: int = 3) -> list[str]:
    """Whole alphabetic words from the CLIP BPE vocabulary that open_clip ships (offline word source)."""
    import gzip

    from open_clip.tokenizer import default_bpe

    with gzip.open(default_bpe()) as handle:
        merges = handle.read().decode("utf-8").split("\n")[1:]
    words = {"".join(m.split()).removesuffix("</w>") for m in merges if m.endswith("</w>")}
    return sorted(w for w in words if w.isalpha() and w.isascii() and len(w) >= min_length)


def waffle_descriptors(count: int, seed: int, words: Sequence[str] | None = None) -> list[str]:
    """WaffleCLIP's random descriptors, shared by all classes: ``count`` pairs of random words and
    ``count`` strings of random characters with the same lengths as those words."""
    pool = [w for w in (words if words is not None else bpe_word_list()) if w.strip()]
    if len(pool) < 2:
        raise InputFileError("the Waffle word list needs at least two non-empty words")
    rng = random.Random(seed)
    word_pairs = [(rng.choice(pool), rng.choice(pool)) for _ in range(count)]
    letters = string.ascii_lowercase
    char_pairs = [("".join(rng.choice(letters) for _ in a), "".join(rng.choice(letters) for _ in b))
                  for a, b in word_pairs]
    return [f"{a} {b}" for a, b in word_pairs + char_pairs]
