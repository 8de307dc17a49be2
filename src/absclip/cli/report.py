"""``absclip report``: one self-contained HTML page of classify or eval results."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import InputFileError

DESCRIPTION = """Write one HTML file to look at results in a browser; it fetches nothing.

From `absclip classify --output RESULTS.jsonl` (or .csv): a grid of the images with their top-k labels
and score bars, a filter by predicted label, a search by file name, sorting by confidence or by the margin
between the top two labels, and the unreadable images with their errors. With --plans (what classify
wrote with --save-plans), clicking an image draws the raw boxes and feature windows ABS chose.

From `absclip eval --output-dir DIR` (the directory, its results.jsonl or summary.json): the methods side
by side, mean ± std over seeds, with plots; with per-sample predictions (DIR/predictions.jsonl), also
per-class accuracy, the most confused class pairs and the images two methods disagree on (eval writes
it); with --plans from `absclip plan ROOT --method abs --seed S` (the eval's options and the seed shown),
those images show the crops ABS scored.

Examples:
  absclip report out.jsonl --output report.html --plans plans.jsonl
  absclip report results/cub --output cub.html
"""

CLASSIFY_ONLY = ("thumbs", "page_size")
EVAL_ONLY = ("predictions", "compare", "max_images")


def register(sub: argparse._SubParsersAction) -> None:
    from ..html.classify import DEFAULT_INPUT_SIZE, DEFAULT_PAGE_SIZE, THUMB_MODES
    from ..html.evaluation import DEFAULT_MAX_IMAGES
    from ..html.thumbs import DEFAULT_THUMB_SIZE

    p = sub.add_parser("report", help="an HTML page of classify or eval results, with the crops ABS chose",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path,
                   help="classify results (.jsonl or .csv), or an eval output: its directory, results.jsonl "
                        "or summary.json")
    p.add_argument("-o", "--output", type=Path, required=True, help="the HTML file to write (atomically)")
    p.add_argument("--kind", choices=["auto", "classify", "eval"], default="auto",
                   help="what SOURCE is; auto tells from the file (default: %(default)s)")
    p.add_argument("--plans", type=Path, default=None,
                   help="crop plans (absclip.plan JSONL from --save-plans or `absclip plan`) to draw over images")
    p.add_argument("--root", type=Path, default=None,
                   help="directory the image paths in the results are relative to (default: the current "
                        "directory, then the results file's directory)")
    p.add_argument("--title", default=None, help="page title (default: from the input)")
    p.add_argument("--thumb-size", type=int, default=DEFAULT_THUMB_SIZE,
                   help="longer side of the JPEG thumbnails, px (default: %(default)s)")
    p.add_argument("--input-size", type=int, default=DEFAULT_INPUT_SIZE,
                   help="the model's input side, to draw feature windows on the image (default: %(default)s)")
    p.add_argument("--thumbs", choices=THUMB_MODES, default=None,
                   help="classify: put thumbnails in the page (embed) or in OUTPUT_STEM_files/ beside it "
                        "(folder, a smaller page) (default: embed)")
    p.add_argument("--page-size", type=int, default=None,
                   help=f"classify: images per page (default: {DEFAULT_PAGE_SIZE})")
    p.add_argument("--predictions", type=Path, default=None,
                   help="eval: per-sample predictions JSONL (default: SOURCE_DIR/predictions.jsonl if present)")
    p.add_argument("--compare", default=None,
                   help="eval: two methods whose disagreements to show, 'a,b' (default: clip,abs when both ran)")
    p.add_argument("--max-images", type=int, default=None,
                   help=f"eval: disagreement images shown (default: {DEFAULT_MAX_IMAGES})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..html import detect_kind, write_report

    if args.output.suffix.lower() not in (".html", ".htm"):
        raise InputFileError(f"--output must end in .html, got {args.output}")
    if args.thumb_size < 16:
        raise InputFileError("--thumb-size must be at least 16")
    kind = detect_kind(args.source) if args.kind == "auto" else args.kind
    misplaced = [name for name in (EVAL_ONLY if kind == "classify" else CLASSIFY_ONLY)
                 if getattr(args, name) is not None]
    if misplaced:
        flags = ", ".join("--" + name.replace("_", "-") for name in misplaced)
        raise InputFileError(f"{flags}: not for {kind} results ({args.source})")
    options: dict[str, Any] = {"plans": args.plans, "root": args.root, "title": args.title,
                               "input_size": args.input_size, "thumb_size": args.thumb_size}
    if kind == "classify":
        if args.thumbs is not None:
            options["thumbs"] = args.thumbs
        if args.page_size is not None:
            options["page_size"] = args.page_size
    else:
        if args.compare is not None:
            pair = [m.strip() for m in args.compare.split(",") if m.strip()]
            if len(pair) != 2:
                raise InputFileError(f"--compare needs two methods 'a,b', got {args.compare!r}")
            options["compare"] = pair
        if args.predictions is not None:
            options["predictions"] = args.predictions
        if args.max_images is not None:
            options["max_images"] = args.max_images
    _, path = write_report(args.source, args.output, kind=kind,
                           report=lambda line: print(f"absclip: note: {line}", file=sys.stderr), **options)
    print(f"absclip: wrote {kind} report {path} ({path.stat().st_size / 1e6:.2f} MB)", file=sys.stderr)
    return 0
