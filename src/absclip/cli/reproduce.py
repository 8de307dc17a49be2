"""``absclip reproduce PRESET``: run one of the ABS paper's tables or figures and compare with it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputFileError
from ..reproduce.presets import PRESETS
from .options import add_model_args, optional

if TYPE_CHECKING:
    from ..reproduce.runner import ReproduceConfig

DESCRIPTION = """Reproduce a table or figure of the ABS paper (ICML 2025) and compare with its published numbers.

Presets: {presets}

Datasets are looked up under --data-root (first folder that exists; --root KEY=DIR overrides one):
  imagenet, imagenet-v2 (or imagenetv2-matched-frequency-format-val), imagenet-sketch (or sketch),
  imagenet-r, imagenet-a, cub (or CUB_200_2011), oxford-pet (or oxford-iiit-pet), dtd, food101
  (or food-101), places365 — each in the layout its loader expects (see `absclip eval`).
Class names and descriptions come from --data-dir (classnames/, descriptions/<dataset>/cupl.json ...;
ImageNet falls back to cupl-base.json). A dataset whose folder is missing is reported and skipped
(--strict makes it an error).

Every row runs with MethodOptions' reference defaults plus clip_d_reference_quirk=true and
abs_sampler.pairing=independent (the reference code's behaviour); --set KEY=VALUE changes a setting
for every row (rows' own settings win), e.g. --set abs_sampler.crops=10 --set micro_batch=8.
Few-shot rows (GDA, Tip-Adapter) need a support set: --set adapt.support=DIR (e.g. ImageNet's train/)
or --set adapt.support_split=train (the dataset's own train split); --dry-run flags the rows without one,
and a run without one stops before any model loads.

Outputs in --output-dir: results.jsonl (one record per dataset/row/seed), results.md (the table laid out
like the paper, "ours (published, delta)"), published_comparison.json, and PRESET.png for sweeps and
timings.

Examples:
  absclip reproduce table4 --data-root /data --data-dir shared/data --dry-run
  absclip reproduce table1 --data-root /data --data-dir shared/data --dtype fp16 --device cuda
  absclip reproduce fig4 --data-root /data --data-dir shared/data --model open_clip:ViT-B-32 --limit 2000
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="reproduce a table or figure of the ABS paper",
                       description=DESCRIPTION.format(presets=", ".join(PRESETS)),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("preset", help="which table or figure: " + ", ".join(PRESETS))
    p.add_argument("--data-root", required=True, type=Path, help="folder holding one sub-folder per dataset")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="shared data directory with classnames/ and descriptions/")
    p.add_argument("--seeds", default="0", help="comma list of seeds (default: %(default)s)")
    p.add_argument("--output-dir", type=Path, default=None,
                   help="where results go (default: reproduce-results/PRESET)")
    p.add_argument("--limit", type=int, default=None, help="evaluate at most N images per dataset, spread evenly")
    p.add_argument("--dry-run", action="store_true", help="print the grid of runs; load no model and no data")
    p.add_argument("--json", action="store_true", help="with --dry-run: print the grid as JSON")
    p.add_argument("--strict", action="store_true", help="a missing dataset folder or description file is an error")
    p.add_argument("--datasets", default=None, help="comma list: run only these of the preset's datasets")
    p.add_argument("--set", dest="set_options", action="append", default=[], metavar="KEY=VALUE",
                   help="MethodOptions override for every row (dotted keys for nested ones); repeatable")
    p.add_argument("--root", dest="roots", action="append", default=[], metavar="KEY=DIR",
                   help="folder of dataset KEY, instead of DATA_ROOT/KEY; repeatable")
    p.add_argument("--descriptions", action="append", default=[], metavar="KEY=FILE",
                   help="description file every method uses on dataset KEY; repeatable")
    p.add_argument("--published-backbone", default="auto", type=optional,
                   help="which published column to compare with: auto (from --model/--pretrained: OpenAI "
                        "ViT-B/32, ViT-B/16, ViT-L/14), a name such as ViT-B/16, or none")
    p.add_argument("--batch-size", type=int, default=8, help="images per view-extraction call (default: %(default)s)")
    p.add_argument("--shard-size", type=int, default=64, help="images per view-cache shard (default: %(default)s)")
    p.add_argument("--view-cache", default=None,
                   help="view-embedding cache directory (default: CACHE_DIR/views; '' disables)")
    p.add_argument("--timing-images", type=int, default=None,
                   help="table9: images to time (default: 16, at most --limit)")
    add_model_args(p)
    p.set_defaults(func=run)


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputFileError(f"--seeds expects a comma list of integers, got {text!r}") from None
    if not seeds:
        raise InputFileError("--seeds is empty")
    return seeds


def config_from_args(args: argparse.Namespace) -> ReproduceConfig:
    """The runner's configuration from the parsed arguments (the runner is imported here: it loads torch)."""
    from ..reproduce.overrides import parse_assignments
    from ..reproduce.runner import ReproduceConfig
    from .eval import view_cache_dir

    if args.limit is not None and args.limit < 1:
        raise InputFileError("--limit must be positive")
    return ReproduceConfig(
        data_root=args.data_root, data_dir=args.data_dir, model=args.model,
        pretrained=args.pretrained,
        seeds=_seeds(args.seeds), output_dir=args.output_dir or Path("reproduce-results") / args.preset,
        limit=args.limit, strict=args.strict,
        overrides=dict(parse_assignments(args.set_options, "--set")),
        roots={k: Path(v) for k, v in parse_assignments(args.roots, "--root").items()},
        descriptions={k: Path(v) for k, v in parse_assignments(args.descriptions, "--descriptions").items()},
        datasets=None if not args.datasets else tuple(d.strip() for d in args.datasets.split(",") if d.strip()),
        published_backbone=args.published_backbone, batch_size=args.batch_size, shard_size=args.shard_size,
        view_cache=view_cache_dir(args), text_cache=args.cache_dir, timing_images=args.timing_images,
        verbose=bool(getattr(args, "verbose", False)),
    )


def run(args: argparse.Namespace) -> int:
    from ..reproduce.runner import dry_run, run_preset
    from .options import backbone_from_args

    if args.preset not in PRESETS:
        raise InputFileError(f"unknown preset {args.preset!r}; known: {', '.join(PRESETS)}")
    preset = PRESETS[args.preset]
    cfg = config_from_args(args)
    if args.dry_run:
        grid = dry_run(preset, cfg, out=None if args.json else print)
        if args.json:
            print(json.dumps(grid, indent=2, default=str))
        return 0
    report = run_preset(preset, cfg, lambda: backbone_from_args(args))
    print(report.markdown)
    print(f"absclip: {len(report.records)} records; results in {report.paths['markdown']}", file=sys.stderr)
    return 0
