"""``absclip classify``: label a folder of images with any method; bad images are reported, not fatal."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..errors import InputFileError, UnsupportedError
from ..images import discover_images
from ..text import load_classes, load_descriptions
from ..views import read_plans
from .options import add_method_args, add_model_args, at_least, backbone_from_args, method_from_args

DESCRIPTION = """Classify images zero-shot among the given classes.

With --output, results are streamed to disk batch by batch: a run that is killed (OOM, preemption,
Ctrl-C) continues with --resume, skipping what is done, and the finished file holds every input once,
in input order. Under torchrun each process labels its share and rank 0 merges the parts.

Transductive methods (zpe, zpe+wca, zpe+mce, zpe+abs, fudd) are fitted on all the images given, in two
passes: pass 1 observes every image (kept in OUTPUT.parts/observed/ with --output), pass 2 fits the
method on all of them and writes the labels; --resume continues either pass without redoing finished
work. They run in one process (no torchrun, no --engine ray).

Examples:
  absclip classify photos/ --classes cat,dog,bird
  absclip classify photos/ --classes classes.txt --descriptions cupl.json --method abs --output out.jsonl
  absclip classify archive/ --classes classes.txt --output labels.jsonl --workers 8 --resume
  torchrun --nproc_per_node 8 -m absclip classify archive/ --classes classes.txt --output labels.jsonl
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="classify images or folders of images", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", help="image files and/or directories (searched recursively)")
    p.add_argument("--files-from", type=Path, default=None,
                   help="a text file listing one image path per line (in addition to INPUTS)")
    p.add_argument("--classes", required=True,
                   help="class names: a JSON list, a text file (one per line) or a comma list 'a,b,c'")
    p.add_argument("--descriptions", default=None,
                   help="JSON {class: [text, ...]} (CuPL / CLIP-D format) for clip-d, cupl, wca, mce, abs")
    p.add_argument("--describe", action="store_true",
                   help="write --descriptions with an LLM first (see `absclip describe`), or reuse it if present")
    p.add_argument("--describe-style", default="cupl", choices=["cupl", "clip-d"],
                   help="with --describe: CuPL sentences or CLIP-D feature phrases (default: %(default)s)")
    p.add_argument("--llm-endpoint", default=None,
                   help="with --describe and the fudd methods: OpenAI-compatible base URL "
                        "(default: $OPENAI_BASE_URL or OpenAI's API)")
    p.add_argument("--llm-model", default=None, help="with --describe and the fudd methods: the LLM's model name")
    p.add_argument("--top-k", type=int, default=5,
                   help="labels reported per image, each with its probability: the softmax of the logits times "
                        "the model's logit scale (cosine methods) or averaged over views (soft matching) "
                        "(default: %(default)s)")
    p.add_argument("--output", type=Path, default=None,
                   help="write results to FILE.jsonl or FILE.csv, streamed and resumable; default: print to stdout")
    p.add_argument("--resume", action="store_true", help="continue the run that wrote --output, skipping done inputs")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output instead of resuming")
    p.add_argument("--batch-size", type=int, default=8, help="images per batch (default: %(default)s)")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader processes decoding images ahead of the model; 0 decodes in the main process "
                        "(default: min(4, CPUs))")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable image instead of reporting it")
    p.add_argument("--no-recursive", action="store_true", help="do not descend into sub-directories")
    p.add_argument("--plans", type=Path, default=None, help="use these crop plans (JSONL from `absclip plan`)")
    p.add_argument("--save-plans", type=Path, default=None, help="write the crop plans used to this JSONL file")
    p.add_argument("--report", type=Path, default=None,
                   help="also write a self-contained HTML report of the results (see `absclip report`); "
                        "with --save-plans it shows the crops")
    p.add_argument("--webdataset", action="append", default=[], metavar="PATTERN",
                   help="WebDataset tar shards, e.g. 'shards/{000..099}.tar' (repeatable; with or instead of INPUTS)")
    e = p.add_argument_group("Ray cluster (pip install 'absclip[ray]')")
    e.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="local: this process (or torchrun ranks); ray: Ray Data actors, one model each "
                        "(default: %(default)s)")
    e.add_argument("--ray-address", default=None,
                   help="a running cluster's address (HEAD:6379 or 'auto'); default: start a local Ray")
    e.add_argument("--ray-actors", type=int, default=1, help="model replicas (actors) (default: %(default)s)")
    e.add_argument("--gpus-per-actor", type=float, default=0.0,
                   help="GPUs each actor reserves; 1 on a GPU cluster (default: %(default)s)")
    add_model_args(p)
    add_method_args(p)
    p.set_defaults(func=run)


def _inputs(args: argparse.Namespace) -> list[Any]:
    """Image paths from INPUTS and --files-from (each once, in the order given), then WebDataset samples."""
    listed: list[str] = []
    if args.files_from is not None:
        try:
            text = args.files_from.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputFileError(f"--files-from {args.files_from}: cannot read it ({exc})") from None
        listed = [line.strip() for line in text.splitlines() if line.strip()]
    if not args.inputs and not listed and not args.webdataset:
        raise InputFileError("no inputs: give image files or folders, --files-from FILE or --webdataset PATTERN")
    found = discover_images(args.inputs, recursive=not args.no_recursive) if args.inputs else []
    items: list[Any] = list(dict.fromkeys([*map(str, found), *listed]))
    if args.webdataset:
        from ..webdataset import index_shards

        items.extend(sample.image for sample in index_shards(args.webdataset))
    if not items:
        raise InputFileError(f"no images found in {', '.join(args.inputs)}")
    return items


def run(args: argparse.Namespace) -> int:
    from ..labelling import ResultStream, split_for_rank
    from ..parallel import DistributedContext, process_group

    _check_args(args)
    dist = DistributedContext.from_env()
    transductive = _is_transductive(args.method)
    if transductive and (dist is not None or args.engine == "ray"):
        raise UnsupportedError(f"method {args.method!r} is fitted on all the images at once: run it in one "
                               "process, without torchrun or --engine ray")
    if (args.resume or dist is not None) and args.output is None:
        raise InputFileError("--resume and torchrun runs need --output FILE.jsonl (or .csv, .parquet)")
    if dist is not None and args.engine == "ray":
        raise InputFileError("--engine ray runs its own workers: start it without torchrun")
    inputs = _inputs(args)
    keys = [str(item) for item in inputs]
    classes = load_classes(args.classes)
    main = dist is None or dist.is_main
    # other ranks never discard: rank 0 does, before the first barrier
    streams = [ResultStream(out, classes, resume=args.resume or (args.overwrite and not main),
                            overwrite=args.overwrite and main, key=key)
               for out, key in ((args.output, "path"), (args.save_plans, "image")) if out is not None]
    if args.describe:
        args.descriptions = str(_describe(args, classes))
    descriptions = load_descriptions(classes, args.descriptions) if args.descriptions else None
    if descriptions is not None and main:
        for message in descriptions.resolution.messages(classes):
            print(f"absclip: note: {message}", file=sys.stderr)
    if descriptions is None and main:
        for message in classes.messages():
            print(f"absclip: warning: {message}", file=sys.stderr)
    method = method_from_args(args)
    if dist is not None:
        args.device = dist.select_device(args.device)
    results = streams[0] if args.output is not None else None
    plan_stream = streams[-1] if args.save_plans is not None else None
    rank, world = (0, 1) if dist is None else (dist.rank, dist.world_size)
    label = _ray_engine(args, classes, method) if args.engine == "ray" else _local_engine(args, classes, method,
                                                                                          descriptions, keys)
    with process_group(dist, label.device):
        _barrier(dist)  # rank 0 has discarded an output being overwritten
        done_records = results.done() if results is not None else []
        done = {r["path"] for r in done_records}
        _barrier(dist)  # every rank has read the same done set before any rank writes
        todo = [item for item, key in zip(inputs, keys, strict=True) if key not in done]
        mine = split_for_rank(todo, rank, world)
        if transductive and todo and results is not None and results.output.is_file():
            raise InputFileError(f"{args.output} was fitted on other images than these: a transductive method "
                                 "labels a set as a whole, so pass --overwrite to label this one")
        for stream in streams:
            stream.open_part(rank)
        progress = tqdm(total=len(mine), unit="img", desc=args.method, disable=None)
        try:
            for records, used in (label(inputs, done_records) if transductive else label(mine)):
                if results is not None:
                    results.append(records)
                else:
                    _print(records)
                if plan_stream is not None and used:
                    plan_stream.append([p.to_json() for p in used])
                progress.update(len(records))
        finally:
            progress.close()
            for stream in streams:
                stream.close_part()
        _barrier(dist)  # every part is complete
    if not main:
        return 0
    if results is None:
        print(f"absclip: classified {len(mine)} images", file=sys.stderr)
        return 0
    final = results.finish(keys)
    if plan_stream is not None:
        plan_stream.finish(keys, complete=False)
    if args.report is not None:
        from ..html import write_classify_report

        write_classify_report(final, args.report, plans=args.save_plans,
                              report=lambda line: print(f"absclip: {line}", file=sys.stderr))
    failed = sum(1 for r in final if r["error"])
    before = len(final) - len(todo)
    print(f"absclip: classified {len(final) - failed} images, {failed} unreadable"
          f"{f' ({before} done before)' if before else ''}; results in {args.output}", file=sys.stderr)
    return 0


def _check_args(args: argparse.Namespace) -> None:
    at_least(args.top_k, "--top-k")
    at_least(args.batch_size, "--batch-size")
    if args.workers is not None and args.workers < 0:
        raise InputFileError("--workers must be 0 or more")
    if args.resume and args.overwrite:
        raise InputFileError("--resume and --overwrite contradict each other: choose one")
    if args.save_plans is not None and args.save_plans.suffix.lower() != ".jsonl":
        raise InputFileError(f"--save-plans writes JSON lines: give it a .jsonl name, got {args.save_plans}")
    if args.engine == "ray" and (args.plans or args.save_plans):
        raise InputFileError("--plans and --save-plans work with the local engine only; drop --engine ray")
    if args.report is not None and args.output is None:
        raise InputFileError("--report is built from the results file: give --output FILE.jsonl too")
    if args.ray_address and args.engine != "ray":
        raise InputFileError("--ray-address needs --engine ray")
    at_least(args.ray_actors, "--ray-actors")


class _Engine:
    """Labels a list of inputs batch by batch: ``engine(inputs)`` yields (records, crop plans)."""

    def __init__(self, run: Callable[..., Iterator[tuple[list[dict], list]]], device: Any) -> None:
        self.run = run
        self.device = device

    def __call__(self, inputs: list[Any], *done: Any) -> Iterator[tuple[list[dict], list]]:
        """A transductive engine also takes the records already written (it labels the set as a whole)."""
        return self.run(inputs, *done)


def _skipped(path: str, reason: str) -> None:
    tqdm.write(f"absclip: skipped {path}: {reason}", file=sys.stderr)


def _local_engine(args: argparse.Namespace, classes: Any, method: Any, descriptions: Any,
                  keys: list[str]) -> _Engine:
    from ..classifier import ZeroShotClassifier
    from ..labelling import Labeller
    from ..parallel import default_workers

    clf = ZeroShotClassifier(backbone_from_args(args), method, classes, descriptions, cache_dir=args.cache_dir,
                             batch_size=args.batch_size)
    workers = default_workers() if args.workers is None else args.workers
    plans = read_plans(args.plans) if args.plans else None
    if clf.transductive:
        return _Engine(_transductive_labeller(args, clf, keys, workers, plans), clf.backbone.device)
    labeller = Labeller(clf, args.top_k, args.batch_size, workers, args.strict, plans, _skipped)
    return _Engine(labeller, clf.backbone.device)


def _is_transductive(name: str) -> bool:
    from ..methods import METHODS

    return getattr(METHODS.get(name), "setting", "zero-shot") == "transductive"


def _transductive_labeller(args: argparse.Namespace, clf: Any, keys: list[str], workers: int, plans: Any) -> Any:
    """Pass 1 (observe every image, kept in OUTPUT.parts/observed/ with --output), then pass 2 (fit, label)."""
    from ..labelling import ObservationStore, TransductiveLabeller, parts_dir, run_signature

    store = None
    if args.output is not None:
        model = f"{args.model}|{args.pretrained}|{args.dtype}"
        store = ObservationStore(parts_dir(args.output) / "observed",
                                 run_signature(clf.method, model, clf.classes.names, keys))
    bar = tqdm(unit="img", desc=f"{args.method} (pass 1: observe)", disable=None, leave=False)
    return TransductiveLabeller(clf, args.top_k, args.batch_size, workers, args.strict, plans, _skipped, store,
                                on_observed=bar.update)


def _ray_engine(args: argparse.Namespace, classes: Any, method: Any) -> _Engine:
    import torch

    from ..ray import LabelSpec, label_with_ray

    spec = LabelSpec(classes=list(classes.names), method=args.method, options=method.options, model=args.model,
                     pretrained=args.pretrained, device=args.device, dtype=args.dtype,
                     trust_checkpoint=args.trust_checkpoint, descriptions=args.descriptions,
                     cache_dir=args.cache_dir, top_k=args.top_k, batch_size=args.batch_size)

    def run(inputs: list[Any]) -> Iterator[tuple[list[dict], list]]:
        for records in label_with_ray(spec, inputs, args.ray_address, args.ray_actors, args.gpus_per_actor,
                                      _skipped):
            if args.strict and any(r["error"] for r in records):
                bad = next(r for r in records if r["error"])
                raise InputFileError(f"cannot load image {bad['path']}: {bad['error']}")
            yield records, []

    return _Engine(run, torch.device("cpu"))  # the driver only merges: its process group, if any, is CPU


def _barrier(dist: object) -> None:
    if dist is not None:
        dist.barrier()  # type: ignore[attr-defined]


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


def _escape(text: str) -> str:
    """Control characters (a file name may hold a newline or a tab) shown escaped, so a name cannot forge
    lines or columns of the listing."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def _print(records: list[dict]) -> None:
    for r in records:
        if r["error"]:
            print(f"{_escape(r['path'])}\tERROR\t{_escape(r['error'])}")
        else:
            top = ", ".join(f"{_escape(t['label'])} ({t['score']:.3f})" for t in r["top_k"])
            print(f"{_escape(r['path'])}\t{top}", flush=True)
