"""Where absclip keeps its caches: one root for every tool, one sub-directory per tool.

A single rule means one environment variable moves (or one ``rm -r`` clears) everything absclip
caches, instead of text embeddings, LLM answers and view features each following their own.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "cache_root"]


def _env_path(name: str) -> Path | None:
    # An empty variable counts as unset (as the XDG spec says), so ``ABSCLIP_CACHE=`` cannot
    # silently turn the current directory into the cache.
    value = os.environ.get(name)
    return Path(value).expanduser() if value else None


def cache_root() -> Path:
    """``$ABSCLIP_CACHE``, else ``$XDG_CACHE_HOME/absclip``, else ``~/.cache/absclip``.

    Read on every call rather than once at import, so a changed environment (tests, a wrapper
    script setting the variable late) takes effect.
    """
    root = _env_path("ABSCLIP_CACHE")
    if root is not None:
        return root
    xdg = _env_path("XDG_CACHE_HOME")
    return (xdg if xdg is not None else Path.home() / ".cache") / "absclip"


def cache_dir(tool: str) -> Path:
    """The cache directory of one tool (``"text"``, ``"describe"``, ``"views"``) under :func:`cache_root`."""
    return cache_root() / tool
