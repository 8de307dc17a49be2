"""``absclip describe`` against a real HTTP chat-completions server on 127.0.0.1 (see llm_server.py)."""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from absclip.cli import describe as cli_describe
from absclip.describe import (
    DescribeSettings,
    EndpointError,
    default_cache_dir,
    describe_classes,
    ensure_descriptions,
    load_prompt_book,
    write_descriptions,
)
from absclip.describe.cache import AnswerCache
from absclip.describe.clean import (
    AnswerCleaner,
    approximate_clip_tokens,
    clean_text,
    descriptor_clause,
)
from absclip.describe.secrets import scrub
from absclip.errors import AbsclipError, InputFileError
from absclip.text.classes import load_classes
from absclip.text.descriptions import load_descriptions
from llm_server import FakeLLM, Reply, Seen

KEY_ENV = "ABSCLIP_TEST_LLM_KEY"
SECRET = "sk-Q7vN3xK9pLmW-TOPSECRET-8rJd5hYbZ4uXYZ"
ONE_QUESTION = {
    "styles": {
        "one": {
            "parse": "sentences",
            "questions": ["Describe what {article} {name} looks like."],
            "temperature": 0.5,
            "max_tokens": 40,
            "per_class": 1,
        }
    }
}


@pytest.fixture(autouse=True)
def _no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)


@pytest.fixture
def one_question(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(ONE_QUESTION), encoding="utf-8")
    return path


def unique_answers() -> Callable[[Seen], Reply]:
    """A responder giving a different, clean sentence every time (nothing is dropped)."""
    counter = itertools.count()
    lock = threading.Lock()

    def respond(seen: Seen) -> Reply:
        with lock:
            n = next(counter)
        return Reply(f"It has a distinctive shape and pattern number {n}.")

    return respond


def settings(server: FakeLLM, tmp_path: Path, **changes: object) -> DescribeSettings:
    base: dict[str, object] = {
        "endpoint": server.url,
        "model": "test-model",
        "api_key_env": KEY_ENV,
        "cache_dir": tmp_path / "cache",
        "timeout": 5.0,
        "backoff_base": 0.001,
        "backoff_max": 0.01,
        "progress": False,
    }
    base.update(changes)
    return DescribeSettings(**base)  # type: ignore[arg-type]


def cache_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "cache").rglob("*.json"))


# --- end to end -----------------------------------------------------------------------------------------


def test_cupl_output_is_clean_and_readable_by_load_descriptions(tmp_path: Path) -> None:
    counter = itertools.count()

    def messy(seen: Seen) -> Reply:
        n = next(counter)
        name = "Great white shark" if "great white shark" in seen.user else "Goldfish"
        return Reply(f'1. "{name}: A creature with fins and markings of kind {n}."')

    classes = load_classes("goldfish,great_white_shark")
    output = tmp_path / "out.json"
    with FakeLLM(messy) as server:
        result = write_descriptions(classes, output, settings(server, tmp_path, per_class=5, concurrency=2))
        bodies = [s.body for s in server.requests]
    assert len(bodies) == 10  # 5 CuPL questions x 1 sample x 2 classes
    assert {b["temperature"] for b in bodies} == {0.99} and {b["max_tokens"] for b in bodies} == {60}
    assert {b["model"] for b in bodies} == {"test-model"}
    asked = [b["messages"][-1]["content"] for b in bodies]
    assert sum("great white shark" in q for q in asked) == 5  # underscores become spaces in prompts
    loaded = load_descriptions(classes, output)
    assert loaded.resolution.missing == [] and loaded.resolution.empty == []
    for texts in loaded.texts:
        assert len(texts) == 5
        for text in texts:
            assert text.startswith("A creature with fins"), text  # numbering, quote and echo removed
    assert json.loads(output.read_text())["great_white_shark"]  # keyed by the name as given
    assert result.summary.short == [] and result.summary.failed_requests == 0


def test_cupl_answers_are_spread_over_the_questions(tmp_path: Path) -> None:
    with FakeLLM(unique_answers()) as server:
        describe_classes(load_classes(["goldfish"], min_classes=1), settings(server, tmp_path, per_class=7))
        asked = Counter(seen.user for seen in server.requests)
    questions = load_prompt_book().style("cupl").questions
    assert [asked[q.format(name="goldfish", article="a")] for q in questions] == [2, 2, 1, 1, 1]


def test_clip_d_answer_is_parsed_into_descriptor_sentences(tmp_path: Path) -> None:
    answer = (
        "There are several useful visual features to tell there is a goldfish in a photo:\n"
        "- orange scales\n- a rounded body.\n- has long, flowing fins\n- orange scales\n\n"
        "Q: What are useful features for distinguishing a cat in a photo?\nA: - whiskers\n"
    )
    with FakeLLM(lambda seen: Reply(answer)) as server:
        result = describe_classes(load_classes(["goldfish"], min_classes=1),
                                  settings(server, tmp_path, style="clip-d", per_class=3))
        asked = server.requests[0].user
        assert server.count() == 1
    assert "distinguishing a goldfish in a photo" in asked and "lemur" in asked  # the CLIP-D few-shot prompt
    assert result.descriptions == {
        "goldfish": [
            "goldfish, which has orange scales",
            "goldfish, which is a rounded body",
            "goldfish, which has long, flowing fins",
        ]
    }
    assert result.summary.outcomes[0].dropped["duplicate"] == 1  # 'orange scales' twice; 'whiskers' cut


def test_bad_answers_are_dropped_topped_up_and_explained(tmp_path: Path, one_question: Path) -> None:
    def respond(seen: Seen) -> Reply:
        if "tench" in seen.user:
            return Reply("I'm sorry, but as an AI I cannot describe images.")
        if "carp" in seen.user:
            return Reply("")
        return Reply("A goldfish is a small orange fish.")  # the same answer every time

    classes = load_classes("goldfish,tench,carp")
    output = tmp_path / "out.json"
    with FakeLLM(respond) as server:
        result = write_descriptions(
            classes,
            output,
            settings(server, tmp_path, style="one", prompts=one_question, per_class=3, top_up_rounds=1),
        )
        per_class = {n: server.count(lambda s, n=n: n in s.user) for n in ("goldfish", "tench", "carp")}
    # round 1: 3 samples each; top-up: goldfish needs 2 more, tench and carp 3 more
    assert per_class == {"goldfish": 5, "tench": 6, "carp": 6}
    outcomes = {o.name: o for o in result.summary.outcomes}
    assert outcomes["goldfish"].kept == 1 and outcomes["goldfish"].dropped["duplicate"] == 4
    assert outcomes["tench"].kept == 0 and outcomes["tench"].dropped["refused"] == 6
    assert outcomes["carp"].dropped["empty"] == 6
    text = "\n".join(result.summary.lines())
    assert "3 class names have fewer than 3 descriptions" in text
    assert "refused" in text and "duplicate" in text and "empty" in text
    written = json.loads(output.read_text())
    assert written == {"goldfish": ["A goldfish is a small orange fish."], "tench": [], "carp": []}
    assert load_descriptions(classes, output).resolution.empty == [1, 2]


def test_too_long_descriptions_are_flagged(tmp_path: Path, one_question: Path) -> None:
    long_answer = "A goldfish " + " ".join(f"has feature{i}" for i in range(60)) + "."
    with FakeLLM(lambda seen: Reply(long_answer)) as server:
        result = describe_classes(
            load_classes(["goldfish"], min_classes=1), settings(server, tmp_path, style="one", prompts=one_question)
        )
    assert result.summary.too_long == 1
    assert result.descriptions["goldfish"] == [long_answer]  # kept: the encoder truncates, we only warn
    assert any("77-token" in line for line in result.summary.lines())


def test_duplicate_class_names_share_one_entry_asked_once(tmp_path: Path, one_question: Path) -> None:
    classes = load_classes(["crane", "goldfish", "crane"])
    output = tmp_path / "out.json"
    with FakeLLM(unique_answers()) as server:
        result = write_descriptions(classes, output, settings(server, tmp_path, style="one", prompts=one_question))
        assert server.count(lambda s: "crane" in s.user) == 1
    assert [o.indices for o in result.summary.shared] == [[0, 2]]
    assert any("share the name 'crane'" in line for line in result.summary.lines())
    assert list(json.loads(output.read_text())) == ["crane", "goldfish"]
    assert load_descriptions(classes, output).resolution.shared == {"crane": [0, 2]}


# --- transport ------------------------------------------------------------------------------------------


def test_transient_errors_are_retried_until_an_answer_arrives(tmp_path: Path, one_question: Path) -> None:
    with FakeLLM(unique_answers()) as server:
        server.script(
            Reply(status=429, headers={"Retry-After": "0"}, raw=b'{"error": {"message": "rate limited"}}'),
            Reply(status=500, raw=b'{"error": {"message": "boom"}}'),
            Reply(raw=b'{"choices": [ this is not json'),
            Reply(delay=1.5),  # past the 0.3 s timeout
            Reply(status=502, raw=b"<html>bad gateway</html>"),
        )
        result = describe_classes(
            load_classes(["goldfish"], min_classes=1),
            settings(server, tmp_path, style="one", prompts=one_question, timeout=0.3),
        )
        assert server.count() == 6
    assert result.descriptions["goldfish"] == ["It has a distinctive shape and pattern number 0."]
    assert result.summary.retries == 5 and result.summary.failed_requests == 0


def test_retry_after_is_honoured(tmp_path: Path, one_question: Path) -> None:
    with FakeLLM(unique_answers()) as server:
        server.script(Reply(status=429, headers={"Retry-After": "1"}, raw=b"{}"))
        describe_classes(load_classes(["goldfish"], min_classes=1),
                         settings(server, tmp_path, style="one", prompts=one_question))
        first, second = server.requests
    assert second.started - first.started >= 0.95  # backoff alone would be ~1 ms


def test_retry_after_is_capped(tmp_path: Path, one_question: Path) -> None:
    with FakeLLM(unique_answers()) as server:
        server.script(Reply(status=429, headers={"Retry-After": "3600"}, raw=b"{}"))
        start = time.monotonic()
        describe_classes(
            load_classes(["goldfish"], min_classes=1),
            settings(server, tmp_path, style="one", prompts=one_question, retry_after_cap=0.2),
        )
        first, second = server.requests
    assert 0.18 <= second.started - first.started < 2 and time.monotonic() - start < 3


def test_requests_failing_after_all_retries_are_reported_and_not_topped_up(tmp_path: Path, one_question: Path) -> None:
    def respond(seen: Seen) -> Reply:
        if "tench" in seen.user:
            return Reply(status=503, raw=b'{"error": {"message": "overloaded"}}')
        return Reply("A goldfish is a small orange fish.")

    output = tmp_path / "out.json"
    with FakeLLM(respond) as server:
        args = cli_args(
            server, tmp_path, output, "--style", "one", "--prompts", str(one_question), "--max-retries", "2"
        )
        code = cli_describe.run(args)
        assert server.count(lambda s: "tench" in s.user) == 3  # 1 + 2 retries, then no top-up
    assert code == cli_describe.EXIT_INCOMPLETE
    # the output is not written (classify would take it for finished); the partial file says what it is
    assert not output.exists()
    partial = tmp_path / "out.partial.json"
    assert json.loads(partial.read_text()) == {"goldfish": ["A goldfish is a small orange fish."]}


def test_a_rejected_request_fails_alone_without_retries(tmp_path: Path, one_question: Path) -> None:
    def respond(seen: Seen) -> Reply:
        if "tench" in seen.user:
            return Reply(status=400, raw=b'{"error": {"message": "prompt flagged by the content filter"}}')
        return Reply("A goldfish is a small orange fish.")

    with FakeLLM(respond) as server:
        result = describe_classes(
            load_classes("goldfish,tench"), settings(server, tmp_path, style="one", prompts=one_question)
        )
        assert server.count(lambda s: "tench" in s.user) == 1
    assert result.descriptions == {"goldfish": ["A goldfish is a small orange fish."], "tench": []}
    assert "content filter" in result.summary.outcomes[1].failures[0]


def test_too_many_failures_abort_the_run(tmp_path: Path, one_question: Path) -> None:
    with FakeLLM(lambda seen: Reply(status=500, raw=b"{}")) as server:
        config = settings(
            server, tmp_path, style="one", prompts=one_question, max_retries=0, max_failures=2, concurrency=1
        )
        with pytest.raises(AbsclipError, match="giving up after 2 requests failed"):
            describe_classes(load_classes([f"class{i}" for i in range(10)]), config)
        assert server.count() == 2


def test_unfixable_errors_abort_at_once(tmp_path: Path, one_question: Path) -> None:
    output = tmp_path / "out.json"
    with FakeLLM(lambda seen: Reply(status=404, raw=b'{"error": {"message": "model not found"}}')) as server:
        config = settings(server, tmp_path, style="one", prompts=one_question, concurrency=2)
        with pytest.raises(EndpointError, match=r"HTTP 404.*model not found.*--model"):
            write_descriptions(load_classes([f"class{i}" for i in range(20)]), output, config)
        assert server.count() <= 4  # not 20 requests, nor any retries
    assert not output.exists()


def test_concurrency_is_bounded_and_used(tmp_path: Path, one_question: Path) -> None:
    classes = load_classes([f"class{i}" for i in range(12)])
    with FakeLLM(unique_answers(), work_time=0.05) as server:
        describe_classes(classes, settings(server, tmp_path, style="one", prompts=one_question, concurrency=3))
        assert server.count() == 12
        assert 2 <= server.max_in_flight <= 3
    with FakeLLM(unique_answers(), work_time=0.02) as server:
        describe_classes(
            classes,
            settings(server, tmp_path / "other", style="one", prompts=one_question, concurrency=1),
        )
        assert server.max_in_flight == 1


def test_a_429_pauses_every_worker(tmp_path: Path, one_question: Path) -> None:
    def slow(seen: Seen) -> Reply:
        return Reply("It has a distinctive shape.", delay=0.2)

    with FakeLLM(slow) as server:
        server.script(Reply(status=429, headers={"Retry-After": "0.5"}, raw=b"{}"))
        describe_classes(
            load_classes([f"class{i}" for i in range(6)]),
            settings(server, tmp_path, style="one", prompts=one_question, concurrency=3),
        )
        first, *rest = server.requests
    assert len(rest) == 6
    # the other workers' requests in flight when the 429 came finish at ~0.2 s; they wait for the pause
    assert all(seen.started - first.started >= 0.45 for seen in rest[2:])


def test_progress_bar_is_drawn_when_asked(
    tmp_path: Path, one_question: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeLLM(unique_answers()) as server:
        describe_classes(
            load_classes("goldfish,tench"),
            settings(server, tmp_path, style="one", prompts=one_question, progress=True),
        )
    err = capsys.readouterr().err
    assert "describe (one)" in err and "2/2" in err


# --- cache and resume -----------------------------------------------------------------------------------


def test_rerun_after_deleting_output_asks_nothing(tmp_path: Path) -> None:
    classes = load_classes("goldfish,tench")
    output = tmp_path / "out.json"
    with FakeLLM(unique_answers()) as server:
        write_descriptions(classes, output, settings(server, tmp_path, per_class=5))
        first = output.read_text()
        assert server.count() == 10 and len(cache_files(tmp_path)) == 10
        output.unlink()
        again = write_descriptions(classes, output, settings(server, tmp_path, per_class=5))
        assert server.count() == 10  # nothing new asked
        assert again.summary.cache_hits == 10 and again.summary.requests_sent == 0
        assert output.read_text() == first
        write_descriptions(classes, output, settings(server, tmp_path, per_class=10, seed=7))
        assert server.count() == 30  # the seed is part of the cache key: nothing reused
        assert Counter(s.body["seed"] for s in server.requests[10:]) == {7: 10, 8: 10}  # seed + sample


def test_run_interrupted_by_an_exception_resumes_with_the_rest(
    tmp_path: Path, one_question: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    classes = load_classes([f"class{i}" for i in range(8)])
    output = tmp_path / "out.json"
    original_put = AnswerCache.put
    puts = itertools.count(1)

    def dying_put(self: AnswerCache, key: object, answer: object) -> None:
        original_put(self, key, answer)  # type: ignore[arg-type]
        if next(puts) == 3:
            raise RuntimeError("simulated crash after the third answer")

    with FakeLLM(unique_answers()) as server:
        config = settings(server, tmp_path, style="one", prompts=one_question, concurrency=1)
        monkeypatch.setattr(AnswerCache, "put", dying_put)
        with pytest.raises(RuntimeError, match="simulated crash"):
            write_descriptions(classes, output, config)
        monkeypatch.setattr(AnswerCache, "put", original_put)
        assert server.count() == 3 and len(cache_files(tmp_path)) == 3 and not output.exists()
        asked_first = {s.user for s in server.requests}
        write_descriptions(classes, output, config)
        assert server.count() == 8
        assert asked_first.isdisjoint(s.user for s in server.requests[3:])  # only the rest was asked
    assert len(json.loads(output.read_text())) == 8


def test_run_killed_midway_resumes_with_the_rest(tmp_path: Path, one_question: Path) -> None:
    answered = itertools.count()

    def respond(seen: Seen) -> Reply:
        if next(answered) < 4:
            return Reply(f"It looks like thing {seen.user[-12:]}")
        return Reply("too late", delay=30)  # the fifth request hangs until the process is killed

    classes = ",".join(f"class{i}" for i in range(10))
    output = tmp_path / "out.json"
    with FakeLLM(respond) as server:
        code = (
            "import argparse, sys\n"
            "from absclip.cli.describe import register\n"
            "parser = argparse.ArgumentParser(); register(parser.add_subparsers())\n"
            "args = parser.parse_args(sys.argv[1:]); sys.exit(args.func(args))\n"
        )
        argv = [*cli_argv(server, tmp_path, output, classes), "--style", "one", "--prompts", str(one_question)]
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *argv, "--concurrency", "1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 15
            while server.count() < 5 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert server.count() == 5
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        assert len(cache_files(tmp_path)) == 4 and not output.exists()
        server.responder = unique_answers()
        describe_run = cli_describe.run(cli_args_from(argv))
        assert describe_run == cli_describe.EXIT_OK
        assert server.count() == 5 + 6  # the 4 answered ones are not asked again
    assert len(json.loads(output.read_text())) == 10


def test_ensure_descriptions_reuses_or_completes_a_file(tmp_path: Path, one_question: Path) -> None:
    classes = load_classes("goldfish,tench")
    output = tmp_path / "desc.json"
    output.write_text(json.dumps({"Goldfish": ["my hand-written description"], "other": ["kept"]}))
    with FakeLLM(unique_answers()) as server:
        options = {**settings(server, tmp_path, style="one", prompts=one_question).__dict__}
        reported: list[str] = []
        assert ensure_descriptions(classes, output, report=reported.append, **options) == output
        assert reported and reported[0].startswith("describe: style one")
        assert server.count() == 1 and "tench" in server.requests[0].user  # only the missing class
        data = json.loads(output.read_text())
        assert data["Goldfish"] == ["my hand-written description"] and data["other"] == ["kept"]
        assert data["tench"] == ["It has a distinctive shape and pattern number 0."]
        before = output.stat().st_mtime_ns
        ensure_descriptions(classes, output, **options)
        assert server.count() == 1 and output.stat().st_mtime_ns == before  # covered: reused untouched


# --- secrets --------------------------------------------------------------------------------------------


def test_api_key_is_sent_but_never_written_logged_or_raised(
    tmp_path: Path,
    one_question: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    caplog.set_level(logging.DEBUG)
    echo = json.dumps({"error": {"message": f"bad key {SECRET} (sk-Q7v****uXYZ)"}}).encode()
    output = tmp_path / "out.json"
    with FakeLLM(unique_answers()) as server:
        server.script(Reply(status=429, raw=echo, headers={"Retry-After": "0"}), Reply(status=500, raw=echo))
        args = cli_args(
            server,
            tmp_path,
            output,
            "--style",
            "one",
            "--prompts",
            str(one_question),
            "--max-retries",
            "1",
            "--concurrency",
            "1",
        )
        assert cli_describe.run(args) == cli_describe.EXIT_INCOMPLETE  # one class failed after 1 retry
        server.responder = lambda seen: Reply(status=401, raw=echo)
        with pytest.raises(EndpointError) as raised:
            write_descriptions(load_classes("zebra", min_classes=1), tmp_path / "other.json",
                               cli_describe.settings_from_args(args))
        assert server.requests[0].authorization == f"Bearer {SECRET}"  # the key was really used
    captured = capsys.readouterr()
    places = {
        "exception": str(raised.value),
        "logs": caplog.text,
        "stderr": captured.err,
        "stdout": captured.out,
        "output": (tmp_path / "out.partial.json").read_text(),
    }
    places.update({str(p): p.read_text() for p in (tmp_path / "cache").rglob("*") if p.is_file()})
    assert len(places) > 5
    pieces = [SECRET[i : i + 6] for i in range(len(SECRET) - 5)]
    for where, text in places.items():
        assert not [p for p in pieces if p in text], f"API key fragment found in {where}"
        assert "sk-Q7v" not in text and "uXYZ" not in text, f"masked key found in {where}"
    assert "HTTP 401" in str(raised.value) and "--api-key-env" in str(raised.value)


def test_scrub_removes_whole_partial_and_masked_keys() -> None:
    assert scrub(f"key={SECRET}!", SECRET) == "key=[redacted]!"
    assert scrub("masked sk-Q7vN****Z4uXYZ here", SECRET) == "masked [redacted] here"
    # masks whose visible ends are shorter than a 6-character piece (what the issue found passing through)
    key = "sk-test-0123456789abcdef"
    assert scrub("Incorrect API key provided: sk-te****cdef.", key) == "Incorrect API key provided: [redacted]."
    assert scrub("key sk-tes...cdef or sk-•••••ef", key) == "key [redacted] or [redacted]"
    assert scrub("a ****** rating, five stars...", key) == "a ****** rating, five stars..."  # no key piece
    assert scrub(f"user pw {key} and hunter22", key, "hunter22") == "user pw [redacted] and [redacted]"
    assert scrub("nothing to hide", SECRET) == "nothing to hide"
    assert scrub("a none b", "none") == "a none b"  # the placeholder is not a secret


# --- cleaning, prompts, settings ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('1. "Goldfish: a small orange fish."', "A small orange fish."),
        ("- **Goldfish** — bright orange scales", "Bright orange scales"),
        ("Answer: A goldfish has fins.", "A goldfish has fins."),
        ("“A goldfish in a bowl", "A goldfish in a bowl"),
        ("The goldfish: round body", "Round body"),
        ("Goldfish are orange.", "Goldfish are orange."),  # a sentence about the class is not an echo
    ],
)
def test_clean_text(raw: str, expected: str) -> None:
    assert clean_text(raw, "goldfish") == expected


def test_answers_about_another_class_or_off_topic_are_dropped() -> None:
    book = load_prompt_book()
    cleaner = AnswerCleaner(book, book.style("cupl"), ["goldfish", "tench"])
    reasons = {
        text: cleaner.candidates(text, "stop", "goldfish")[0].reason
        for text in (
            "Tench: a green fish with red eyes.",
            "Could you clarify which goldfish you mean?",
            "See https://example.com/goldfish for pictures.",
            "As an AI language model, I don't have eyes.",
            "Goldfish",
            "A goldfish is orange.",
        )
    }
    assert list(reasons.values()) == ["about another class", "off-topic", "off-topic", "refused", "off-topic", None]
    cut = cleaner.candidates("A goldfish is orange. It has a long", "length", "goldfish")
    assert [c.text for c in cut] == ["A goldfish is orange."]  # a reply cut by max_tokens loses its stub


def test_descriptor_clause_follows_clip_d() -> None:
    assert descriptor_clause("a long tail") == "which is a long tail"
    assert descriptor_clause("antennae") == "which has antennae"  # CLIP-D's startswith('a') bug avoided
    assert descriptor_clause("can swim") == "which can swim"
    assert descriptor_clause("used for riding") == "which is used for riding"


def test_approximate_token_count_is_close_to_clip() -> None:
    # reference counts from open_clip's SimpleTokenizer (+2 for start and end tokens)
    assert abs(approximate_clip_tokens("tench, which has olive-green to dark bronze coloration") - 15) <= 2
    assert approximate_clip_tokens("word " * 80) > 77


def test_prompts_file_errors_are_explained(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"styles": {"x": {"questions": ["What is {classname}?"]}}}))
    with pytest.raises(InputFileError, match=r"unknown or malformed placeholder.*\{name\}"):
        load_prompt_book(bad)
    with pytest.raises(InputFileError, match=r"unknown description style 'nope'.*clip-d, cupl"):
        load_prompt_book().style("nope")
    with pytest.raises(InputFileError, match="cannot read prompts file"):
        load_prompt_book(tmp_path / "missing.json")
    book = load_prompt_book()
    assert set(book.styles) >= {"cupl", "clip-d"} and len(book.style("cupl").questions) == 5


def test_default_cache_dir_follows_absclip_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ABSCLIP_CACHE", str(tmp_path / "root"))
    assert default_cache_dir() == tmp_path / "root" / "describe"
    monkeypatch.delenv("ABSCLIP_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "absclip" / "describe"


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(AbsclipError, match="concurrency"):
        DescribeSettings(concurrency=0)


# --- CLI ------------------------------------------------------------------------------------------------


def cli_argv(server: FakeLLM, tmp_path: Path, output: Path, classes: str = "goldfish,tench") -> list[str]:
    return [
        "describe",
        "--classes",
        classes,
        "--output",
        str(output),
        "--endpoint",
        server.url,
        "--model",
        "test-model",
        "--api-key-env",
        KEY_ENV,
        "--cache",
        str(tmp_path / "cache"),
        "--timeout",
        "5",
        "--backoff",
        "0.001",
        "--no-progress",
    ]


def cli_args_from(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="absclip")
    cli_describe.register(parser.add_subparsers())
    return parser.parse_args(argv)


def cli_args(server: FakeLLM, tmp_path: Path, output: Path, *extra: str) -> argparse.Namespace:
    return cli_args_from([*cli_argv(server, tmp_path, output), *extra])


def test_cli_registers_a_documented_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="absclip")
    sub = cli_describe.register(parser.add_subparsers())
    undocumented = [a.dest for a in sub._actions if not a.help]
    assert undocumented == []
    options = {opt for a in sub._actions for opt in a.option_strings}
    for option in (
        "--classes",
        "--output",
        "--style",
        "--per-class",
        "--endpoint",
        "--model",
        "--api-key-env",
        "--concurrency",
        "--temperature",
        "--seed",
        "--cache",
        "--timeout",
        "--max-retries",
        "--prompts",
    ):
        assert option in options
    output = tmp_path / "out.json"
    with FakeLLM(unique_answers()) as server:
        args = cli_args(server, tmp_path, output, "--style", "clip-d", "--per-class", "1", "--temperature", "0.3")
        assert args.func is cli_describe.run
        assert args.func(args) == cli_describe.EXIT_OK
        assert {s.body["temperature"] for s in server.requests} == {0.3}
    assert set(json.loads(output.read_text())) == {"goldfish", "tench"}
    assert "describe: style clip-d" in capsys.readouterr().err
