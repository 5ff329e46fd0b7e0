"""``watchdog demo``, run as a user runs it: a subprocess, piped or on a terminal."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

from watchdog._cli.demo import SCENARIOS, Expected, Outcome

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def demo(*args: str, code: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """``watchdog demo`` in a subprocess, its output piped; ``code`` runs before it."""
    script = (
        f"{code or ''}\nfrom watchdog._cli.main import main\n"
        f"raise SystemExit(main({['demo', *args]!r}))"
    )
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "NO_COLOR": "", **env},
    )


def on_a_terminal(**env: str) -> str:
    """``watchdog demo`` with a pseudo-terminal as its standard output: what a person sees."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: its standard streams are the terminal
        os.execve(sys.executable, [sys.executable, "-m", "watchdog", "demo"], {**os.environ, **env})
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return b"".join(chunks).decode()


def test_the_demo_cancels_every_runaway_by_its_own_policy_and_completes_the_good_agent() -> None:
    result = demo("--json")

    assert result.returncode == 0, result.stderr
    events: list[dict[str, Any]] = [json.loads(line) for line in result.stdout.splitlines()]
    cancelled_by = {
        e["graph"]: e["policy"] for e in events if e["event"] == "watchdog.run_cancelled"
    }
    finished = {e["graph"]: e["outcome"] for e in events if e["event"] == "watchdog.run_finished"}
    runaways = {s.name: s.expected.policy for s in SCENARIOS if s.expected.policy}
    assert cancelled_by == {name: p for name, p in runaways.items() if name != "soft-landing"}
    assert finished["good-agent"] == finished["soft-landing"] == "completed"
    (landed,) = (e for e in events if e["event"] == "watchdog.landed_softly")
    assert (landed["graph"], landed["policy"], landed["llm_calls"]) == (
        "soft-landing",
        "research-budget",
        1,
    )
    (summary,) = (e for e in events if e["event"] == "watchdog.demo_summary")
    assert summary["level"] == "info"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", summary["timestamp"])
    hung = next(run for run in summary["runs"] if run["scenario"] == "hung-tool")
    assert hung == {
        "scenario": "hung-tool",
        "outcome": "cancelled",
        "policy": "hung-tool",
        "node": "tools",
        "phase": "hard",
        "as_expected": True,
    }
    assert all(run["as_expected"] for run in summary["runs"])
    # The story of the runs is on standard error, ending with the summary table.
    assert "every run ended as expected." in result.stderr
    assert "scenario           outcome    policy" in result.stderr


def test_piped_output_is_plain_and_shows_the_policies_the_verdicts_and_what_phases_mean() -> None:
    result = demo()

    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert not ANSI.search(out)
    assert re.search(r"^  steps +step_count +max_steps: 25 +endless-loop$", out, re.MULTILINE)
    assert re.search(r"^  backstop +wall_time +max_seconds: 5 +every graph$", out, re.MULTILINE)
    for scenario in SCENARIOS:
        assert re.search(rf"^  PASS  {scenario.name} ", out, re.MULTILINE), scenario.name
    # A reason is printed whole, and a step count never reads as seconds.
    assert "The run began step 26, but policy 'steps' allows at most 25 steps." in out
    assert "drained: the run stopped at its next step boundary" in out
    assert "hard: a node still ran grace_seconds after the stop" in out


def test_a_terminal_gets_colour_unless_no_color_is_set() -> None:
    assert "\x1b[32mevery run ended as expected.\x1b[0m" in on_a_terminal(NO_COLOR="")
    assert not ANSI.search(on_a_terminal(NO_COLOR="1"))


def test_a_run_that_does_not_show_what_its_scenario_should_is_reported_and_fails_the_demo() -> None:
    wrong = (
        "import watchdog._cli.demo as demo\n"
        "good = demo.SCENARIOS[-1]\n"
        "demo.SCENARIOS[-1] = type(good)(good.name, good.what, good.build, good.graph_input, "
        "demo.Expected('steps'))"
    )

    result = demo(code=wrong)

    assert result.returncode == 1
    assert "  FAIL  good-agent         completed in " in result.stdout
    assert "expected stopped by steps, got completed" in result.stdout
    assert "NOT AS EXPECTED: good-agent." in result.stdout


@pytest.mark.parametrize(
    ("expected", "outcome", "mismatch"),
    [
        (Expected(None), Outcome(SCENARIOS[0], "completed"), None),
        (
            Expected("hung-tool", node="tools", phase="hard"),
            Outcome(SCENARIOS[0], "cancelled", "hung-tool", node="agent", phase="hard"),
            (
                "expected stopped by hung-tool at node 'tools' (hard), "
                "got stopped by hung-tool at node 'agent' (hard)"
            ),
        ),
        (
            Expected("hung-tool", node="tools", phase="hard"),
            Outcome(SCENARIOS[0], "cancelled", "hung-tool", node="tools", phase="drained"),
            (
                "expected stopped by hung-tool at node 'tools' (hard), "
                "got stopped by hung-tool at node 'tools' (drained)"
            ),
        ),
        (
            Expected("steps"),
            Outcome(SCENARIOS[0], "cancelled", "backstop", node="work", phase="drained"),
            "expected stopped by steps, got stopped by backstop at node 'work' (drained)",
        ),
        (
            Expected("steps"),
            Outcome(SCENARIOS[0], "cancelled", "steps", "work", phase="hard"),
            None,
        ),
    ],
)
def test_a_run_is_judged_by_each_detail_its_scenario_names(
    expected: Expected, outcome: Outcome, mismatch: str | None
) -> None:
    outcome.scenario = type(SCENARIOS[0])("s", "", SCENARIOS[0].build, None, expected)

    assert outcome.mismatch == mismatch


def _closure(distribution: str, extras: tuple[str, ...] = ()) -> set[str]:
    """The names of ``distribution`` and of everything it requires, with ``extras``."""
    seen: set[str] = set()
    todo = [(distribution, extras)]
    while todo:
        name, wanted = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        for line in metadata.requires(name) or ():
            requirement = Requirement(line)
            marker = requirement.marker
            if marker is None or any(marker.evaluate({"extra": e}) for e in ("", *wanted)):
                todo.append((requirement.name, tuple(requirement.extras)))
    return seen


def test_the_demo_needs_only_the_core_install(tmp_path: Path) -> None:
    """The quickstart installs no extra: the demo runs with every other distribution hidden,
    as on a machine where only the core was installed (the libraries it uses then do without
    their optional imports, as they do there)."""
    core = _closure("langgraph-watchdog")
    extra_files = tmp_path / "extra_files.json"
    extra_files.write_text(
        json.dumps(
            [
                str(dist.locate_file(file))
                for dist in metadata.distributions()
                if dist.metadata["Name"].lower().replace("_", "-") not in core
                for file in dist.files or ()
            ]
        )
    )
    hide = f"""
import importlib.machinery, json, sys
hidden = set(json.load(open({str(extra_files)!r})))
class HideExtras(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        spec = super().find_spec(name, path, target)
        if spec is not None and spec.origin in hidden:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return spec
sys.meta_path.insert(0, HideExtras)
"""

    result = demo(code=hide)

    assert result.returncode == 0, result.stderr
    assert "every run ended as expected." in result.stdout
