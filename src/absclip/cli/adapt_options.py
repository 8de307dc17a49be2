"""``absclip eval`` options of the few-shot (Tip-Adapter, GDA) and test-time (TDA) methods."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..adapt import SUPPORT_SPLITS, ZERO_SHOT_TEXTS, AdaptOptions
from ..errors import ConfigError

_DEFAULTS = AdaptOptions()


def add_adapt_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "few-shot and test-time methods",
        "tip-adapter, gda (few-shot: need --support DIR or --support-split train) and tda (test-time: streams "
        "the test set in a seeded order); each also as +mce (random crops) and +abs (attention-guided crops) "
        "with soft matching")
    g.add_argument("--support", type=Path, default=None, metavar="DIR",
                   help="few-shot: ImageFolder of labelled support images, one folder per evaluated class "
                        "(matched by folder or class name; ImageNet's 1000 wnid folders by wnid)")
    g.add_argument("--support-split", choices=SUPPORT_SPLITS, default=None,
                   help="few-shot: draw the support set from the evaluated dataset's own train split instead of "
                        "--support (imagenet's train/, cub, oxford-pet's trainval, dtd, food101, places365)")
    g.add_argument("--shots", type=int, default=_DEFAULTS.shots, metavar="K",
                   help="few-shot: K images drawn per class, with each --seeds value (default: %(default)s)")
    g.add_argument("--val-shots", type=int, default=_DEFAULTS.val_shots, metavar="V",
                   help="GDA: held-out support images per class (at most --shots) to search α on "
                        "(default: %(default)s)")
    g.add_argument("--gda-alpha", type=float, default=None, metavar="A",
                   help="GDA: fixed ensemble weight α instead of the search over 0.0001 ... 100")
    g.add_argument("--tip-alpha", type=float, default=_DEFAULTS.tip_alpha, metavar="A",
                   help="Tip-Adapter: residual ratio α (default: %(default)s)")
    g.add_argument("--tip-beta", type=float, default=_DEFAULTS.tip_beta, metavar="B",
                   help="Tip-Adapter: sharpness β (default: %(default)s)")
    g.add_argument("--tda-pos", metavar="CAP,A,B", default=_triple(_DEFAULTS.tda_pos_capacity, _DEFAULTS.tda_pos_alpha,
                                                 _DEFAULTS.tda_pos_beta),
                   help="TDA positive cache 'capacity,alpha,beta' (default: %(default)s)")
    g.add_argument("--tda-neg", metavar="CAP,A,B", default=_triple(_DEFAULTS.tda_neg_capacity, _DEFAULTS.tda_neg_alpha,
                                                 _DEFAULTS.tda_neg_beta),
                   help="TDA negative cache 'capacity,alpha,beta' (default: %(default)s)")
    g.add_argument("--adapt-text", default=_DEFAULTS.text, choices=ZERO_SHOT_TEXTS,
                   help="zero-shot text of the full-image variants: --template, the --templates ensemble, "
                        "or the seven ImageNet templates of the reference codes (default: %(default)s)")


def _triple(capacity: int, alpha: float, beta: float) -> str:
    return f"{capacity},{alpha},{beta}"


def _parse_cache(text: str, option: str) -> tuple[int, float, float]:
    try:
        capacity, alpha, beta = (v.strip() for v in text.split(","))
        return int(capacity), float(alpha), float(beta)
    except ValueError:
        raise ConfigError(f"{option} expects 'capacity,alpha,beta', e.g. 3,2.0,5.0; got {text!r}") from None


def adapt_options_from_args(args: argparse.Namespace) -> AdaptOptions:
    """The options of the flags above; bad values fail here, before any model loads."""
    pos = _parse_cache(args.tda_pos, "--tda-pos")
    neg = _parse_cache(args.tda_neg, "--tda-neg")
    return dataclasses.replace(
        _DEFAULTS, support=None if args.support is None else str(args.support), support_split=args.support_split,
        shots=args.shots,
        val_shots=args.val_shots, gda_alpha=args.gda_alpha, tip_alpha=args.tip_alpha, tip_beta=args.tip_beta,
        tda_pos_capacity=pos[0], tda_pos_alpha=pos[1], tda_pos_beta=pos[2],
        tda_neg_capacity=neg[0], tda_neg_alpha=neg[1], tda_neg_beta=neg[2], text=args.adapt_text)
