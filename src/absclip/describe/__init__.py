"""``absclip describe``: class descriptions from any OpenAI-compatible LLM, cached, resumable, validated.

Two prompt styles from the literature: ``cupl`` (CuPL, Pratt et al.: several "what does a {class} look
like" questions, several sampled answers each) and ``clip-d`` (CLIP-D, Menon & Vondrick: one request for
a list of visual features, each turned into "{class}, which has {feature}"). The output is a
``{class name: [text, ...]}`` JSON file that :func:`absclip.text.descriptions.load_descriptions` reads.
"""

from .cache import default_cache_dir
from .client import DEFAULT_ENDPOINT, DEFAULT_KEY_ENV, DEFAULT_MODEL, EndpointError, RequestFailedError
from .prompts import load_prompt_book
from .run import describe_classes, ensure_descriptions, write_descriptions
from .settings import DescribeSettings
from .summary import ClassOutcome, DescribeResult, DescribeSummary

__all__ = [
    "DEFAULT_ENDPOINT",
    "DEFAULT_KEY_ENV",
    "DEFAULT_MODEL",
    "ClassOutcome",
    "DescribeResult",
    "DescribeSettings",
    "DescribeSummary",
    "EndpointError",
    "RequestFailedError",
    "default_cache_dir",
    "describe_classes",
    "ensure_descriptions",
    "load_prompt_book",
    "write_descriptions",
]
