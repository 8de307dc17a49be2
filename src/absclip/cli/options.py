"""Argument groups shared by the subcommands, and their translation into library objects."""

from __future__ import annotations

import argparse
import contextlib
import math
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..methods import Method, MethodOptions, create_method, list_methods
from ..methods.llm import LlmOptions  # FuDD
from ..views import AbsSamplerConfig, Pairing, RandomCropConfig
from ..views.augment import FEATURE_AUGMENTS, RAW_AUGMENTS

if TYPE_CHECKING:
    from ..backbones import Backbone


def optional(text: str) -> str | None:
    """An argparse type: 'none' (any case) means None, for options whose absence is a choice."""
    return None if text.lower() == "none" else text


def add_model_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--model", default="open_clip:ViT-B-16",
                   help="VLM: open_clip:ARCH, openai:/path/ViT-B-16.pt (OpenAI-format checkpoint), "
                        "hf:HUB_ID or hf:/saved/dir; a bare file means openai:, a bare directory hf: "
                        "(default: %(default)s)")
    g.add_argument("--pretrained", default="openai", type=optional,
                   help="for open_clip:ARCH, a pretrained tag or a local checkpoint file "
                        "(.safetensors/.bin/.pt); 'none' for random weights (default: %(default)s)")
    g.add_argument("--trust-checkpoint", action="store_true",
                   help="allow loading checkpoint files that contain code, which runs on load (TorchScript "
                        "archives, pickles of Python objects besides tensors); for trusted sources only")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, or auto (default: %(default)s)")
    g.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="model precision (default: %(default)s)")
    g.add_argument("--cache-dir", default=None,
                   help="text-embedding cache (default: $ABSCLIP_CACHE or ~/.cache/absclip; '' disables)")


def add_method_args(parser: argparse.ArgumentParser, default_method: str | None = "clip") -> None:
    """The method settings; ``default_method=None`` leaves out ``--method`` and ``--seed`` (``eval`` takes
    ``--methods`` and ``--seeds`` lists instead)."""
    g = parser.add_argument_group("method")
    if default_method is not None:
        g.add_argument("--method", default=default_method, choices=list_methods(),
                       help="method; `absclip methods` lists them with their settings (default: %(default)s)")
    g.add_argument("--template", default="a photo of a {}.",
                   help="CLIP / WCA class prompt, {} is the class name (default: %(default)r)")
    g.add_argument("--templates", default="imagenet",
                   help="CLIP-E templates: 'imagenet' (OpenAI's 80) or a JSON/text file (default: %(default)s)")
    g.add_argument("--clip-d-reference-quirk", action="store_true",
                   help="CLIP-D/Waffle: treat any descriptor starting with the letter 'a' as an article, "
                        "as the reference code does (reproduces published numbers)")
    g.add_argument("--waffle-count", type=int, default=15,
                   help="Waffle: random word pairs (and as many random-character pairs) (default: %(default)s)")
    g.add_argument("--waffle-words", type=Path, default=None,
                   help="Waffle: JSON list of words to draw from (default: words of the CLIP vocabulary)")
    g.add_argument("--max-descriptions", type=int, default=50,
                   help="ABS/MCE: descriptions kept per class, 0 = all (default: %(default)s)")
    g.add_argument("--temperature", type=float, default=0.03, help="soft-matching temperature (default: %(default)s)")
    if default_method is not None:
        g.add_argument("--seed", type=int, default=0, help="crop sampling / Waffle seed (default: %(default)s)")

    a = parser.add_argument_group("ABS crops")
    a.add_argument("--saliency", default="dino",
                   help="saliency source: dino, dino:HUB_ID_OR_DIR, dinov2[:...], clip (the VLM's own "
                        "attention) or uniform (random sampling) (default: %(default)s)")
    a.add_argument("--crops", type=int, default=50, help="N crops per image (default: %(default)s)")
    a.add_argument("--cell-top-k", type=int, default=20,
                   help="saliency cells crop centres are drawn from (default: %(default)s)")
    a.add_argument("--crop-ratio", default="0.6,0.9",
                   help="box side range as fractions of the image side, 'r1,r2' (default: %(default)s)")
    a.add_argument("--pairing", default="paired", choices=[p.value for p in Pairing],
                   help="feature windows: 'paired' = each raw box mapped onto the token grid; "
                        "'independent' = the reference code's separately drawn square windows")
    a.add_argument("--feature-layer", type=int, default=-1,
                   help="block the feature windows enter; -1 = the last block (default: %(default)s)")
    a.add_argument("--raw-augment", default="crop", choices=RAW_AUGMENTS.names(),
                   help="how a box becomes a raw-space view (paper Table 5): crop it, mask everything else, "
                        "brighten it, or draw a red ellipse around it (default: %(default)s)")
    a.add_argument("--feature-augment", default="crop", choices=FEATURE_AUGMENTS.names(),
                   help="how a window becomes a feature-space view (paper Table 5): zoom it, zero the other "
                        "tokens, amplify its tokens, or bias attention towards it (default: %(default)s)")
    a.add_argument("--no-raw", action="store_true", help="ablation: no raw-space crops")
    a.add_argument("--no-feature", action="store_true", help="ablation: no feature-space crops")
    a.add_argument("--no-soft-match", action="store_true",
                   help="ablation: mean over descriptions instead of soft matching")
    a.add_argument("--view-weights", action="store_true",
                   help="weight views by similarity to the full image (the reference sums them unweighted)")

    r = parser.add_argument_group("WCA / MCE random crops")
    r.add_argument("--random-crops", type=int, default=60, help="K random crops per image (default: %(default)s)")
    r.add_argument("--alpha", type=float, default=0.1,
                   help="smallest crop side as a fraction of min(W, H); WCA's published runs used 0.1 "
                        "(default: %(default)s)")
    # ZPE (methods/zpe.py)
    z = parser.add_argument_group("ZPE (zpe, zpe+wca, zpe+mce, zpe+abs)")
    z.add_argument("--zpe-temperature", type=float, default=1.0,
                   help="softmax temperature of the prompt / description scores, which are scale·cos logits "
                        "(default: %(default)s, the authors' notebook)")
    z.add_argument("--zpe-select-mad", type=float, default=None,
                   help="keep only prompts scoring more than this many median absolute deviations above the "
                        "median (the paper's prompt selection: 0.5 on ImageNet, 2.0 on fine-grained sets); "
                        "default: weight them all")
    # description selection (text/selection.py), dsel (methods/dsel.py), PerceptionCLIP (methods/perception_clip.py)
    d = parser.add_argument_group("description selection (every description method), dsel, PerceptionCLIP")
    d.add_argument("--select-descriptions", type=int, default=None, metavar="M",
                   help="keep the M descriptions per class that best separate it from its nearest classes in "
                        "CLIP's text space, for every description method (the paper keeps 5; default: all)")
    d.add_argument("--select-neighbours", type=int, default=3, metavar="K",
                   help="--select-descriptions: the class and its K-1 nearest classes (default: %(default)s)")
    d.add_argument("--select-pool", default="own", choices=["own", "all"],
                   help="--select-descriptions: a class keeps its own descriptions, or may take any class's "
                        "(default: %(default)s)")
    d.add_argument("--dsel-descriptions", type=int, default=5, metavar="M",
                   help="dsel: descriptions kept per candidate class (default: %(default)s)")
    d.add_argument("--dsel-neighbours", type=int, default=3, metavar="K",
                   help="dsel: each image's top-K classes by the class prompt (default: %(default)s)")
    d.add_argument("--dsel-pool", default="all", choices=["own", "all"],
                   help="dsel: the descriptions a class may take (default: %(default)s, every class's)")
    d.add_argument("--dsel-classname-weight", type=float, default=None, metavar="W",
                   help="dsel: score W·cos(prompt) + mean cos(description) (class-name-free descriptions); "
                        "default: mean cos of '{prompt}, {description}.'")
    d.add_argument("--perception-attributes", default="imagenet",
                   help="PerceptionCLIP: attribute preset (imagenet, cub, food101, oxford-pet, places365) or a "
                        "JSON file of the same schema (default: %(default)s)")
    d.add_argument("--perception-factors", default=None,
                   help="PerceptionCLIP: comma list of attributes to infer (default: the preset's, e.g. "
                        "condition,quality for imagenet)")
    d.add_argument("--perception-temperature", type=float, default=None,
                   help="PerceptionCLIP: temperature of P(z|x) (default: the preset's, 3 for imagenet)")
    # FuDD (methods/fudd.py): the LLM flags are classify's --describe ones where classify defines them
    f = parser.add_argument_group("FuDD (fudd, fudd+wca, fudd+mce, fudd+abs)")
    f.add_argument("--fudd-k", type=int, default=10, metavar="K",
                   help="FuDD: each image's K most confusable classes, re-scored with LLM descriptions of how "
                        "each pair of them differs (default: %(default)s, the paper's)")
    for flag, what in (("--llm-endpoint", "OpenAI-compatible base URL (default: $OPENAI_BASE_URL or OpenAI's API)"),
                       ("--llm-model", "the LLM's model name (default: absclip describe's)")):
        with contextlib.suppress(argparse.ArgumentError):  # classify has it, for --describe: one flag serves both
            f.add_argument(flag, default=None, help=f"FuDD and --describe: {what}; the key is read from "
                                                    "$OPENAI_API_KEY")
    # ZERO (methods/zero.py), AWT (methods/awt.py)
    za = parser.add_argument_group("ZERO (zero, zero+mce, zero+abs), AWT (awt, awt+mce, awt+abs)")
    za.add_argument("--zero-views", type=int, default=64,
                    help="ZERO: views per image, the original + random resized crops with flips (default: "
                         "%(default)s, the paper's N)")
    za.add_argument("--zero-fraction", type=float, default=0.1,
                    help="ZERO: fraction of the views, lowest entropy first, that vote (default: %(default)s, "
                         "the paper's; the authors' code later used 0.3)")
    za.add_argument("--awt-views", type=int, default=51,
                    help="AWT: views per image, the original + random resized crops with flips (default: "
                         "%(default)s, as the authors' code)")
    za.add_argument("--awt-view-temperature", type=float, default=0.5,
                    help="AWT: temperature of the entropy-based view weights (default: %(default)s)")
    za.add_argument("--awt-text-temperature", type=float, default=0.5,
                    help="AWT: temperature of the entropy-based description weights (default: %(default)s)")
    za.add_argument("--awt-epsilon", type=float, default=0.1,
                    help="AWT: Sinkhorn's entropic regularisation on cost 1 - cos (default: %(default)s)")
    za.add_argument("--awt-iterations", type=int, default=100,
                    help="AWT: at most this many Sinkhorn rounds (default: %(default)s)")
    za.add_argument("--awt-tolerance", type=float, default=0.01,
                    help="AWT: Sinkhorn stops once the mean change of its row scalings is below this "
                         "(default: %(default)s)")
    parser.add_argument("--micro-batch", type=int, default=None,
                        help="crops per encoder call; lower it to save memory (default: 8 on CPU, 64 on CUDA)")


def parse_ratio(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--crop-ratio expects 'r1,r2', e.g. 0.6,0.9; got {text!r}") from None
    if not 0 < lo <= hi <= 1:  # NaN fails this too
        raise ConfigError(f"--crop-ratio needs 0 < r1 <= r2 <= 1, got {text!r}")
    return lo, hi


def at_least(value: int | None, option: str, minimum: int = 1, meaning: str = "") -> None:
    """A :class:`ConfigError` naming ``option`` unless ``value`` (None: unset) is at least ``minimum``."""
    if value is not None and value < minimum:
        raise ConfigError(f"{option} must be at least {minimum}{meaning}, got {value}")


def check_method_numbers(args: argparse.Namespace) -> None:
    """The numeric method options, each checked against its own range with its flag in the message.

    Argparse has already made them ints or floats; this runs before any model loads. ``--crops``,
    ``--random-crops`` and ``--micro-batch`` are checked by the view configs they build, and
    ``--feature-layer`` only can be against the model's block count, once it is loaded.
    """
    at_least(args.cell_top_k, "--cell-top-k")  # the sampler reads 0 as "every cell": not what 0 says
    at_least(args.waffle_count, "--waffle-count")
    at_least(getattr(args, "fudd_k", None), "--fudd-k", 2)  # FuDD
    at_least(args.max_descriptions, "--max-descriptions", 0, " (0 keeps all)")  # -3 would drop the last 3
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        raise ConfigError(f"--temperature must be a positive number, e.g. 0.03, got {args.temperature}")
    if not 0 < args.alpha <= RandomCropConfig.max_fraction:  # NaN fails this too
        raise ConfigError(f"--alpha must be in (0, {RandomCropConfig.max_fraction}] (the smallest crop side as a "
                          f"fraction of the image's shorter side), got {args.alpha}")


def options_from_args(args: argparse.Namespace) -> MethodOptions:
    check_method_numbers(args)
    return MethodOptions(
        template=args.template,
        templates=args.templates,
        clip_d_reference_quirk=args.clip_d_reference_quirk,
        waffle_count=args.waffle_count,
        waffle_words=None if args.waffle_words is None else str(args.waffle_words),
        max_descriptions=args.max_descriptions or None,
        temperature=args.temperature,
        saliency=args.saliency,
        raw=not args.no_raw,
        feature=not args.no_feature,
        soft_match=not args.no_soft_match,
        view_weights=args.view_weights,
        feature_layer=args.feature_layer,
        raw_augment=args.raw_augment,
        feature_augment=args.feature_augment,
        abs_sampler=AbsSamplerConfig(crops=args.crops, top_k=args.cell_top_k, temperature=0.03,
                                     ratio=parse_ratio(args.crop_ratio), pairing=args.pairing),
        random_crops=RandomCropConfig(crops=args.random_crops, alpha=args.alpha),
        seed=getattr(args, "seed", 0),
        micro_batch=args.micro_batch,
        select_descriptions=args.select_descriptions,  # description selection, dsel, PerceptionCLIP
        select_neighbours=args.select_neighbours,
        select_pool=args.select_pool,
        dsel_descriptions=args.dsel_descriptions,
        dsel_neighbours=args.dsel_neighbours,
        dsel_pool=args.dsel_pool,
        dsel_classname_weight=args.dsel_classname_weight,
        perception_attributes=args.perception_attributes,
        perception_factors=args.perception_factors,
        perception_temperature=args.perception_temperature,
        zpe_temperature=args.zpe_temperature,  # ZPE
        zpe_select_mad=args.zpe_select_mad,
        fudd_k=getattr(args, "fudd_k", 10),  # FuDD
        llm=LlmOptions(endpoint=getattr(args, "llm_endpoint", None), model=getattr(args, "llm_model", None)),
        zero_views=args.zero_views,  # ZERO, AWT
        zero_fraction=args.zero_fraction,
        awt_views=args.awt_views,
        awt_view_temperature=args.awt_view_temperature,
        awt_text_temperature=args.awt_text_temperature,
        awt_epsilon=args.awt_epsilon,
        awt_iterations=args.awt_iterations,
        awt_tolerance=args.awt_tolerance,
    )


def method_from_args(args: argparse.Namespace, name: str | None = None) -> Method:
    """The method of ``--method`` (or ``name``) with the options given; bad settings fail here, before
    any model loads."""
    return create_method(name or args.method, options_from_args(args))


def backbone_from_args(args: argparse.Namespace) -> Backbone:
    from ..backbones import create_backbone

    return create_backbone(args.model, pretrained=args.pretrained, device=args.device, dtype=args.dtype,
                           trust_checkpoint=args.trust_checkpoint, cache_dir=None)
