"""The engine of one describe run: plan requests in rounds, answer them from the cache or the endpoint
(several at a time), then clean, filter and de-duplicate the answers of each class.

Requests are planned in rounds. The first round asks what the style calls for (``per_class`` answers
spread over the questions, or a fixed number per question); later "top-up" rounds ask fresh samples
only for classes that ended short because answers were dropped (not because the endpoint failed).
Every answer is cached the moment it arrives, so an interrupted run, rerun with the same settings,
replays the same plan and only asks what is missing.

Internal to :mod:`absclip.describe`; the entry points are in :mod:`.run`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

from tqdm import tqdm

from ..errors import AbsclipError
from ..text.classes import ClassList
from ..text.descriptions import normalize_name
from .cache import AnswerCache, CachedAnswer, RequestKey
from .clean import CLIP_CONTEXT, DUPLICATE, AnswerCleaner, dedupe_key, display_name, token_counter
from .client import ChatClient, RequestFailedError, resolve_api_key
from .prompts import PromptBook, StyleSpec
from .secrets import redact_url, scrub, secrets_of, split_credentials
from .settings import DescribeSettings
from .summary import ClassOutcome, DescribeResult, DescribeSummary


@dataclass
class Target:
    """One output entry: a unique (normalised) class name and the index its requests are keyed by."""

    name: str
    index: int
    outcome: ClassOutcome
    next_sample: list[int]
    answers: dict[tuple[int, int], CachedAnswer] = field(default_factory=dict)


@dataclass(frozen=True)
class Job:
    """One request to make: sample ``sample`` of question ``question`` for ``target``."""

    target: Target
    question: int
    sample: int
    key: RequestKey


class Runner:
    """One run's state: the plan, the client, the cache and the outcomes."""

    def __init__(self, classes: ClassList, settings: DescribeSettings, book: PromptBook, style: StyleSpec) -> None:
        self.classes = classes
        self.settings = settings
        self.style = style
        self.per_class = settings.per_class or style.per_class
        self.temperature = style.temperature if settings.temperature is None else settings.temperature
        self.endpoint = settings.resolved_endpoint()
        self.api_key = resolve_api_key(settings.api_key_env)
        # answers are scrubbed before they are cached, and again when read (a cache written by an older
        # version may hold an echoed key)
        self.secrets = secrets_of(self.endpoint, self.api_key)
        self.cache = AnswerCache(settings.resolved_cache_dir())
        self.cleaner = AnswerCleaner(book, style, classes.names)
        self.count_tokens, token_method = token_counter(settings.exact_tokens)
        self.summary = DescribeSummary(
            style=style.name,
            model=settings.model,
            endpoint=redact_url(self.endpoint),
            per_class=self.per_class,
            cache_dir=self.cache.root,
            token_method=token_method,
        )
        self._client: ChatClient | None = None
        self._stop = threading.Event()
        self._failures = 0  # requests that failed despite retries, over all rounds
        self._lock = threading.Lock()

    # planning -----------------------------------------------------------------------------------------

    def _targets(self, only: Iterable[int] | None) -> list[Target]:
        groups: dict[str, list[int]] = {}
        for i, name in enumerate(self.classes.names):
            groups.setdefault(normalize_name(name), []).append(i)
        wanted = None if only is None else set(only)
        targets = []
        for indices in groups.values():
            if wanted is not None and not wanted.intersection(indices):
                continue
            first = indices[0]
            outcome = ClassOutcome(name=self.classes[first], indices=indices)
            targets.append(Target(self.classes[first], first, outcome, [0] * len(self.style.questions)))
        return targets

    def _jobs(self, target: Target, counts: list[int]) -> list[Job]:
        """``counts[q]`` new samples of question ``q``, numbered after the samples already planned."""
        jobs = []
        shown = display_name(target.name)
        for question, count in enumerate(counts):
            messages = self.style.messages(shown, question)
            start = target.next_sample[question]
            for sample in range(start, start + count):
                key = RequestKey(
                    endpoint=split_credentials(self.endpoint)[0],  # the answer does not depend on who asks
                    model=self.settings.model,
                    messages=tuple((m["role"], m["content"]) for m in messages),
                    class_name=target.name,
                    class_index=target.index,
                    question=question,
                    sample=sample,
                    temperature=self.temperature,
                    seed=self.settings.seed,
                    max_tokens=self.style.max_tokens,
                )
                jobs.append(Job(target, question, sample, key))
            target.next_sample[question] = start + count
        return jobs

    def _first_round(self, target: Target) -> list[int]:
        """The style's fixed samples per question, else ``per_class`` answers spread over the questions."""
        if self.style.samples_per_question:
            return [self.style.samples_per_question] * len(self.style.questions)
        return self._spread(target, self.per_class)

    def _top_up(self, target: Target, kept: int) -> list[int]:
        """Another round for a short class: one list per question, or one answer per missing description."""
        if self.style.parse == "list":
            return [1] * len(self.style.questions)
        return self._spread(target, self.per_class - kept)

    def _spread(self, target: Target, requests: int) -> list[int]:
        """``requests`` samples round-robin over the questions, least-asked first (deterministic, so a
        resumed run plans exactly what the interrupted one did)."""
        questions = len(self.style.questions)
        order = sorted(range(questions), key=lambda q: (target.next_sample[q], q))
        counts = [0] * questions
        for i in range(requests):
            counts[order[i % questions]] += 1
        return counts

    # running ------------------------------------------------------------------------------------------

    def run(self, only: Iterable[int] | None) -> DescribeResult:
        targets = self._targets(only)
        try:
            jobs = [job for t in targets for job in self._jobs(t, self._first_round(t))]
            self._execute(jobs)
            for _ in range(self.settings.top_up_rounds):
                short = [(t, kept) for t in targets if (kept := len(self._validate(t))) < self.per_class]
                short = [(t, kept) for t, kept in short if not t.outcome.failures]
                if not short:
                    break
                self._execute([job for t, kept in short for job in self._jobs(t, self._top_up(t, kept))])
        finally:
            if self._client is not None:
                self.summary.retries = self._client.retries
                self._client.close()
        descriptions = {}
        for target in targets:
            texts = self._validate(target)
            self._record(target, texts)
            descriptions[target.name] = texts
        self.summary.outcomes = [t.outcome for t in targets]
        return DescribeResult(descriptions, self.summary)

    def _client_for_run(self) -> ChatClient:
        if self._client is None:
            self._client = ChatClient(
                self.endpoint,
                self.settings.model,
                self.api_key,
                timeout=self.settings.timeout,
                policy=self.settings.retry_policy(),
            )
        return self._client

    def _execute(self, jobs: list[Job]) -> None:
        """Fill ``target.answers`` for ``jobs``: from the cache, else from the endpoint, K at a time."""
        missing = []
        for job in jobs:
            cached = self.cache.get(job.key)
            if cached is None:
                missing.append(job)
            else:
                job.target.answers[(job.question, job.sample)] = cached
                self.summary.cache_hits += 1
        if not missing:
            return
        client = self._client_for_run()
        bar = tqdm(
            total=len(missing),
            desc=f"describe ({self.style.name})",
            unit="req",
            disable=None if self.settings.progress is None else not self.settings.progress,
        )
        pool = ThreadPoolExecutor(max_workers=self.settings.concurrency, thread_name_prefix="describe")
        try:
            futures = [pool.submit(self._ask, client, job) for job in missing]
            for future in as_completed(futures):
                bar.update(1)
                error = future.exception()
                if isinstance(error, RequestFailedError):
                    if self._failures >= self.settings.max_failures:
                        raise AbsclipError(scrub(
                            f"describe: giving up after {self._failures} requests failed despite retries "
                            f"(last: {error}); answers so far are cached in {self.cache.root}, rerun to resume",
                            *self.secrets,
                        )) from None
                elif error is not None:
                    raise error
        except BaseException as exc:
            # Stop retrying and drop queued requests. In-flight ones may finish and reach the cache;
            # wait for them (bounded by the timeout) unless the user pressed Ctrl-C.
            self._stop.set()
            pool.shutdown(wait=not isinstance(exc, KeyboardInterrupt), cancel_futures=True)
            raise
        finally:
            bar.close()
        pool.shutdown(wait=True)

    def _ask(self, client: ChatClient, job: Job) -> None:
        """Worker: one request (with retries) stored in the cache; failures are recorded on the class.

        Any error that ends the run sets the stop flag here, in the worker, so that no worker starts
        another request in the moment before the main thread notices.
        """
        if self._stop.is_set():
            return
        seed = None if self.settings.seed is None else self.settings.seed + job.sample
        messages = [{"role": r, "content": c} for r, c in job.key.messages]
        try:
            completion = client.complete(
                messages, self.temperature, self.style.max_tokens, seed, should_stop=self._stop.is_set
            )
            answer = CachedAnswer(client.scrub(completion.text), completion.finish_reason)
            self.cache.put(job.key, answer)
        except RequestFailedError as exc:
            with self._lock:
                self.summary.requests_sent += 1
                job.target.outcome.failures.append(str(exc))
                self._failures += 1
                if self._failures >= self.settings.max_failures:
                    self._stop.set()
            raise
        except BaseException:
            self._stop.set()
            raise
        with self._lock:
            self.summary.requests_sent += 1
            job.target.answers[(job.question, job.sample)] = answer

    # validation ---------------------------------------------------------------------------------------

    def _validate(self, target: Target) -> list[str]:
        """Cleaned, filtered, de-duplicated texts (at most ``per_class``); drop reasons on the outcome."""
        kept: list[str] = []
        seen: set[str] = set()
        dropped = target.outcome.dropped
        dropped.clear()
        for question, sample in sorted(target.answers, key=lambda qs: (qs[1], qs[0])):
            answer = target.answers[(question, sample)]
            text = scrub(answer.text, *self.secrets)
            for candidate in self.cleaner.candidates(text, answer.finish_reason, target.name):
                if candidate.reason:
                    dropped[candidate.reason] += 1
                    continue
                key = dedupe_key(candidate.text)
                if key in seen:
                    dropped[DUPLICATE] += 1
                    continue
                seen.add(key)
                if len(kept) < self.per_class:
                    kept.append(candidate.text)
        return kept

    def _record(self, target: Target, texts: list[str]) -> None:
        target.outcome.kept = len(texts)
        for text in texts:
            tokens = self.count_tokens(text)
            if tokens > CLIP_CONTEXT:
                target.outcome.too_long += 1
                if len(self.summary.too_long_examples) < 5:
                    self.summary.too_long_examples.append((target.name, tokens, text))
