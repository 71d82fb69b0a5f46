"""Under CI=true a skipped browser test fails the run (Testing/conftest.py), so CI cannot pass without having driven
the web page in Chromium; outside CI a machine without Chromium skips them. Run by pytest itself (pytester) on a
stand-in test_web.py that skips."""

from __future__ import annotations

from pathlib import Path

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).resolve().parent / "conftest.py"
SKIPPING_BROWSER_TESTS = """
import pytest

def test_page():
    pytest.skip("no chromium (apt-get install chromium)")
"""


def run_suite(pytester, monkeypatch, ci: str):
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(test_web=SKIPPING_BROWSER_TESTS, test_other="def test_other():\n    pass\n")
    monkeypatch.setenv("CI", ci)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider")


def test_skipped_browser_tests_fail_the_run_under_ci(pytester, monkeypatch):
    result = run_suite(pytester, monkeypatch, "true")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*CI=true: 1 browser test(s) were skipped*apt-get install chromium*"])


def test_outside_ci_they_only_skip(pytester, monkeypatch):
    result = run_suite(pytester, monkeypatch, "")
    assert result.ret == 0
    result.assert_outcomes(passed=1, skipped=1)
