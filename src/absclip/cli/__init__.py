"""The ``absclip`` command: thin subcommands that parse arguments and call the library."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence

from ..errors import AbsclipError

SUBCOMMANDS = ("classify", "plan", "visualize", "describe", "eval", "reproduce", "models", "report")
VERBOSE_HELP = "log what is loaded and cached, including the libraries' own loading reports"


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="absclip",
        description="Training-free zero-shot image classification with vision-language models: ABS "
                    "(attention-based selection) and the CLIP, CLIP-E, CLIP-D, Waffle, CuPL, WCA and MCE "
                    "baselines. Run `absclip COMMAND --help` for each command's options.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    for subparser in sub.choices.values():
        # also accepted after the command (`absclip classify ... -v`); SUPPRESS leaves the top-level value in
        # place when the flag is not repeated here (a plain default False would overwrite `absclip -v classify`)
        subparser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
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
    """open_clip, huggingface_hub and transformers log and draw progress bars while loading; keep the
    output ours: one line per message, and without ``-v`` only errors.

    huggingface_hub gives its logger a handler of its own when it is imported and also lets records
    propagate to the root handler, so each hub message printed twice (bare, then with our prefix). As its
    own docs advise for a configured root logger, drop its handler: hub messages go through ours, once.

    transformers is not imported here (it takes about a second, too much for a command that may fail
    at once): its verbosity and progress bars follow environment variables read when it is imported, and
    only a transformers already imported (the Python API, tests) is set through its functions."""
    if not verbose:
        # read by huggingface_hub and by transformers when they are first imported
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        # transformers' LOAD REPORT tables (unexpected / missing keys) are warnings
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    hub_logger = logging.getLogger("huggingface_hub")
    with contextlib.suppress(ImportError):
        import huggingface_hub.utils.logging  # noqa: F401 (importing it is what installs its handler)
    for handler in list(hub_logger.handlers):
        hub_logger.removeHandler(handler)
    hub_logger.propagate = True
    hub_logger.setLevel(logging.INFO if verbose else logging.ERROR)
    if verbose:
        return
    logging.getLogger().setLevel(logging.CRITICAL)
    transformers = sys.modules.get("transformers")
    if transformers is not None:
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()

if __name__ == "__main__":
    sys.exit(main())
