"""The paper's published numbers (``resources/published.json``) and which of its backbones a model is."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

PUBLISHED_FILE = "published.json"


@dataclass
class Published:
    """The paper's numbers (``resources/published.json``): a lookup by table, backbone, dataset, row."""

    entries: list[dict[str, Any]]

    def entry(self, table: str | None, backbone: str | None, dataset: str, method: str | None,
              metric: str = "top1") -> dict[str, Any] | None:
        if table is None or backbone is None or method is None:
            return None
        for e in self.entries:
            if (e["table"], e["backbone"], e["dataset"], e["method"], e.get("metric", "top1")) == (
                    table, backbone, dataset, method, metric):
                return e
        return None

    def value(self, table: str | None, backbone: str | None, dataset: str, method: str | None,
              metric: str = "top1") -> float | None:
        e = self.entry(table, backbone, dataset, method, metric)
        return None if e is None else float(e["value"])


def load_published(path: str | Path | None = None) -> Published:
    """The packaged published numbers, or those of ``path`` (same schema)."""
    if path is None:
        text = resources.files("absclip").joinpath("resources").joinpath(PUBLISHED_FILE).read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    return Published(list(json.loads(text)["entries"]))


_OTHER_VLMS = {"align": "ALIGN", "altclip": "AltCLIP", "groupvit": "GroupViT", "blip-2": "BLIP-2"}
"""The paper's names (Tables 8 and 10) of the other VLMs, by transformers model type."""
_HUB_TYPES = {"kakaobrain/align-base": "align", "BAAI/AltCLIP": "altclip", "nvidia/groupvit-gcc-yfcc": "groupvit"}
"""The public checkpoints the paper names, for hub ids given without a local config.json."""

_VIT = re.compile(r"vit-?([bl])[-/]?(\d+)(?![\d-])", re.IGNORECASE)
_HF_VIT = re.compile(r"openai/clip-vit-(base|large)-patch(\d+)$", re.IGNORECASE)


def published_backbone(model: str, pretrained: str | None) -> str | None:
    """The paper's backbone name ("ViT-B/16") for OpenAI CLIP weights, else None (no comparison).

    The published numbers are for OpenAI's CLIP weights only: an open_clip architecture with other
    pretrained weights, or a hub model not from ``openai/``, gets no published column.
    """
    prefix, _, rest = model.partition(":")
    if not rest:
        prefix, rest = "openai", model
    prefix = prefix.lower()
    if prefix == "open_clip" and (pretrained or "").lower() != "openai":
        return None
    if prefix == "hf":
        m = _HF_VIT.search(rest)
        if m is not None:
            return f"ViT-{m.group(1)[0].upper()}/{m.group(2)}"
        return _OTHER_VLMS.get(_hf_model_type(rest) or "")
    if prefix not in ("open_clip", "openai"):
        return None
    m = _VIT.search(Path(rest).name if prefix == "openai" else rest)
    return None if m is None else f"ViT-{m.group(1).upper()}/{m.group(2)}"


def _hf_model_type(identifier: str) -> str | None:
    """``model_type`` of a saved transformers directory's config.json, or of a known hub id; else None."""
    config = Path(identifier).expanduser() / "config.json"
    if config.is_file():
        try:
            value = json.loads(config.read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError, AttributeError):
            return None
        return value if isinstance(value, str) else None
    return _HUB_TYPES.get(identifier)
