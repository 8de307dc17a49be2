"""The knobs of a describe run, validated once, with the environment's defaults resolved in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import AbsclipError
from .cache import default_cache_dir
from .client import DEFAULT_ENDPOINT, DEFAULT_KEY_ENV, DEFAULT_MODEL, RetryPolicy


@dataclass(frozen=True)
class DescribeSettings:
    """Everything a run depends on. ``None`` means: the style's default, or the environment's.

    ``endpoint=None`` reads ``OPENAI_BASE_URL`` and falls back to the OpenAI API; ``cache_dir=None``
    uses :func:`~absclip.describe.cache.default_cache_dir`; ``progress=None`` shows a bar only on a
    terminal; ``exact_tokens=None`` counts tokens with open_clip only if it is already imported.
    """

    style: str = "cupl"
    per_class: int | None = None
    endpoint: str | None = None
    model: str = DEFAULT_MODEL
    api_key_env: str = DEFAULT_KEY_ENV
    concurrency: int = 4
    temperature: float | None = None
    seed: int | None = None
    cache_dir: str | Path | None = None
    timeout: float = 60.0
    # The retry defaults are RetryPolicy's, so the library and the CLI cannot drift apart.
    max_retries: int = RetryPolicy.max_retries
    backoff_base: float = RetryPolicy.base_delay
    backoff_max: float = RetryPolicy.max_delay
    retry_after_cap: float = RetryPolicy.retry_after_cap
    prompts: str | Path | None = None
    top_up_rounds: int = 2
    max_failures: int = 20
    progress: bool | None = None
    exact_tokens: bool | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.per_class is None or self.per_class >= 1, "per_class must be at least 1"),
            (self.concurrency >= 1, "concurrency must be at least 1"),
            (self.temperature is None or self.temperature >= 0, "temperature must be non-negative"),
            (self.timeout > 0, "timeout must be positive"),
            (self.max_retries >= 0, "max_retries must be non-negative"),
            (self.backoff_base >= 0 and self.backoff_max >= 0, "backoff delays must be non-negative"),
            (self.retry_after_cap >= 0, "retry_after_cap must be non-negative"),
            (self.top_up_rounds >= 0, "top_up_rounds must be non-negative"),
            (self.max_failures >= 1, "max_failures must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise AbsclipError(f"describe: {message}")

    def resolved_endpoint(self) -> str:
        return (self.endpoint or os.environ.get("OPENAI_BASE_URL") or DEFAULT_ENDPOINT).rstrip("/")

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_retries=self.max_retries,
            base_delay=self.backoff_base,
            max_delay=self.backoff_max,
            retry_after_cap=self.retry_after_cap,
        )
