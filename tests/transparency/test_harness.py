"""The transparency harness's own logic: comparing runs, the known-differences file, the sdist.

LangGraph's tests themselves run only through ``python -m tests.transparency``; these check
the parts that decide its verdict, in milliseconds.
"""

from __future__ import annotations

import io
import os
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.processes import wait_for
from tests.transparency.suite import (
    Outcomes,
    RunHungError,
    SuiteError,
    addopts,
    cause_key,
    compare,
    extract_tests,
    load_known_differences,
    run_bounded,
)
from tests.transparency.watchdog_transparency import first_line, merge_note


def outcomes(tests: dict[str, str], *, selection: list[str] | None = None, **kw: Any) -> Outcomes:
    return Outcomes(
        langgraph="1.2.22",
        mode="attached",
        selection=selection or [],
        seconds=1.0,
        tests={test: {"outcome": outcome, "message": "boom"} for test, outcome in tests.items()},
        collection_errors=kw.get("collection_errors", {}),
    )


def test_a_bare_passing_test_that_fails_attached_is_an_unexpected_difference() -> None:
    bare = outcomes({"t.py::a": "passed", "t.py::b": "passed", "t.py::c": "failed"})
    attached = outcomes({"t.py::a": "passed", "t.py::b": "failed", "t.py::c": "failed"})

    comparison = compare(bare, attached, {})

    assert (comparison.passing, comparison.compared) == (1, 2)
    assert [(d.test, d.cause) for d in comparison.unexpected] == [("t.py::b", "failed: boom")]


def test_known_differences_cover_a_test_or_all_its_parametrizations() -> None:
    bare = outcomes({"t.py::a[x]": "passed", "t.py::a[y]": "passed", "t.py::b": "passed"})
    attached = outcomes({"t.py::a[x]": "failed", "t.py::a[y]": "failed", "t.py::b": "failed"})

    comparison = compare(bare, attached, {"t.py::a": "uuid4 is mocked", "t.py::b": "ids"})

    assert not comparison.unexpected
    assert [d.known_reason for d in comparison.known] == ["uuid4 is mocked"] * 2 + ["ids"]


def test_known_differences_that_pass_again_are_stale_and_unknown_ones_unmatched() -> None:
    bare = outcomes({"t.py::a": "passed", "t.py::b": "passed"})
    attached = outcomes({"t.py::a": "passed", "t.py::b": "passed"})

    comparison = compare(bare, attached, {"t.py::a": "r", "t.py::gone": "r"})

    assert comparison.stale == ["t.py::a"]
    assert comparison.unmatched == ["t.py::gone"]


def test_a_test_missing_attached_fails_when_both_runs_chose_the_same_tests() -> None:
    bare = outcomes({"t.py::a": "passed", "u.py::b": "passed"})
    attached = outcomes({}, collection_errors={"u.py": "ImportError: no"})

    causes = {d.test: d.cause for d in compare(bare, attached, {}).unexpected}

    assert causes == {
        "t.py::a": "did not run attached",
        "u.py::b": "collection error: ImportError: no",
    }


def test_a_narrower_attached_run_compares_only_the_tests_it_ran() -> None:
    bare = outcomes({"t.py::a": "passed", "t.py::b": "passed"})
    attached = outcomes({"t.py::a": "passed"}, selection=["-k", "a"])

    comparison = compare(bare, attached, {})

    assert (comparison.passing, comparison.compared, comparison.unexpected) == (1, 1, [])


def test_the_shipped_known_differences_file_loads() -> None:
    load_known_differences(Path(__file__).with_name("known_differences.toml"))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[[difference]]\ntest = "t.py::a"\n', "exactly the keys"),
        ('[[difference]]\ntest = "t.py::a"\nreason = " "\n', "non-empty"),
        ('[[difference]]\ntest = "a"\nreason = "r"\n' * 2, "twice"),
        ("differences = []\n", "unknown top-level"),
    ],
)
def test_a_bad_known_differences_file_is_refused(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "known.toml"
    path.write_text(text, encoding="utf-8")

    with pytest.raises(SuiteError, match=problem):
        load_known_differences(path)


def test_causes_group_without_addresses_and_ids() -> None:
    first = "assert <X at 0x7f6b972e5630> == {'id': '01a209a0-4d74-72f5-b55b-d82848823261'}"
    second = "assert <X at 0x7f95abd7d3c0> == {'id': '01a209a0-c62a-758c-9c96-c04e9b066874'}"

    assert cause_key(first) == cause_key(second) == "assert <X at …> == {'id': '<uuid>'}"


def test_only_the_tests_and_pytest_config_come_out_of_the_sdist(tmp_path: Path) -> None:
    archive = tmp_path / "langgraph-9.9.tar.gz"
    with tarfile.open(archive, "w:gz") as sdist:
        for name in ["pyproject.toml", "tests/conftest.py", "langgraph/__init__.py"]:
            data = b"[tool.pytest.ini_options]\naddopts = '--full-trace -x'\n"
            member = tarfile.TarInfo(f"langgraph-9.9/{name}")
            member.size = len(data)
            sdist.addfile(member, io.BytesIO(data))

    extract_tests(archive, tmp_path / "out", prefix="langgraph-9.9/")

    found = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*"))
    assert found == ["pyproject.toml", "tests", "tests/conftest.py"]
    assert addopts(tmp_path / "out") == ["-x"]


def test_a_report_notes_failures_by_their_first_line_and_sums_watchdog_notes() -> None:
    total: dict[str, Any] = {}
    merge_note(total, {"graphs": 2, "runs": 1, "events": {"watchdog.internal_error": 1}})
    merge_note(total, {"runs": 3, "events": {"watchdog.internal_error": 1}, "internal_error": "E"})

    assert total == {
        "graphs": 2,
        "runs": 4,
        "events": {"watchdog.internal_error": 2},
        "internal_error": "E",
    }
    assert first_line(("t.py", 3, "Skipped: needs Postgres")) == "Skipped: needs Postgres"
    assert first_line("\n  ValueError: bad\n  more\n") == "ValueError: bad"


def test_a_run_that_outlives_its_bound_is_killed_with_what_it_started(tmp_path: Path) -> None:
    # The run starts a child of its own (as pytest starts xdist workers), prints, and hangs.
    child_pid = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(child_pid)!r}, 'w').write(str(child.pid))\n"
        "print('worker started', flush=True)\n"
        "time.sleep(600)\n"
    )
    log = tmp_path / "run.log"
    # On a busy machine the run may be killed before it started its child: then again, longer.
    for wall in (0.5, 2, 8, 32):
        with pytest.raises(RunHungError, match=f"still running after {wall:g} s, killed"):
            run_bounded(
                [sys.executable, "-c", script],
                cwd=tmp_path,
                env=dict(os.environ),
                log=log,
                wall=wall,
            )
        if log.read_text():
            break
    assert log.read_text() == "worker started\n"
    # The child is killed too: gone, or a zombie of nobody's (a kill lands when the process
    # next runs, so on a busy machine it is waited for).
    stat = Path(f"/proc/{int(child_pid.read_text())}/stat")

    def dead() -> bool:
        try:
            return stat.read_text().split(") ")[1].startswith("Z")
        except (FileNotFoundError, ProcessLookupError):
            return True

    wait_for("the child to die", dead)


def test_a_run_within_its_bound_returns_its_status(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    status = run_bounded(
        [sys.executable, "-c", "print('done'); raise SystemExit(1)"],
        cwd=tmp_path,
        env=dict(os.environ),
        log=log,
        wall=60,
    )
    assert (status, log.read_text()) == (1, "done\n")
