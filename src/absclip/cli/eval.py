"""``absclip eval``: benchmark methods × seeds on a labelled dataset; results as JSONL, JSON and Markdown."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

from ..errors import InputFileError
from .adapt_options import adapt_options_from_args, add_adapt_args
from .options import add_method_args, add_model_args, backbone_from_args, method_from_args

DESCRIPTION = """Evaluate zero-shot methods on a labelled dataset, several seeds, one view pass per seed.

Per-image view embeddings are cached (resumable: an interrupted run continues where it stopped).
Under torchrun, each process (one per GPU) extracts the views of its own cache shards; rank 0
then scores every method and writes the results.

Examples:
  absclip eval --dataset folder --root pets/ --descriptions cupl.json --methods clip,cupl,abs --seeds 0,1,2
  absclip eval --dataset imagenet-r --root /data/imagenet-r --data-dir shared/data --methods clip,abs
  absclip eval --dataset folder --root test/ --support train/ --shots 4 --descriptions cupl.json \
      --methods clip,tip-adapter,tip-adapter+mce,gda,tda,tda+mce --seeds 0,1
  absclip eval --dataset cub --root /data/cub --data-dir shared/data --support-split train --shots 16 \
      --methods clip,tip-adapter,gda --seeds 0,1,2
  torchrun --nproc_per_node 8 -m absclip eval --dataset imagenet --root /data/imagenet --data-dir shared/data \
      --methods clip,cupl,wca,abs --seeds 0,1,2 --batch-size 32 --workers 8
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="benchmark methods on a labelled dataset", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="dataset name (folder, imagenet, imagenet-r, cub, ...)")
    p.add_argument("--root", required=True, type=Path, help="where the dataset's images are")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="shared data directory with classnames/ and descriptions/ (for class names and, "
                        "without --descriptions, each dataset's cupl.json / clip-d.json)")
    p.add_argument("--classes", default=None, help="class names in label order (file or comma list)")
    p.add_argument("--descriptions", default=None, help="JSON {class: [text, ...]} used by every method that needs it")
    p.add_argument("--methods", default="clip", help="comma list of methods (default: %(default)s)")
    p.add_argument("--seeds", default="0", help="comma list of seeds (default: %(default)s)")
    p.add_argument("--output-dir", type=Path, default=Path("eval-results"),
                   help="where results.jsonl, summary.json and results.md go (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="evaluate N samples spread over the split")
    p.add_argument("--batch-size", type=int, default=8, help="images per view-extraction call (default: %(default)s)")
    p.add_argument("--shard-size", type=int, default=64, help="images per view-cache shard (default: %(default)s)")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader processes decoding images, per GPU process; 0 decodes in the main process "
                        "(default: min(4, CPUs))")
    p.add_argument("--view-cache", default=None,
                   help="view-embedding cache directory (default: CACHE_DIR/views; '' disables)")
    add_model_args(p)
    add_method_args(p, default_method=None)  # --methods and --seeds lists instead of one --method / --seed
    add_adapt_args(p)
    p.set_defaults(func=run)


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputFileError(f"{what} expects a comma list of integers, got {text!r}") from None
    if not values:
        raise InputFileError(f"{what} is empty")
    return values


def view_cache_dir(args: argparse.Namespace) -> Path | None:
    """--view-cache, else the views/ folder of the text cache; '' (either) disables it."""
    if args.view_cache is not None:
        return Path(args.view_cache) if args.view_cache else None
    if args.cache_dir == "":
        return None
    from ..paths import cache_root

    return (Path(args.cache_dir) if args.cache_dir else cache_root()) / "views"


def _warner() -> Callable[[str], None]:
    def warn(msg: str) -> None:
        print(f"absclip: {msg}", file=sys.stderr)

    return warn


def _progress_printer(rank: int | None) -> Callable[[int, int, int], None]:
    label = "" if rank is None else f"rank {rank}: "

    def show(seed: int, done: int, total: int) -> None:
        print(f"absclip: {label}seed {seed}: {done}/{total} images", file=sys.stderr)

    return show


def run(args: argparse.Namespace) -> int:
    from ..adapt import match_support
    from ..data import DataFiles, create_dataset
    from ..evaluate import Evaluator, make_records, select_subset, write_outputs
    from ..evaluate.predictions import prediction_records
    from ..methods import create_method, list_methods
    from ..parallel import DistributedContext, default_workers, process_group
    from ..text import load_classes, load_descriptions

    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    known = list_methods(adaptive=True)
    unknown = [m for m in names if m not in known]
    if unknown or not names:
        raise InputFileError(f"--methods: unknown {unknown or 'empty'}; known: {', '.join(known)}")
    adapt = adapt_options_from_args(args)
    methods = {}
    for name in names:  # only the adaptive methods take the adapt options, so no other record claims them
        method = method_from_args(args, name)
        methods[name] = (create_method(name, dataclasses.replace(method.options, adapt=adapt))
                         if getattr(method, "setting", "zero-shot") != "zero-shot" else method)
    few_shot = [n for n, m in methods.items() if getattr(m, "needs_support", False)]
    if few_shot and adapt.support is None:
        raise InputFileError(f"--methods {','.join(few_shot)}: few-shot methods need --support DIR (an ImageFolder "
                             "of labelled images, one folder per class) or --support-split train, and --shots K")
    if adapt.support is not None and not few_shot:
        print("absclip: --support / --support-split is not used: none of --methods is a few-shot method",
              file=sys.stderr)
    seeds = _int_list(args.seeds, "--seeds")
    if args.limit is not None and args.limit < 1:
        raise InputFileError("--limit must be positive")
    if args.workers is not None and args.workers < 0:
        raise InputFileError("--workers must be 0 or more")
    dist = DistributedContext.from_env()  # None unless started by torchrun with several processes
    if dist is not None:
        args.device = dist.select_device(args.device)
    class_names = load_classes(args.classes) if args.classes else None
    dataset = select_subset(create_dataset(args.dataset, args.root, class_names=class_names,
                                           data_dir=args.data_dir), args.limit)
    if not len(dataset):
        raise InputFileError(f"{args.dataset}: no images under {args.root}")

    warn = _warner()
    pools = {adapt.support: match_support(adapt.support, dataset, warn)} if few_shot and adapt.support else {}

    files = DataFiles(args.dataset, args.data_dir)
    descriptions = {}
    loaded: dict[str, object] = {}
    for name, method in methods.items():
        if method.description_kind is None:
            descriptions[name] = None
            continue
        source = Path(args.descriptions) if args.descriptions else files.require_descriptions(method.description_kind)
        if str(source) not in loaded:
            loaded[str(source)] = load_descriptions(dataset.classes, source)
        descriptions[name] = loaded[str(source)]

    evaluator = Evaluator(
        backbone=backbone_from_args(args), dataset=dataset, methods=methods, seeds=seeds,
        descriptions=descriptions,  # type: ignore[arg-type]
        view_cache=view_cache_dir(args), shard_size=args.shard_size, batch_size=args.batch_size,
        text_cache=args.cache_dir,
        progress=_progress_printer(None if dist is None else dist.rank) if getattr(args, "verbose", False) else None,
        workers=default_workers() if args.workers is None else args.workers, distributed=dist,
        support_pools=pools, warn=warn,
    )
    with process_group(dist, evaluator.backbone.device):
        result = evaluator.run()
    if result is None:  # a torchrun rank other than 0: its views are in the cache, rank 0 reports
        return 0
    records = make_records(result, args.model, args.pretrained,  # with each run's support draw / stream
                           {"saliency": args.saliency, "descriptions": args.descriptions, "limit": args.limit})
    paths = write_outputs(args.output_dir, records, result.failed, prediction_records(result))
    if result.details:
        from ..io import write_jsonl

        paths["adaptation"] = Path(args.output_dir) / "adaptation.jsonl"
        write_jsonl(paths["adaptation"], [{"seed": d.seed, "kind": d.kind, **d.data} for d in result.details])
    else:  # an earlier run's draws and streams are not this run's
        (Path(args.output_dir) / "adaptation.jsonl").unlink(missing_ok=True)
    print(f"absclip: evaluated {len(methods)} method(s) × {len(seeds)} seed(s) on {len(dataset)} images "
          f"({len(result.failed)} unreadable); results in {paths['markdown']}", file=sys.stderr)
    return 0
