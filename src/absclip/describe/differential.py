"""Differential descriptions of class pairs (FuDD): one cached LLM request per confusable pair.

:func:`describe_pairs` asks, for each pair ``(a, b)`` of class indices, how the two classes differ (the
``fudd`` pair style of the prompt book), through the same client as ``absclip describe``: any
OpenAI-compatible endpoint, the key from the environment, one retry policy, secrets scrubbed from every
answer and message. Every answer is cached the moment it arrives, keyed by everything that changes it, so
a run that is killed, or a second run on the same pairs, asks only what is missing; a rerun asks nothing.

A pair whose answers leave no usable line after ``top_up_rounds`` fresh samples, or whose request failed
despite retries, has no differential description: the caller falls back to the class prompt for it, as
the FuDD reference does for pairs missing from its description files, and the summary lists it. The run
aborts, answers so far cached, after ``max_failures`` failed requests or when the endpoint rejects it.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..errors import AbsclipError
from ..text.classes import ClassList
from ..text.descriptions import normalize_name
from .cache import AnswerCache, CachedAnswer, RequestKey
from .clean import display_name
from .client import ChatClient, RequestFailedError, resolve_api_key
from .pair_prompts import PairAnswer, PairStyle, load_pair_style, parse_pair_answer
from .prompts import load_prompt_book
from .secrets import redact_url, scrub, secrets_of, split_credentials
from .settings import DescribeSettings

log = logging.getLogger(__name__)

Pair = tuple[int, int]
PAIR_INDEX = -1  # RequestKey.class_index of pair requests: a pair is keyed by its two names, in its messages


@dataclass
class PairResult:
    """The differential descriptions of each pair that got some, and how the run went."""

    descriptions: dict[Pair, PairAnswer] = field(default_factory=dict)
    unusable: dict[Pair, Counter[str]] = field(default_factory=dict)  # answered, nothing kept: drop reasons
    failed: dict[Pair, str] = field(default_factory=dict)  # requests that failed despite retries
    same_name: list[Pair] = field(default_factory=list)  # classes with one name: nothing to ask
    requests_sent: int = 0
    cache_hits: int = 0
    model: str = ""
    endpoint: str = ""  # redacted

    def record(self) -> dict[str, object]:
        """Facts for an evaluation record (no secrets)."""
        return {"pairs": len(self.descriptions) + len(self.unusable) + len(self.failed) + len(self.same_name),
                "described": len(self.descriptions), "unusable": sorted(map(list, self.unusable)),
                "failed": sorted(map(list, self.failed)), "requests_sent": self.requests_sent,
                "cache_hits": self.cache_hits, "model": self.model, "endpoint": self.endpoint}

    def lines(self, classes: ClassList) -> list[str]:
        """A summary line, then one per pair left without differential descriptions."""
        def named(pair: Pair) -> str:
            return f"{classes[pair[0]]!r} / {classes[pair[1]]!r}"

        out = [f"differential descriptions: {len(self.descriptions)} pairs described ({self.requests_sent} "
               f"requests, {self.cache_hits} from the cache) with {self.model} at {self.endpoint}"]
        for pair, reasons in self.unusable.items():
            why = ", ".join(f"{n} {r}" for r, n in reasons.most_common())
            out.append(f"pair {named(pair)}: no usable line ({why}); it uses the class prompt")
        out += [f"pair {named(p)}: {why}; it uses the class prompt" for p, why in self.failed.items()]
        out += [f"pair {named(p)}: the two classes share a name; nothing to tell apart" for p in self.same_name]
        return out


def describe_pairs(classes: ClassList, pairs: Sequence[Pair], settings: DescribeSettings | None = None,
                   style: str = "fudd") -> PairResult:
    """Differential descriptions for ``pairs`` (class indices, each pair once, in any order).

    Raises :class:`~absclip.describe.client.EndpointError` when the endpoint rejects requests outright and
    :class:`AbsclipError` after ``settings.max_failures`` requests failed despite retries.
    """
    return _PairRunner(classes, settings or DescribeSettings(), style).run(list(dict.fromkeys(pairs)))


class _PairRunner:
    def __init__(self, classes: ClassList, settings: DescribeSettings, style: str) -> None:
        self.classes, self.settings = classes, settings
        self.style: PairStyle = load_pair_style(style, settings.prompts)
        self.book = load_prompt_book(settings.prompts)
        self.per_pair = settings.per_class or self.style.per_pair
        self.temperature = self.style.temperature if settings.temperature is None else settings.temperature
        self.endpoint = settings.resolved_endpoint()
        self.api_key = resolve_api_key(settings.api_key_env)
        self.secrets = secrets_of(self.endpoint, self.api_key)
        self.cache = AnswerCache(settings.resolved_cache_dir())
        self.result = PairResult(model=settings.model, endpoint=redact_url(self.endpoint))
        self._client: ChatClient | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def key(self, pair: Pair, sample: int) -> RequestKey:
        first, second = (display_name(self.classes[i]) for i in pair)
        messages = self.style.messages(first, second, self.per_pair)
        return RequestKey(endpoint=split_credentials(self.endpoint)[0], model=self.settings.model,
                          messages=tuple((m["role"], m["content"]) for m in messages),
                          class_name=f"{first} | {second}", class_index=PAIR_INDEX, question=0, sample=sample,
                          temperature=self.temperature, seed=self.settings.seed, max_tokens=self.style.max_tokens)

    def run(self, pairs: list[Pair]) -> PairResult:
        todo = []
        for a, b in pairs:
            if a == b or not (0 <= a < len(self.classes) and 0 <= b < len(self.classes)):
                raise AbsclipError(f"describe: {(a, b)} is no pair of two classes of {len(self.classes)}")
            if normalize_name(self.classes[a]) == normalize_name(self.classes[b]):
                self.result.same_name.append((a, b))
            else:
                todo.append((a, b))
        try:
            for sample in range(self.settings.top_up_rounds + 1):
                answers = self._answers(todo, sample)
                for pair in todo:
                    if pair in self.result.failed:
                        self.result.unusable.pop(pair, None)  # counted once, as failed
                todo = []
                for pair, answer in answers.items():
                    first, second = (self.classes[i] for i in pair)
                    parsed = parse_pair_answer(scrub(answer.text, *self.secrets), answer.finish_reason, first,
                                               second, self.book, self.style, self.classes.names, self.per_pair)
                    if parsed.attributes:
                        self.result.descriptions[pair] = parsed
                        self.result.unusable.pop(pair, None)
                    else:
                        self.result.unusable[pair] = parsed.dropped
                        todo.append(pair)  # a fresh sample in the next round
                if not todo:
                    break
        finally:
            if self._client is not None:
                self._client.close()
        for line in self.result.lines(self.classes)[1:]:
            log.warning("%s", line)
        return self.result

    def _answers(self, pairs: list[Pair], sample: int) -> dict[Pair, CachedAnswer]:
        """Each pair's answer for ``sample``: from the cache, else asked, ``concurrency`` at a time."""
        out: dict[Pair, CachedAnswer] = {}
        missing = []
        for pair in pairs:
            cached = self.cache.get(self.key(pair, sample))
            if cached is None:
                missing.append(pair)
            else:
                out[pair] = cached
                self.result.cache_hits += 1
        if not missing:
            return out
        if self._client is None:
            self._client = ChatClient(self.endpoint, self.settings.model, self.api_key, timeout=self.settings.timeout,
                                      policy=self.settings.retry_policy())
        with ThreadPoolExecutor(max_workers=self.settings.concurrency, thread_name_prefix="describe-pairs") as pool:
            futures = [pool.submit(self._ask, pair, sample) for pair in missing]
            try:
                for pair, future in zip(missing, futures, strict=True):
                    answer = future.result()
                    if answer is not None:
                        out[pair] = answer
            except BaseException:
                self._stop.set()  # no worker starts another request; queued ones are dropped
                for future in futures:
                    future.cancel()
                raise
        return out

    def _ask(self, pair: Pair, sample: int) -> CachedAnswer | None:
        if self._stop.is_set():
            return None
        key = self.key(pair, sample)
        assert self._client is not None
        seed = None if self.settings.seed is None else self.settings.seed + sample
        try:
            completion = self._client.complete([{"role": r, "content": c} for r, c in key.messages],
                                               self.temperature, self.style.max_tokens, seed,
                                               should_stop=self._stop.is_set)
        except RequestFailedError as exc:
            with self._lock:
                self.result.requests_sent += 1
                self.result.failed[pair] = str(exc)
                if len(self.result.failed) >= self.settings.max_failures:
                    self._stop.set()
                    raise AbsclipError(scrub(
                        f"describe: giving up after {len(self.result.failed)} pair requests failed despite "
                        f"retries (last: {exc}); answers so far are cached in {self.cache.root}, rerun to resume",
                        *self.secrets)) from None
            return None
        answer = CachedAnswer(self._client.scrub(completion.text), completion.finish_reason)
        self.cache.put(key, answer)
        with self._lock:
            self.result.requests_sent += 1
        return answer
