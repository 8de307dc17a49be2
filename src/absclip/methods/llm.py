"""The LLM settings of methods that ask one while they score (FuDD): ``MethodOptions.llm``.

The same settings as ``absclip describe`` and ``classify --describe``: an OpenAI-compatible endpoint
(None: ``$OPENAI_BASE_URL``, else OpenAI's API), a model, the environment variable holding the key, and the
answer cache (None: ``$ABSCLIP_CACHE/describe``). The key itself is never an option.

Method options are written into evaluation records, so the endpoint is kept there without any
``user:password@``; the full URL stays in memory for the requests only. Kept free of the describe package
(and so of the HTTP client) so that building options imports nothing heavy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import ConfigError

DEFAULT_KEY_ENV = "OPENAI_API_KEY"  # absclip.describe.client.DEFAULT_KEY_ENV (a test keeps them equal)


@dataclass(frozen=True)
class LlmOptions:
    """Where and how to ask. ``endpoint`` reads back without credentials or query; :meth:`describe_settings`
    has the URL as given."""

    endpoint: str | None = None
    model: str | None = None  # None: absclip describe's default model
    api_key_env: str = DEFAULT_KEY_ENV
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        for name in ("endpoint", "model", "api_key_env", "cache_dir"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(f"llm.{name} must be a non-empty string or None, got {value!r}")
        full = getattr(self, "_full_endpoint", None) or self.endpoint
        object.__setattr__(self, "_full_endpoint", full)
        if self.endpoint:
            object.__setattr__(self, "endpoint", _without_credentials(self.endpoint))

    def __deepcopy__(self, memo: dict[int, Any]) -> LlmOptions:
        return self  # immutable; a copy must keep the credentials that the fields do not show

    def describe_settings(self, **changes: Any) -> Any:
        """The :class:`~absclip.describe.DescribeSettings` of these options (imports the describe package)."""
        from ..describe import DescribeSettings

        settings: dict[str, Any] = {"endpoint": self._full_endpoint, "api_key_env": self.api_key_env,
                                    "cache_dir": self.cache_dir}
        if self.model:
            settings["model"] = self.model
        return DescribeSettings(**{**settings, **changes})


def unreachable_reason(llm: LlmOptions) -> str | None:
    """Why ``llm`` can only fail (OpenAI's API with no key: every request would be refused after all retries),
    naming both fixes; None when an endpoint or a key is given."""
    if llm.endpoint is None and not os.environ.get("OPENAI_BASE_URL") and not os.environ.get(llm.api_key_env):
        return (f"no LLM to ask: pass --llm-endpoint URL (any OpenAI-compatible server; in reproduce "
                f"--set llm.endpoint=URL), or set ${llm.api_key_env} for OpenAI's API")
    return None


def _without_credentials(url: str) -> str:
    """``url`` without ``user:password@`` and without a query string (which may hold a key)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None and not parts.query:
        return url
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
