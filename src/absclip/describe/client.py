"""Chat-completions transport through the ``openai`` client, with our own retry policy.

The client library's built-in retries are switched off (``max_retries=0``) so that exactly one policy
applies: exponential backoff with jitter on 429 / 5xx / connection errors / timeouts / malformed
responses, ``Retry-After`` honoured (and capped), and a shared pause so that one 429 slows every
worker rather than letting the others keep hammering the server. Errors that retrying cannot fix
(bad key, unknown model, bad request) abort at once.

``timeout`` is a total deadline per request: the request runs in a daemon thread and is abandoned
(and retried) when it has not completed in time, however the server stalls: a server that drips one
byte per second defeats a per-read timeout, and an endless one would hang the run. An abandoned
thread ends with its connection (at the latest when the client is closed or the process exits).

Secrets never leave this module: the API key and any ``user:password@`` of the endpoint (as given
and base64-encoded, as HTTP Basic auth sends them) are scrubbed from every message, answer and log
record of the HTTP libraries, including pieces and masked forms (``sk-te****cdef``); the endpoint is
given to the HTTP client without its credentials (they go in the ``auth`` setting), so logged URLs
carry none.
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import openai

from ..errors import AbsclipError
from .secrets import NO_KEY_PLACEHOLDER, ScrubLogs, redact_url, scrub, secrets_of, split_credentials

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"
_RETRYABLE_STATUS = {408, 409, 425, 429}
_REQUEST_STATUS = {400, 413, 422}
# runs that servers use to mask the middle of a key: "sk-te****cdef", "sk-proj-ab...wxyz", "sk-ab•••yz"
# the loggers of the HTTP stack that can print URLs, headers or bodies (filters act per logger)
_HTTP_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2", "openai", "openai._base_client", "openai._response")


class EndpointError(AbsclipError):
    """The endpoint rejected a request in a way retrying cannot fix (key, permissions, URL, model)."""


class RequestFailedError(AbsclipError):
    """One request still failed after all retries (the run continues; the class may end up short)."""


class _TransientError(Exception):
    """Internal: a failure worth retrying, with the server's ``Retry-After`` if it sent one."""

    def __init__(self, reason: str, retry_after: float | None = None, rate_limited: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.rate_limited = rate_limited


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str | None


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with "equal jitter": wait in [d/2, d] for d = min(max_delay, base * 2**attempt).

    Jitter spreads retries of concurrent workers apart; the half that is fixed keeps a lower bound so a
    struggling server really gets a pause. ``Retry-After`` (seconds) replaces the computed delay, capped
    at ``retry_after_cap`` so a hostile or buggy header cannot stall a run for hours.
    """

    max_retries: int = 5
    base_delay: float = 1.0
    max_delay: float = 60.0
    retry_after_cap: float = 120.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.retry_after_cap)
        ceiling = min(self.max_delay, self.base_delay * (2**attempt))
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


def resolve_api_key(env_var: str = DEFAULT_KEY_ENV) -> str:
    """The key from ``env_var``; a placeholder when it is unset, since local servers need none."""
    key = os.environ.get(env_var, "").strip()
    if not key:
        log.info("%s is not set; sending a placeholder key (fine for local servers)", env_var)
        return NO_KEY_PLACEHOLDER
    return key


class _RateGate:
    """A shared 'not before' time: a 429 pauses all workers, not only the one that got it."""

    def __init__(self, sleep: Callable[[float], None]) -> None:
        self._lock = threading.Lock()
        self._resume_at = 0.0
        self._sleep = sleep

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._resume_at = max(self._resume_at, time.monotonic() + seconds)

    def wait(self) -> None:
        with self._lock:
            remaining = self._resume_at - time.monotonic()
        if remaining > 0:
            self._sleep(remaining)


class ChatClient:
    """Sends one chat-completions request at a time per calling thread; safe to share between threads."""

    def __init__(
        self,
        endpoint: str,
        model: str,
        api_key: str,
        timeout: float = 60.0,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.model = model
        self.timeout = timeout
        self.policy = policy or RetryPolicy()
        self._secrets = secrets_of(endpoint, api_key)
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._gate = _RateGate(sleep)
        self.retries = 0  # retried attempts over the client's life, for the summary
        base_url, credentials = split_credentials(endpoint)
        # credentials go to the HTTP client's auth setting (HTTP Basic, as a URL's userinfo would), so
        # that no URL the HTTP libraries build or log carries them
        http_client = openai.DefaultHttpxClient(auth=credentials) if credentials is not None else None
        self._client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0,
                                     http_client=http_client)
        self._log_filter = ScrubLogs(self._secrets)
        for name in _HTTP_LOGGERS:
            logging.getLogger(name).addFilter(self._log_filter)

    def close(self) -> None:
        self._client.close()
        for name in _HTTP_LOGGERS:
            logging.getLogger(name).removeFilter(self._log_filter)

    def scrub(self, text: str) -> str:
        return scrub(text, *self._secrets)

    def complete(
        self,
        messages: Sequence[dict[str, str]],
        temperature: float,
        max_tokens: int | None = None,
        seed: int | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Completion:
        """One answer, retried per the policy.

        Raises :class:`EndpointError` (retrying cannot help) or :class:`RequestFailedError` (retries spent).
        """
        attempt = 0
        while True:
            self._gate.wait()
            try:
                return self._send(messages, temperature, max_tokens, seed)
            except _TransientError as exc:
                if attempt >= self.policy.max_retries or should_stop():
                    raise RequestFailedError(self.scrub(
                        f"{exc.reason} (gave up after {attempt + 1} attempts to {redact_url(self.endpoint)})"
                    )) from None
                with self._lock:
                    wait = self.policy.delay(attempt, exc.retry_after, self._rng)
                    self.retries += 1
                if exc.rate_limited:
                    self._gate.pause(wait)
                log.debug("retrying in %.2fs after: %s", wait, exc.reason)
                self._sleep(wait)
                attempt += 1

    def _send(
        self, messages: Sequence[dict[str, str]], temperature: float, max_tokens: int | None, seed: int | None
    ) -> Completion:
        extra: dict[str, object] = {}
        if max_tokens is not None:
            extra["max_tokens"] = max_tokens
        if seed is not None:
            extra["seed"] = seed
        try:
            response = self._within_deadline(lambda: self._client.chat.completions.create(
                model=self.model,
                messages=list(messages),  # type: ignore[arg-type]
                temperature=temperature,
                **extra,  # type: ignore[arg-type]
            ))
        except openai.APITimeoutError:
            raise _TransientError("request timed out") from None
        except openai.APIConnectionError as exc:
            raise _TransientError(f"connection error: {self.scrub(_cause(exc))}") from None
        except openai.APIStatusError as exc:
            raise self._status_error(exc) from None
        except openai.APIResponseValidationError as exc:
            raise _TransientError(f"malformed response: {self.scrub(exc.message)}") from None
        except ValueError as exc:  # body is not JSON although the content type says so
            raise _TransientError(f"malformed response: {type(exc).__name__}") from None
        except openai.OpenAIError as exc:
            raise EndpointError(f"chat request failed: {self.scrub(str(exc))}") from None
        return _extract(response)

    def _within_deadline(self, call: Callable[[], Any]) -> Any:
        """``call()``'s result or exception, or a retryable timeout once ``timeout`` seconds have passed.

        The HTTP client's own timeout applies to each read, so a server sending a byte now and then
        never trips it; this is the deadline for the whole request.
        """
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                outcome["value"] = call()
            except BaseException as exc:  # handed to the caller, which maps it
                outcome["error"] = exc
            finally:
                done.set()

        threading.Thread(target=run, name="describe-request", daemon=True).start()
        if not done.wait(self.timeout):
            raise _TransientError(f"no complete answer within the {self.timeout:g} s request deadline")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    def _status_error(self, exc: openai.APIStatusError) -> Exception:
        status = exc.status_code
        detail = self.scrub(_short(exc.message))
        if status in _RETRYABLE_STATUS or status >= 500:
            return _TransientError(
                f"HTTP {status}: {detail}",
                retry_after=_retry_after_seconds(exc.response.headers),
                rate_limited=status == 429,
            )
        if status in _REQUEST_STATUS:
            # About this request (a content filter, an over-long prompt), not the endpoint: no retry,
            # but no abort either; if every request gets it, --max-failures ends the run.
            return RequestFailedError(f"HTTP {status}: {detail} (not retried)")
        where = f"{redact_url(self.endpoint)} (model {self.model!r})"
        hint = ""
        if status in (401, 403):
            hint = "; check the API key variable (--api-key-env) and that it is exported"
        elif status == 404:
            hint = "; check --endpoint (it should end in /v1 for most servers) and --model"
        return EndpointError(f"{where} rejected the request with HTTP {status}: {detail}{hint}")


def _extract(response: object) -> Completion:
    """Content and finish reason, or a retryable error if the body does not look like a chat completion."""
    try:
        choice = response.choices[0]  # type: ignore[attr-defined]
        content = choice.message.content
        finish = choice.finish_reason
    except (AttributeError, IndexError, TypeError, KeyError):
        raise _TransientError("malformed response: no choices[0].message") from None
    if content is not None and not isinstance(content, str):
        raise _TransientError("malformed response: message content is not text")
    return Completion(content or "", finish if isinstance(finish, str) else None)


def _retry_after_seconds(headers: object) -> float | None:
    """``retry-after-ms`` or ``Retry-After`` in seconds; the HTTP-date form is ignored (backoff applies)."""
    get = getattr(headers, "get", None)
    if get is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    return None


def _cause(exc: BaseException) -> str:
    """The innermost reason of a connection error ('Connection refused' rather than 'Connection error.')."""
    inner = exc.__cause__ or exc.__context__
    return _short(str(inner)) if inner is not None and str(inner) else _short(str(exc))


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
