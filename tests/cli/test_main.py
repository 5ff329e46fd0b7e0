"""``watchdog check``, run as a real subprocess, and the policy files shipped in ``policies/``."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest

import watchdog
from tests.processes import without_file_access_override
from watchdog import Loop, Policy, TokenBudget, WallTime, load_policies

ROOT = Path(__file__).parents[2]
POLICIES = ROOT / "policies"
EXAMPLES = POLICIES / "examples"

TWO_POLICIES = """\
    version: 1
    policies:
      - name: deadline
        wall_time: {max_seconds: 300}
      - name: burst
        rate: {max_events: 30, per_seconds: 10, of: llm_calls}
"""
ONE_POLICY = """\
    version: 1
    policies:
      - name: steps
        step_count: {max_steps: 50}
"""
SCOPED_AUDIT = """\
    version: 1
    policies:
      - name: repeats
        match: {graph: ["support-*", "chat-*"]}
        loop: {window: 20, max_tool_repeats: 3}
      - name: spend
        mode: audit
        match: {graph: "support-*", metadata: {tier: free}}
        token_budget: {max_total_tokens: 50000}
"""
# Two problems, each located at the value that is wrong (line 4, column 30; line 6, column 48).
BROKEN = """\
    version: 1
    policies:
      - name: deadline
        wall_time: {max_seconds: 0}
      - name: burst
        rate: {max_events: 5, per_seconds: 10, of: llm_call}
"""
MAX_SECONDS_ZERO = "policies[0].wall_time.max_seconds: expected a number greater than 0, got 0"
OF_TYPO = (
    "policies[1].rate.of: expected one of steps, node_runs, llm_calls, tool_calls, tokens, "
    "got the string 'llm_call' (did you mean llm_calls?)"
)


def broken_rendered(broken: Path) -> list[str]:
    """What ``watchdog check`` prints of the problems of ``BROKEN`` written at ``broken``."""
    return [
        f"{broken}:4:30: {MAX_SECONDS_ZERO}",
        "  |",
        "4 |     wall_time: {max_seconds: 0}",
        "  |                              ^",
        f"{broken}:6:48: {OF_TYPO}",
        "  |",
        "6 |     rate: {max_events: 5, per_seconds: 10, of: llm_call}",
        "  |                                                ^",
    ]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def run_check(
    *args: str | Path, cwd: Path | None = None, prefix: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "watchdog", "check", *(str(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def policy_files(directory: Path) -> list[Path]:
    """The files ``load_policies`` reads from a directory, in its order."""
    return sorted(
        p
        for p in directory.iterdir()
        if p.suffix in (".yaml", ".yml") and not p.name.startswith(".") and p.is_file()
    )


# -- valid input -------------------------------------------------------------------------


def test_valid_file_prints_one_summary_line(tmp_path: Path) -> None:
    good = write(tmp_path / "good.yaml", TWO_POLICIES)

    result = run_check(good)

    assert result.returncode == 0
    assert result.stdout == f"{good}: ok, 2 policies (wall_time, rate); graphs: *\n"
    assert result.stderr == ""


def test_directory_prints_a_line_per_policy_file(tmp_path: Path) -> None:
    directory = tmp_path / "policies"
    one = write(directory / "a.yaml", ONE_POLICY)
    scoped = write(directory / "b.yml", SCOPED_AUDIT)
    # Neither is a policy file of the directory: not read, so their problems do not count.
    write(directory / ".hidden.yaml", "version: [")
    write(directory / "notes.txt", "not yaml: [")

    result = run_check(directory)

    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        f"{one}: ok, 1 policy (step_count); graphs: *",
        (
            f"{scoped}: ok, 2 policies (loop, token_budget); graphs: support-*, chat-*; "
            "1 scoped by tags or metadata; 1 in audit mode"
        ),
    ]
    assert result.stderr == ""


# -- invalid input -----------------------------------------------------------------------


def test_invalid_file_prints_located_errors_and_a_count(tmp_path: Path) -> None:
    broken = write(tmp_path / "broken.yaml", BROKEN)

    result = run_check(broken)

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        *broken_rendered(broken),
        "2 errors",
    ]


def test_one_bad_path_fails_the_check_but_the_good_ones_are_summarised(tmp_path: Path) -> None:
    good = write(tmp_path / "good.yaml", TWO_POLICIES)
    bad = write(tmp_path / "bad.yaml", ONE_POLICY.replace("max_steps: 50", "max_steps: 1.5"))
    directory = tmp_path / "more"
    in_directory = write(directory / "steps.yaml", ONE_POLICY)

    result = run_check(good, bad, directory)

    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{good}: ok, 2 policies (wall_time, rate); graphs: *",
        f"{in_directory}: ok, 1 policy (step_count); graphs: *",
    ]
    assert result.stderr.splitlines() == [
        (
            f"{bad}:4:29: policies[0].step_count.max_steps: "
            "expected a whole number greater than 0, got 1.5"
        ),
        "  |",
        "4 |     step_count: {max_steps: 1.5}",
        "  |                             ^",
        "1 error",
    ]


def test_files_it_cannot_read_do_not_hide_the_rest_of_their_directory(tmp_path: Path) -> None:
    directory = tmp_path / "policies"
    good = write(directory / "a.yaml", TWO_POLICIES)
    latin = directory / "b.yaml"
    latin.write_bytes(b"version: 1\npolicies: []\n# caf\xe9\n")
    locked = write(directory / "c.yaml", ONE_POLICY)
    locked.chmod(0)
    broken = write(directory / "d.yaml", BROKEN.replace("deadline", "d1").replace("burst", "d2"))
    scoped = write(directory / "e.yaml", SCOPED_AUDIT)

    result = run_check(directory, prefix=without_file_access_override())

    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{good}: ok, 2 policies (wall_time, rate); graphs: *",
        (
            f"{scoped}: ok, 2 policies (loop, token_budget); graphs: support-*, chat-*; "
            "1 scoped by tags or metadata; 1 in audit mode"
        ),
    ]
    assert result.stderr.splitlines() == [
        (
            f"{latin}:3:6: not UTF-8 text: byte 0xe9 (invalid continuation byte); "
            "expected the file saved as UTF-8"
        ),
        "  |",
        "3 | # caf\ufffd",
        "  |      ^",
        f"{locked}: cannot read it: Permission denied",
        *broken_rendered(broken),
        "4 errors",
    ]


def test_json_report_lists_files_and_errors(tmp_path: Path) -> None:
    scoped = write(tmp_path / "scoped.yaml", SCOPED_AUDIT)
    broken = write(tmp_path / "broken.yaml", BROKEN)

    result = run_check("--json", scoped, broken)

    assert result.returncode == 1
    assert result.stderr == ""
    assert json.loads(result.stdout) == {
        "ok": False,
        "files": [
            {
                "file": str(scoped),
                "policies": 2,
                "kinds": ["loop", "token_budget"],
                "graphs": ["support-*", "chat-*"],
                "audit": ["spend"],
            }
        ],
        "errors": [
            {
                "file": str(broken),
                "line": 4,
                "column": 30,
                "path": "policies[0].wall_time.max_seconds",
                "message": MAX_SECONDS_ZERO.split(": ", 1)[1],
                "source_line": "    wall_time: {max_seconds: 0}",
            },
            {
                "file": str(broken),
                "line": 6,
                "column": 48,
                "path": "policies[1].rate.of",
                "message": OF_TYPO.split(": ", 1)[1],
                "source_line": "    rate: {max_events: 5, per_seconds: 10, of: llm_call}",
            },
        ],
    }


def test_no_paths_is_a_usage_error() -> None:
    result = run_check()

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("usage: watchdog check ")
    assert "the following arguments are required: PATH" in result.stderr


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"

    result = run_check(missing)

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"{missing}: no such file", "1 error"]


def imported_by(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """``python -X importtime -m watchdog *args`` from the project's root, and the modules it
    imported."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "watchdog", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    lines = result.stderr.splitlines()
    return result, {line.rsplit("|", 1)[-1].strip() for line in lines if "import time:" in line}


def langgraph_modules(imported: set[str]) -> set[str]:
    return {m for m in imported if m.split(".")[0] in ("langgraph", "langchain_core")}


def test_version_is_the_installed_distributions_and_imports_no_langgraph() -> None:
    result, imported = imported_by("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"watchdog {importlib.metadata.version('langgraph-watchdog')}\n"
    assert "watchdog._cli.main" in imported
    assert langgraph_modules(imported) == set()


def test_check_imports_no_langgraph() -> None:
    result, imported = imported_by("check", "policies/")
    assert result.returncode == 0, result.stderr
    assert {"watchdog._files.loading", "yaml"} <= imported
    assert langgraph_modules(imported) == set()


def test_test_and_replay_import_no_langgraph() -> None:
    result, imported = imported_by("test", "policies/tests/default_test.yaml")
    assert result.returncode == 0, result.stderr
    assert {"watchdog._core.replay", "watchdog._files.policy_tests"} <= imported
    assert langgraph_modules(imported) == set()


def test_the_lazy_package_root_gives_every_name_it_lists() -> None:
    assert all(getattr(watchdog, name) is not None for name in watchdog.__all__)
    assert set(watchdog.__all__) <= set(dir(watchdog))
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        watchdog.nothing  # noqa: B018


# -- the shipped policies ------------------------------------------------------------------


def test_shipped_policies_pass_the_check() -> None:
    files = policy_files(POLICIES) + policy_files(EXAMPLES)
    assert POLICIES / "default.yaml" in files
    assert len(files) >= 8  # the defaults, five kinds, audit mode, scoped

    result = run_check("policies", "policies/examples", cwd=ROOT)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert [line.split(": ok, ", 1)[0] for line in lines] == [
        f.relative_to(ROOT).as_posix() for f in files
    ]
    assert lines[0] == (
        "policies/default.yaml: ok, 5 policies "
        "(wall_time, step_count, loop, token_budget, rate); graphs: *"
    )
    assert any(line.endswith(" in audit mode") for line in lines)


def _by_kind(policies: tuple[Policy, ...]) -> dict[str, list[Policy]]:
    kinds: dict[str, list[Policy]] = {}
    for policy in policies:
        kinds.setdefault(policy.kind.name, []).append(policy)
    return kinds


def test_default_policies_have_one_enforced_policy_of_each_kind() -> None:
    policies = load_policies(POLICIES / "default.yaml").policies

    by_kind = _by_kind(policies)
    assert sorted(by_kind) == ["loop", "rate", "step_count", "token_budget", "wall_time"]
    assert all(len(group) == 1 for group in by_kind.values())
    assert [p.mode for p in policies] == ["enforce"] * 5
    assert all(re.fullmatch(r"[a-z]+(-[a-z]+)*", p.name) for p in policies)
    assert all(p.match.graphs == () and not p.match.tags for p in policies)
    (loop,) = by_kind["loop"]
    assert isinstance(loop.kind, Loop)
    assert loop.kind.max_repeats is not None
    assert loop.kind.max_tool_repeats is not None
    assert loop.kind.max_cycle_repeats is None  # agent -> tools -> agent cycles by design
    (budget,) = by_kind["token_budget"]
    assert isinstance(budget.kind, TokenBudget)
    assert budget.kind.max_total_tokens is not None
    assert budget.kind.max_cost_usd is not None
    assert "default" in budget.kind.prices
    (wall_time,) = by_kind["wall_time"]
    assert isinstance(wall_time.kind, WallTime)
    assert None not in (
        wall_time.kind.max_seconds,
        wall_time.kind.idle_seconds,
        wall_time.kind.node_seconds,
    )


def test_every_default_limit_says_why() -> None:
    """Each limit or option in default.yaml has a comment right above it."""
    lines = (POLICIES / "default.yaml").read_text(encoding="utf-8").splitlines()
    limit = re.compile(r"\s+(max_\w+|idle_seconds|node_seconds|window|grace_seconds|warn_at|mode):")
    limits = [i for i, line in enumerate(lines) if limit.match(line)]

    assert len(limits) >= 12
    uncommented = [lines[i].strip() for i in limits if not lines[i - 1].lstrip().startswith("#")]
    assert uncommented == []


def test_examples_load_as_one_set_and_show_the_less_common_keys() -> None:
    policies = load_policies(EXAMPLES).policies  # a duplicate name would raise PolicyError

    assert sorted(_by_kind(policies)) == ["loop", "rate", "step_count", "token_budget", "wall_time"]
    kinds = [p.kind for p in policies]
    assert any(isinstance(k, WallTime) and k.node_seconds for k in kinds)
    assert any(getattr(k, "max_node_runs", None) for k in kinds)
    assert any(isinstance(k, Loop) and k.max_cycle_repeats for k in kinds)
    assert any(isinstance(k, TokenBudget) and k.max_input_tokens for k in kinds)
    assert any(isinstance(k, TokenBudget) and k.max_output_tokens for k in kinds)
    assert {getattr(k, "of", None) for k in kinds} >= {"tokens", "tool_calls", "steps"}
    assert any(p.cleanup_node for p in policies)
    assert any(not p.repair_thread for p in policies)
    assert any(p.landing is not None for p in policies)
    assert any(p.on_violation == "ask" for p in policies)
    assert any(getattr(p.kind, "shared", False) for p in policies)
    assert any(p.warn_at is None for p in policies)
    assert any(p.mode == "audit" for p in policies)
    assert any(p.match.metadata for p in policies)
    assert any(p.match.tags for p in policies)
    assert any(p.match.graphs for p in policies)
