"""Secrets of a describe run (the API key, the endpoint's credentials) and how they are scrubbed from
every message, answer and log record, including pieces and masked forms (``sk-te****cdef``)."""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit, urlunsplit

NO_KEY_PLACEHOLDER = "none"  # local servers (llama.cpp, vLLM, Ollama) accept any bearer token
_SCRUB_WINDOW = 6
REDACTED = "[redacted]"  # what a secret becomes; the answer cleaner drops texts that contain it
_MASK_RUN = re.compile(r"[*•●]{2,}|\.{3,}|…+")
_MASK_EDGE = 3  # a masked form is scrubbed when at least this much of the key's start or end shows


def scrub(text: str, *secrets: str | None) -> str:
    """``text`` with each secret, any 6+ character piece of it, and masked forms of it (a run of ``*``,
    ``•`` or dots with a piece of the key's start before it or of its end after it) replaced by
    ``[redacted]``.

    Pieces and masked forms matter because servers echo partially masked keys ("sk-abc1****wxyz") in
    error messages. Secrets shorter than the piece length are only replaced whole.
    """
    for secret in secrets:
        text = _scrub_one(text, secret)
    return text


def _scrub_one(text: str, secret: str | None) -> str:
    if not secret or secret == NO_KEY_PLACEHOLDER or not text:
        return text
    covered = [False] * len(text)
    window = min(_SCRUB_WINDOW, len(secret))
    for start in range(len(secret) - window + 1):
        piece = secret[start : start + window]
        found = text.find(piece)
        while found != -1:
            covered[found : found + window] = [True] * window
            found = text.find(piece, found + 1)
    if len(secret) > 2 * _MASK_EDGE:
        for run in _MASK_RUN.finditer(text):
            a, b = run.span()
            head = next((k for k in range(min(a, len(secret)), 0, -1) if text[a - k : a] == secret[:k]), 0)
            tail = next((k for k in range(min(len(text) - b, len(secret)), 0, -1)
                         if text[b : b + k] == secret[-k:]), 0)
            if head >= _MASK_EDGE or tail >= _MASK_EDGE:
                covered[a - head : b + tail] = [True] * (b + tail - a + head)
    if not any(covered):
        return text
    out, i = [], 0
    while i < len(text):
        if covered[i]:
            while i < len(text) and covered[i]:
                i += 1
            out.append(REDACTED)
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """(the URL without ``user:password@``, (user, password) or None)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    if parts.port:
        host = f"{host}:{parts.port}"
    clean = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return clean, (unquote(parts.username or ""), unquote(parts.password or ""))


def secrets_of(endpoint: str, api_key: str) -> tuple[str, ...]:
    """Everything secret about a run: the key, and the endpoint's credentials as given, decoded and
    as the base64 ``user:password`` of HTTP Basic auth."""
    out = [api_key]
    _, credentials = split_credentials(endpoint)
    if credentials is not None:
        user, password = credentials
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        raw = urlsplit(endpoint).netloc.rpartition("@")[0]
        out += [s for s in (password, raw.partition(":")[2], f"{user}:{password}", raw, basic) if s]
    return tuple(dict.fromkeys(s for s in out if s))


class ScrubLogs(logging.Filter):
    """Rewrites log records of the HTTP stack that mention a secret (an echoed header, a URL)."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self._secrets = tuple(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = scrub(message, *self._secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def redact_url(url: str) -> str:
    """The endpoint without user:password and query string (which may hold a key), for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}" if parts.scheme else url
