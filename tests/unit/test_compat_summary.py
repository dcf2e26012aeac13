"""compat/run.py's reading of a JUnit file and its NEW-failure rule (what CI fails on)."""

from __future__ import annotations

from pathlib import Path

from compat.run import KnownFailure, new_failures, read_junit, read_known_failures

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
  <testcase classname="tests.test_a" name="test_passes" file="tests/test_a.py" time="0.1"/>
  <testcase classname="tests.test_a" name="test_known" file="tests/test_a.py" time="0.2">
    <failure message="AssertionError: as listed">trace</failure></testcase>
  <testcase classname="tests.test_a.TestGroup" name="test_new" file="tests/test_a.py" time="0.3">
    <failure message="RuntimeError: nobody listed this">trace</failure></testcase>
  <testcase classname="tests.test_a" name="test_teardown" file="tests/test_a.py" time="0.1"/>
  <testcase classname="tests.test_a" name="test_teardown" file="tests/test_a.py" time="0.1">
    <error message="teardown failed">trace</error></testcase>
  <testcase classname="tests.test_a" name="test_skipped" file="tests/test_a.py" time="0.0">
    <skipped message="not here"/></testcase>
</testsuite></testsuites>
"""


def test_only_failures_that_known_failures_does_not_list_are_new(tmp_path: Path):
    junit = tmp_path / "junit.xml"
    junit.write_text(JUNIT)
    outcomes = {o.test_id: o.outcome for o in read_junit(junit)}
    assert outcomes == {
        "tests/test_a.py::test_passes": "passed",
        "tests/test_a.py::test_known": "failed",
        "tests/test_a.py::TestGroup::test_new": "failed",
        "tests/test_a.py::test_teardown": "error",
        "tests/test_a.py::test_skipped": "skipped",
    }
    known = {"tests/test_a.py::test_known": KnownFailure("g", "client", "why", "")}
    assert [o.test_id for o in new_failures(read_junit(junit), known)] == [
        "tests/test_a.py::TestGroup::test_new",
        "tests/test_a.py::test_teardown",
    ]


def test_every_listed_known_failure_has_a_category_and_a_cause():
    known = read_known_failures(Path(__file__).resolve().parents[2] / "compat" / "known_failures.toml")
    categories = {"feature", "wording", "client", "timing", "harness"}
    assert all(k.category in categories and k.cause for k in known.values())
