"""``absclip classify``: label a folder of images with any method; bad images are reported, not fatal."""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

from tqdm import tqdm

from ..errors import InputFileError
from ..images import discover_images, image_to_tensor, iter_loaded
from ..io import atomic_open
from ..text import load_classes, load_descriptions
from ..views import read_plans, write_plans
from .options import add_method_args, add_model_args, backbone_from_args, method_from_args

DESCRIPTION = """Classify images zero-shot among the given classes.

Examples:
  absclip classify photos/ --classes cat,dog,bird
  absclip classify photos/ --classes classes.txt --descriptions cupl.json --method abs --output out.jsonl
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="classify images or folders of images", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="image files and/or directories (searched recursively)")
    p.add_argument("--classes", required=True,
                   help="class names: a JSON list, a text file (one per line) or a comma list 'a,b,c'")
    p.add_argument("--descriptions", default=None,
                   help="JSON {class: [text, ...]} (CuPL / CLIP-D format) for clip-d, cupl, wca, mce, abs")
    p.add_argument("--describe", action="store_true",
                   help="write --descriptions with an LLM first (see `absclip describe`), or reuse it if present")
    p.add_argument("--describe-style", default="cupl", choices=["cupl", "clip-d"],
                   help="with --describe: CuPL sentences or CLIP-D feature phrases (default: %(default)s)")
    p.add_argument("--llm-endpoint", default=None,
                   help="with --describe: OpenAI-compatible base URL (default: $OPENAI_BASE_URL or OpenAI's API)")
    p.add_argument("--llm-model", default=None, help="with --describe: the LLM's model name")
    p.add_argument("--top-k", type=int, default=5,
                   help="labels reported per image, each with its probability: the softmax of the logits times "
                        "the model's logit scale (cosine methods) or averaged over views (soft matching) "
                        "(default: %(default)s)")
    p.add_argument("--output", type=Path, default=None,
                   help="write results to FILE.jsonl or FILE.csv (atomically); default: print to stdout")
    p.add_argument("--batch-size", type=int, default=8, help="images per batch (default: %(default)s)")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable image instead of reporting it")
    p.add_argument("--no-recursive", action="store_true", help="do not descend into sub-directories")
    p.add_argument("--plans", type=Path, default=None, help="use these crop plans (JSONL from `absclip plan`)")
    p.add_argument("--save-plans", type=Path, default=None, help="write the crop plans used to this JSONL file")
    add_model_args(p)
    add_method_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..classifier import ZeroShotClassifier

    if args.output is not None and args.output.suffix.lower() not in (".jsonl", ".csv"):
        raise InputFileError(f"--output must end in .jsonl or .csv, got {args.output}")
    paths = discover_images(args.inputs, recursive=not args.no_recursive)
    if not paths:
        raise InputFileError(f"no images found in {', '.join(args.inputs)}")
    classes = load_classes(args.classes)
    if args.describe:
        args.descriptions = str(_describe(args, classes))
    descriptions = load_descriptions(classes, args.descriptions) if args.descriptions else None
    if descriptions is not None:
        for message in descriptions.resolution.messages(classes):
            print(f"absclip: note: {message}", file=sys.stderr)
    plans = read_plans(args.plans) if args.plans else None
    method = method_from_args(args)
    clf = ZeroShotClassifier(backbone_from_args(args), method, classes, descriptions, cache_dir=args.cache_dir,
                             batch_size=args.batch_size)
    records: list[dict] = []
    used_plans = []
    batch: list[tuple[Path, object]] = []

    def flush() -> None:
        if not batch:
            return
        keys = [str(p) for p, _ in batch]
        pred = clf.predict([t for _, t in batch], keys=keys, plans=plans)
        probs, idx = pred.topk(args.top_k)
        for (path, _), pr, ix in zip(batch, probs.tolist(), idx.tolist(), strict=True):
            top = [{"label": classes[i], "index": i, "score": s} for i, s in zip(ix, pr, strict=True)]
            records.append({"path": str(path), "label": classes[ix[0]], "score": pr[0], "top_k": top, "error": None})
        used_plans.extend(pred.plans)
        batch.clear()

    failed = 0
    progress = tqdm(iter_loaded(paths, strict=args.strict), total=len(paths), unit="img", desc=args.method,
                    disable=None)
    for path, image, error in progress:
        if error is not None:
            failed += 1
            tqdm.write(f"absclip: skipped {error}", file=sys.stderr)
            records.append({"path": str(path), "label": None, "score": None, "top_k": [], "error": error.reason})
            continue
        batch.append((path, image_to_tensor(image)))
        if len(batch) >= args.batch_size:
            flush()
    flush()
    order = {str(p): i for i, p in enumerate(paths)}
    records.sort(key=lambda r: order[r["path"]])
    _write(records, args.output)
    if args.save_plans and used_plans:
        write_plans(args.save_plans, used_plans)
    print(f"absclip: classified {len(paths) - failed} images, {failed} unreadable"
          + (f"; results in {args.output}" if args.output else ""), file=sys.stderr)
    return 0


def _describe(args: argparse.Namespace, classes) -> Path:
    from ..describe import ensure_descriptions

    if not args.descriptions:
        raise InputFileError("--describe needs --descriptions FILE.json: where to write (or find) the descriptions")
    settings: dict[str, object] = {"style": args.describe_style}
    if args.llm_endpoint:
        settings["endpoint"] = args.llm_endpoint
    if args.llm_model:
        settings["model"] = args.llm_model
    return ensure_descriptions(classes, Path(args.descriptions),
                               report=lambda line: print(f"absclip: {line}", file=sys.stderr), **settings)


def _write(records: list[dict], output: Path | None) -> None:
    if output is None:
        for r in records:
            if r["error"]:
                print(f"{r['path']}\tERROR\t{r['error']}")
            else:
                top = ", ".join(f"{t['label']} ({t['score']:.3f})" for t in r["top_k"])
                print(f"{r['path']}\t{top}")
        return
    if output.suffix.lower() == ".jsonl":
        import json

        with atomic_open(output, "w", encoding="utf-8") as handle:
            for r in records:
                handle.write(json.dumps(r, ensure_ascii=False) + "\n")
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "label", "score", "top_k_labels", "top_k_scores", "error"])
    for r in records:
        writer.writerow([r["path"], r["label"] or "", "" if r["score"] is None else f"{r['score']:.6f}",
                         "|".join(t["label"] for t in r["top_k"]),
                         "|".join(f"{t['score']:.6f}" for t in r["top_k"]), r["error"] or ""])
    with atomic_open(output, "w", encoding="utf-8", newline="") as handle:
        handle.write(buffer.getvalue())
