"""``absclip methods``: every registered method (zero-shot, few-shot, test-time, transductive) is listed once,
on one line, with its setting and a one-line summary of what it does and its key settings.

The registry is iterated, so a method added in its own module is checked without touching this file."""

from __future__ import annotations

import pytest

import absclip.cli as cli
from absclip.cli.models import SETTINGS, method_listing
from absclip.methods import METHODS, list_methods


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_has_a_one_line_summary_and_a_known_setting(name: str) -> None:
    cls = METHODS.get(name)
    summary = cls.summary
    assert isinstance(summary, str) and summary.strip(), f"method {name!r} sets no `summary`"
    assert "\n" not in summary and summary == summary.strip(), f"method {name!r}: summary must be one line"
    assert cls.setting in SETTINGS, f"method {name!r}: setting {cls.setting!r} is not one of {list(SETTINGS)}"
    # few-shot and test-time methods need a support set or a stream, so classify does not offer them
    if cls.setting in ("few-shot", "test-time"):
        assert name not in list_methods() and name in list_methods(adaptive=True)


def _listed(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    code = cli.main(["methods", *args])
    return code, capsys.readouterr().out.splitlines()


def test_methods_lists_each_method_once_with_its_setting(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = _listed(capsys)
    assert code == 0
    names = METHODS.names()
    rows = [line.split("\t") for line in lines if "\t" in line]
    assert sorted(r[0] for r in rows) == names  # each registered method on exactly one line
    for name, setting, summary in rows:
        cls = METHODS.get(name)
        assert setting == cls.setting
        assert summary == " ".join(cls.summary.split()).removeprefix(f"{setting}: ")
    # grouped: the settings come in SETTINGS order, so all zero-shot lines precede the few-shot ones ...
    order = [list(SETTINGS).index(r[1]) for r in rows]
    assert order == sorted(order)
    assert {"zero-shot", "few-shot", "test-time"} <= {r[1] for r in rows}
    # ... and a legend says what each listed setting needs
    for setting in {r[1] for r in rows}:
        assert f"{setting}: {SETTINGS[setting]}" in lines


def test_methods_pattern_filters_and_reports_no_match(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = _listed(capsys, "tip-adapter*")
    assert code == 0
    listed = [line.split()[0] for line in lines if line.startswith("tip-adapter")]
    assert listed == ["tip-adapter", "tip-adapter+abs", "tip-adapter+mce"]
    assert lines[-1].startswith("few-shot: ") and not any(line.startswith("zero-shot") for line in lines)
    assert [r[0] for r in method_listing("tda*")] == ["tda", "tda+abs", "tda+mce"]
    code = cli.main(["methods", "no-such-method*"])
    assert code == 1 and "no method matches" in capsys.readouterr().err
