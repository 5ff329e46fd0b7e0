"""``watchdog test``: policy unit tests, in the spirit of ``promtool test rules``."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from .._core.errors import PolicyError
from .._core.replay import Replayer, Verdict
from .._files.loading import load_policies
from .._files.policy_tests import Expectation, PolicyTest, read_test_file

__all__ = ["Result", "add_parser", "run_test"]


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "test",
        help="run policy unit tests: runs, and the outcome a policy file must give them",
        description="Run policy test files (YAML: a policy file, runs written as events or "
        "recorded traces, and each run's expected outcome) through the engine that "
        "enforces live. Prints each failing test with what it expected and what it got. "
        "Exits 0 when every test passes, 1 when one fails, 2 when a test file or its "
        "policy file cannot be read.",
    )
    parser.add_argument("files", nargs="+", metavar="TESTFILE", help="a policy test file")
    parser.set_defaults(run=_test_command)


@dataclass(frozen=True, slots=True)
class Result:
    test: PolicyTest
    expected: str
    actual: str

    @property
    def passed(self) -> bool:
        return self.expected == self.actual


def run_test(replayer: Replayer, test: PolicyTest) -> Result:
    """The test's outcome, and what it expected, each said in the words of the other."""
    expect = test.expect
    return Result(test, _say(expect, expect), _say(_actual(replayer.replay(test.trace)), expect))


def _actual(verdict: Verdict) -> Expectation:
    """What replay found, in the shape of what a test expects."""
    found = verdict.finding
    near = tuple(dict.fromkeys(f.policy or "" for f in verdict.near))
    audit = tuple(dict.fromkeys(f.policy or "" for f in verdict.audit))
    if found is None:
        return Expectation(verdict.outcome, near=near, audit=audit)
    stop = (found.policy, found.kind, found.key, found.step)
    return Expectation(verdict.outcome, *stop, near=near, audit=audit)


def _say(outcome: Expectation, expect: Expectation) -> str:
    """An outcome in one line, saying only what the test checks."""
    words = [outcome.outcome]
    if outcome.policy is not None:
        words.append(f"by {outcome.policy}")
    limit = [str(getattr(outcome, k)) for k in ("kind", "key") if getattr(expect, k) is not None]
    if limit:
        words.append(f"({', '.join(limit)})")
    if expect.step is not None and outcome.step is not None:
        words.append(f"at step {outcome.step}")
    for key in ("near", "audit"):
        if getattr(expect, key) is not None:
            names = sorted(getattr(outcome, key) or ())
            words.append(f"; {key}: {', '.join(names) or 'none'}")
    return " ".join(words).replace(" ;", ";")


def _test_command(args: argparse.Namespace) -> int:
    failed = passed = 0
    unreadable = False
    for file in args.files:
        try:
            tests = read_test_file(file)
            replayer = Replayer(load_policies(tests.policies))
        except PolicyError as error:
            print("\n".join(problem.render() for problem in error.problems), file=sys.stderr)
            unreadable = True
            continue
        results = [run_test(replayer, test) for test in tests.tests]
        for result in results:
            if result.passed:
                continue
            print(f"FAIL {file}:{result.test.line}: {result.test.name}")
            print(f"  - expected: {result.expected}")
            print(f"  + actual:   {result.actual}")
        bad = sum(not r.passed for r in results)
        failed, passed = failed + bad, passed + len(results) - bad
        status = "ok" if not bad else f"{bad} failed"
        print(f"{file}: {len(results)} test{'' if len(results) == 1 else 's'}, {status}")
    total = failed + passed
    print(f"{total} test{'' if total == 1 else 's'}: {passed} passed, {failed} failed")
    if unreadable:
        return 2
    return 1 if failed else 0
