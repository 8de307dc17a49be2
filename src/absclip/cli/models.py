"""``absclip models`` and ``absclip methods``: what can be created by name."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list open_clip architectures and their pretrained tags")
    p.add_argument("pattern", nargs="?", default="*", help="glob over architecture names, e.g. 'ViT-B*'")
    p.set_defaults(func=run_models)
    m = sub.add_parser("methods", help="list the methods with their setting (zero-shot, few-shot, test-time, "
                                       "transductive) and key settings")
    m.add_argument("pattern", nargs="?", default="*", help="glob over method names, e.g. 'tda*'")
    m.set_defaults(func=run_methods)


def run_models(args: argparse.Namespace) -> int:
    """Every open_clip architecture matching the pattern with its family and pretrained tags, then what
    each family supports (raw crops, feature crops, CLIP-attention saliency) and the other sources."""
    import fnmatch

    import open_clip

    from ..backbones.families import OPEN_CLIP_FAMILIES, open_clip_family

    seen: dict[str, None] = {}
    for name in open_clip.list_models():
        if fnmatch.fnmatch(name, args.pattern):
            family = open_clip_family(name)
            seen[family] = None
            tags = open_clip.list_pretrained_tags_by_model(name)
            print(f"open_clip:{name}	{family}	{', '.join(tags) or '-'}")
    print()
    print("family	raw crops	feature crops	clip saliency	description")
    for key in seen:
        name, raw, feature, saliency = OPEN_CLIP_FAMILIES[key].row()
        print(f"{key}	{raw}	{feature}	{saliency}	{name}")
    print()
    from ..backbones.hf_load import supported_model_types

    hf_types = ", ".join(supported_model_types())
    print(f"also: hf:HUB_ID or hf:/saved/dir (config.json model_type: {hf_types}); "
          "openai:/path/to/ViT-B-16.pt (OpenAI-format file); open_clip:ARCH --pretrained FILE")
    return 0


SETTINGS = {
    "zero-shot": "scored from the image and the class names or descriptions alone (classify, eval, reproduce)",
    "few-shot": "fitted per seed on K labelled images per class: eval --support DIR or --support-split train, "
                "--shots K",
    "test-time": "adapts over the unlabelled test stream, in an order drawn from the seed (eval, reproduce)",
    "transductive": "scored from the whole unlabelled test set at once; the order does not matter",
}
"""The settings in listing order, each with what it needs (the ``setting`` class fact of a method)."""


def method_listing(pattern: str = "*") -> list[tuple[str, str, str]]:
    """(name, setting, summary) of every registered method matching ``pattern``, grouped by setting in
    :data:`SETTINGS` order (unknown settings last), then by name; summaries folded onto one line."""
    from ..methods import METHODS

    order = {s: i for i, s in enumerate(SETTINGS)}
    rows = []
    for name in METHODS.names(pattern):
        cls = METHODS.get(name)
        setting = getattr(cls, "setting", "zero-shot")
        summary = " ".join(str(getattr(cls, "summary", "")).split()).removeprefix(f"{setting}: ")
        rows.append((name, setting, summary))
    return sorted(rows, key=lambda r: (order.get(r[1], len(order)), r[1], r[0]))


def run_methods(args: argparse.Namespace) -> int:
    rows = method_listing(args.pattern)
    if not rows:
        print(f"absclip: no method matches {args.pattern!r}; `absclip methods` lists them all", file=sys.stderr)
        return 1
    for name, setting, summary in rows:  # tab-separated, like `absclip models`: `cut -f1` gives the names
        print(f"{name}\t{setting}\t{summary or '(no summary)'}")
    print()
    for setting in dict.fromkeys(r[1] for r in rows):
        print(f"{setting}: {SETTINGS.get(setting, 'see the method module')}")
    return 0
