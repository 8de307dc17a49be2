"""``absclip describe``: write a ``{class: [descriptions]}`` file by asking an OpenAI-compatible LLM.

Only argument parsing and reporting live here; the work is :func:`absclip.describe.write_descriptions`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..describe import DEFAULT_ENDPOINT, DEFAULT_KEY_ENV, DEFAULT_MODEL, DescribeSettings, write_descriptions
from ..describe.run import incomplete_message
from ..text.classes import load_classes

EXIT_OK = 0
EXIT_INCOMPLETE = 1  # the output was not written (requests failed, or nothing usable): rerun to complete it

_DESCRIPTION = """\
Generate class descriptions with any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM,
llama.cpp server, Ollama, LM Studio, ...) and write them as {class name: [text, ...]} JSON, the
format CuPL and CLIP-D publish and `absclip classify --descriptions` reads.

Every answer is cached on disk as it arrives: an interrupted run, rerun with the same options, only
asks what is missing. Answers are cleaned (numbering, bullets, quotes, "Class:" echoes) and
refusals, off-topic and duplicate answers are dropped, as are answers about another class, with
injected instructions or echoing the key; control characters and HTML are stripped. A summary on
stderr lists the classes that ended with fewer descriptions than asked for, and why.
"""

_EPILOG = f"""\
examples:
  absclip describe --classes imagenet.txt --output cupl.json
  absclip describe --classes cat,dog,goldfish --output d.json --style clip-d \\
      --endpoint http://127.0.0.1:8000/v1 --model Qwen2.5-7B-Instruct

The API key is read from the environment variable named by --api-key-env (default {DEFAULT_KEY_ENV});
it is never printed or stored. Exit status: 0 when the output was written; 1 when requests still
failed after retries (what was obtained goes to NAME.partial.json, the output is not written) or no
usable description came back; rerun the same command to complete it, as every answer is cached.
"""


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``describe`` sub-command to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    parser = subparsers.add_parser(
        "describe",
        help="generate class descriptions (CuPL / CLIP-D style) with an OpenAI-compatible LLM",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_argument_group("what to generate")
    what.add_argument(
        "--classes",
        required=True,
        metavar="FILE|a,b,c",
        help="class names: a .json list, a text file with one name per line, or a comma-separated list",
    )
    what.add_argument(
        "--output",
        required=True,
        metavar="FILE.json",
        help="where to write {class name: [text, ...]} (atomically)",
    )
    what.add_argument(
        "--style",
        default="cupl",
        help="prompt style: 'cupl' (several 'what does a {class} look like' questions, sampled answers; "
        "Pratt et al.) or 'clip-d' (one request for a list of visual features; Menon & Vondrick), or a "
        "style defined in --prompts (default: %(default)s)",
    )
    what.add_argument(
        "--per-class",
        type=_positive_int,
        metavar="N",
        help="descriptions wanted per class; classes that end with fewer are listed in the summary "
        "(default: the style's, 10 for cupl, 6 for clip-d)",
    )
    what.add_argument(
        "--prompts",
        metavar="FILE",
        help="JSON file of prompt styles and answer filters laid over the packaged ones "
        "(same schema as absclip/resources/describe_prompts.json)",
    )
    model = parser.add_argument_group("model and endpoint")
    model.add_argument(
        "--endpoint",
        metavar="URL",
        help=f"base URL of the chat-completions API, usually ending in /v1 (default: $OPENAI_BASE_URL, "
        f"else {DEFAULT_ENDPOINT})",
    )
    model.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME", help="model name (default: %(default)s)")
    model.add_argument(
        "--api-key-env",
        default=DEFAULT_KEY_ENV,
        metavar="VAR",
        help="environment variable holding the API key; if unset, a placeholder is sent, which local "
        "servers accept (default: %(default)s)",
    )
    model.add_argument(
        "--temperature",
        type=_non_negative_float,
        metavar="T",
        help="sampling temperature (default: the style's: 0.99 for cupl as in CuPL, 0 for clip-d as in CLIP-D)",
    )
    model.add_argument(
        "--seed",
        type=int,
        metavar="S",
        help="base sampling seed; sample i of a question is sent seed S+i so samples differ (default: none sent)",
    )
    transport = parser.add_argument_group("transport, cache and validation")
    transport.add_argument(
        "--concurrency",
        type=_positive_int,
        default=4,
        metavar="K",
        help="requests in flight at once (default: %(default)s)",
    )
    transport.add_argument(
        "--timeout",
        type=_positive_float,
        default=60.0,
        metavar="SECONDS",
        help="deadline of one request, from sending it to the last byte of the answer; a request past it "
        "is abandoned and retried (default: %(default)s)",
    )
    transport.add_argument(
        "--max-retries",
        type=_non_negative_int,
        default=5,
        metavar="N",
        help="retries of one request on 429, 5xx, timeouts, connection errors and malformed replies, "
        "with exponential backoff and jitter; Retry-After is honoured (default: %(default)s)",
    )
    transport.add_argument(
        "--backoff",
        type=_non_negative_float,
        default=1.0,
        metavar="SECONDS",
        help="delay before the first retry; it doubles with each retry (up to 60 s) and is jittered "
        "so concurrent retries spread out (default: %(default)s)",
    )
    transport.add_argument(
        "--max-failures",
        type=_positive_int,
        default=20,
        metavar="N",
        help="abort the run after this many requests failed despite retries (default: %(default)s)",
    )
    transport.add_argument(
        "--top-up-rounds",
        type=_non_negative_int,
        default=2,
        metavar="N",
        help="extra rounds of fresh samples for classes left short by dropped answers (default: %(default)s)",
    )
    transport.add_argument(
        "--cache",
        metavar="DIR",
        help="answer cache directory (default: $ABSCLIP_CACHE/describe, else ~/.cache/absclip/describe)",
    )
    transport.add_argument(
        "--exact-tokens",
        action="store_true",
        default=None,
        help="count CLIP tokens with open_clip's tokenizer (imports torch) instead of an estimate when "
        "flagging descriptions longer than CLIP's 77-token context",
    )
    transport.add_argument(
        "--no-progress", action="store_true", help="no progress bar (it is shown only on a terminal anyway)"
    )
    parser.set_defaults(func=run)
    return parser


def settings_from_args(args: argparse.Namespace) -> DescribeSettings:
    """The :class:`DescribeSettings` the parsed options describe."""
    return DescribeSettings(
        style=args.style,
        per_class=args.per_class,
        endpoint=args.endpoint,
        model=args.model,
        api_key_env=args.api_key_env,
        concurrency=args.concurrency,
        temperature=args.temperature,
        seed=args.seed,
        cache_dir=args.cache,
        timeout=args.timeout,
        max_retries=args.max_retries,
        backoff_base=args.backoff,
        prompts=args.prompts,
        top_up_rounds=args.top_up_rounds,
        max_failures=args.max_failures,
        progress=False if args.no_progress else None,
        exact_tokens=args.exact_tokens,
    )


def run(args: argparse.Namespace) -> int:
    """Generate and write the descriptions; print the summary to stderr. AbsclipError propagates."""
    classes = load_classes(args.classes, min_classes=1)  # describing one class is fine, unlike classifying
    result = write_descriptions(classes, args.output, settings_from_args(args))
    for line in result.summary.lines():
        print(line, file=sys.stderr)
    if not result.complete:
        print(f"absclip: error: {incomplete_message(result, Path(args.output))}", file=sys.stderr)
        return EXIT_INCOMPLETE
    print(f"wrote {args.output}", file=sys.stderr)
    return EXIT_OK


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value
