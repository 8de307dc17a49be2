"""``absclip models`` and ``absclip methods``: what can be created by name."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list open_clip architectures and their pretrained tags")
    p.add_argument("pattern", nargs="?", default="*", help="glob over architecture names, e.g. 'ViT-B*'")
    p.set_defaults(func=run_models)
    m = sub.add_parser("methods", help="list the zero-shot methods")
    m.set_defaults(func=run_methods)


def run_models(args: argparse.Namespace) -> int:
    import fnmatch

    import open_clip

    for name in open_clip.list_models():
        if fnmatch.fnmatch(name, args.pattern):
            tags = open_clip.list_pretrained_tags_by_model(name)
            print(f"open_clip:{name}\t{', '.join(tags) or '-'}")
    print("also: openai:/path/to/ViT-B-16.pt (OpenAI-format file), hf:HUB_ID or hf:/saved/dir")
    return 0


def run_methods(args: argparse.Namespace) -> int:
    import sys

    from ..methods import METHODS

    for name in METHODS.names():
        doc = (sys.modules[METHODS.get(name).__module__].__doc__ or "").strip()
        print(f"{name}\t{doc.splitlines()[0] if doc else ''}")
    return 0
