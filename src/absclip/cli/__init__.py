"""The ``absclip`` command: thin subcommands that parse arguments and call the library."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from ..errors import AbsclipError

SUBCOMMANDS = ("classify", "plan", "visualize", "describe", "eval", "reproduce", "models")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="absclip",
        description="Training-free zero-shot image classification with vision-language models: ABS "
                    "(attention-based selection) and the CLIP, CLIP-E, CLIP-D, Waffle, CuPL, WCA and MCE "
                    "baselines. Run `absclip COMMAND --help` for each command's options.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is loaded and cached")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="absclip: %(message)s")
    _quiet_libraries(args.verbose)
    try:
        return int(args.func(args) or 0)
    except AbsclipError as exc:
        print(f"absclip: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("absclip: interrupted", file=sys.stderr)
        return 130


def _quiet_libraries(verbose: bool) -> None:
    """open_clip and transformers log and draw progress bars while loading; keep the output ours."""
    if verbose:
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.getLogger().setLevel(logging.CRITICAL)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:
        pass


if __name__ == "__main__":
    sys.exit(main())
