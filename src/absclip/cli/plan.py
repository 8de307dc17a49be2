"""``absclip plan``: sample and export crop plans without classifying."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from ..errors import InputFileError, UnsupportedError
from ..images import discover_images, image_to_tensor, iter_loaded
from ..views import write_plans
from .options import add_method_args, add_model_args, backbone_from_args, method_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="export the crop plans a method would use (JSONL)",
                       description="Sample crop plans (raw boxes + feature windows) for images and write them as "
                                   "absclip.plan v1 JSON lines; feed them back with `classify --plans`.")
    p.add_argument("inputs", nargs="+", help="image files and/or directories")
    p.add_argument("--output", type=Path, required=True, help="plans.jsonl to write (atomically)")
    p.add_argument("--batch-size", type=int, default=8, help="images per saliency batch (default: %(default)s)")
    add_model_args(p)
    add_method_args(p, default_method="abs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..views import ViewExtractor

    method = method_from_args(args)
    if not method.view_config().has_crops:
        raise UnsupportedError(f"method {args.method!r} uses the full image only: it has no crop plans")
    paths = discover_images(args.inputs)
    if not paths:
        raise InputFileError(f"no images found in {', '.join(args.inputs)}")
    extractor = ViewExtractor.for_method(method, backbone_from_args(args))
    plans, batch, keys = [], [], []
    for path, image, error in tqdm(iter_loaded(paths), total=len(paths), unit="img", disable=None):
        if error is not None:
            tqdm.write(f"absclip: skipped {error}", file=sys.stderr)
            continue
        batch.append(image_to_tensor(image))
        keys.append(str(path))
        if len(batch) >= args.batch_size:
            plans.extend(extractor.make_plans(batch, keys))
            batch, keys = [], []
    if batch:
        plans.extend(extractor.make_plans(batch, keys))
    write_plans(args.output, plans)
    print(f"absclip: wrote {len(plans)} plans to {args.output}", file=sys.stderr)
    return 0
