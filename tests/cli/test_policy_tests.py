"""``watchdog test``, run as a user runs it: the shipped tests pass, and a failing or broken
test file says what it expected and what it got, with exit codes for CI."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).parents[2]
SHIPPED = sorted((ROOT / "policies" / "tests").glob("*.yaml"))
POLICIES = """\
version: 1
policies:
  - name: steps
    step_count: {max_steps: 5}
  - name: tools
    loop: {max_tool_repeats: 2}
"""


def watchdog_test(*files: Path | str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "watchdog", "test", *(str(f) for f in files)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def test_every_shipped_policy_file_has_tests_and_they_pass() -> None:
    tested = {re.search(r"^policies: (.+)$", p.read_text(), re.M)[1] for p in SHIPPED}  # type: ignore[index]
    files = sorted((ROOT / "policies").glob("**/*.yaml"))
    shipped = {f"../{f.relative_to(ROOT / 'policies')}" for f in files if "tests" not in f.parts}
    assert tested == shipped
    result = watchdog_test(*(path.relative_to(ROOT) for path in SHIPPED))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines()[-1] == "31 tests: 31 passed, 0 failed"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_a_failing_test_shows_what_it_expected_and_what_it_got_and_exits_1(
    tmp_path: Path,
) -> None:
    write(tmp_path, "policies.yaml", POLICIES)
    write(
        tmp_path,
        "policies_test.yaml",
        """\
        policies: policies.yaml
        tests:
          - name: a loop of steps
            run:
              - node: agent
                repeat: 9
            expect: {outcome: cancelled, policy: steps, kind: step_count, step: 5}
          - name: a tool asked twice
            run:
              - node: tools
              - tool: {name: search, arguments: q}
                repeat: 2
            expect: {outcome: cancelled, policy: tools}
          - name: three steps
            run: [{node: agent, repeat: 3}]
            expect: {outcome: completed, near: []}
        """,
    )
    result = watchdog_test("policies_test.yaml", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (1, "")
    assert result.stdout.splitlines() == [
        "FAIL policies_test.yaml:3: a loop of steps",
        "  - expected: cancelled by steps (step_count) at step 5",
        "  + actual:   cancelled by steps (step_count) at step 6",
        "FAIL policies_test.yaml:8: a tool asked twice",
        "  - expected: cancelled by tools",
        "  + actual:   completed",
        "policies_test.yaml: 3 tests, 2 failed",
        "3 tests: 1 passed, 2 failed",
    ]


def test_a_test_file_that_cannot_be_read_is_located_and_exits_2(tmp_path: Path) -> None:
    write(tmp_path, "policies.yaml", POLICIES)
    write(
        tmp_path,
        "broken_test.yaml",
        """\
        policies: policies.yaml
        tests:
          - name: misspelt
            run:
              - node: agent
                repeats: 9
            expect: {outcome: canceled}
        """,
    )
    result = watchdog_test("broken_test.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert [line for line in result.stderr.splitlines() if line.startswith("broken")] == [
        (
            "broken_test.yaml:6:9: tests[0].run[0].repeats: unknown key 'repeats' (did you "
            "mean repeat?); expected one of node, input, same_step, seconds, repeat, llm, tool, "
            "wait, each"
        ),
        (
            "broken_test.yaml:7:23: tests[0].expect.outcome: expected one of completed, "
            "cancelled, landed_softly, asked, got the string 'canceled' (did you mean cancelled?)"
        ),
    ]


def test_a_test_of_a_broken_policy_file_exits_2_with_the_policy_files_problem(
    tmp_path: Path,
) -> None:
    write(tmp_path, "policies.yaml", POLICIES.replace("max_steps: 5", "max_steps: -5"))
    write(
        tmp_path,
        "policies_test.yaml",
        """\
        policies: policies.yaml
        tests:
          - {name: one, run: [{node: agent}], expect: {outcome: completed}}
        """,
    )
    result = watchdog_test("policies_test.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "policies.yaml:4:29: policies[0].step_count.max_steps: " in result.stderr
