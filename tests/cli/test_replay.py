"""``watchdog replay``, run as a user runs it, on traces recorded from real graphs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.adapter.test_recording import FIVE_KINDS, run_all
from tests.graphs import policies
from watchdog import Supervisor


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five runs, each stopped by its own kind of policy, recorded to a file."""
    folder = tmp_path_factory.mktemp("recorded")
    asyncio.run(run_all(Supervisor(policies(FIVE_KINDS), record=folder / "traces.jsonl")))
    (folder / "policies.yaml").write_text(f"version: 1\npolicies:{FIVE_KINDS}")
    looser = FIVE_KINDS.replace("max_steps: 5", "max_steps: 1000")
    (folder / "looser.yaml").write_text(f"version: 1\npolicies:{looser}")
    return folder


def replay(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "watchdog", "replay", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=folder,
        check=False,
    )


def test_each_run_says_which_policy_stops_it_where_and_why_then_a_summary(
    recorded: Path,
) -> None:
    result = replay(recorded, "policies.yaml", "traces.jsonl")
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    runs = [line for line in lines if line.startswith("run ")]
    assert [line.split("): ", 1)[1].split(" in node")[0] for line in runs] == [
        "cancelled by wall (wall_time, max_seconds) at step 1",
        "cancelled by steps (step_count, max_steps) at step 6",
        "cancelled by loops (loop, max_repeats) at step 4",
        "cancelled by tokens (token_budget, max_total_tokens) at step 9",
        "cancelled by calls (rate, max_events) at step 5",
    ]
    assert "(graph counts, recorded cancelled by steps at step 6): " in runs[1]
    assert runs[1].endswith("The run began step 6, but policy 'steps' allows at most 5 steps.")
    assert "  near: steps (step_count, max_steps) at step 4" in lines
    assert lines[-3:] == [
        "5 runs: 5 cancelled",
        "  stopped by: calls 1 run, loops 1 run, steps 1 run, tokens 1 run, wall 1 run",
        "  near limits of: calls 1 run, loops 1 run, steps 1 run, tokens 1 run, wall 1 run",
    ]


def test_the_diff_lists_the_runs_a_looser_policy_set_changes(recorded: Path) -> None:
    result = replay(recorded, "--diff", "policies.yaml", "looser.yaml", "traces.jsonl")
    assert (result.returncode, result.stderr) == (0, "")
    (change, total) = result.stdout.splitlines()
    assert change.endswith(
        "(graph counts): cancelled by steps (step_count, max_steps) at step 6 -> cut short"
    )
    assert total == "1 of 5 runs change: 0 newly stopped, 1 no longer stopped, 0 stopped otherwise"
    as_json = json.loads(
        replay(recorded, "--diff", "policies.yaml", "looser.yaml", "traces.jsonl", "--json").stdout
    )
    (changed,) = as_json["changed"]
    assert (changed["graph"], changed["old"]["policy"], changed["new"]["outcome"]) == (
        "counts",
        "steps",
        "cut_short",
    )


def test_json_has_every_run_and_the_summary(recorded: Path) -> None:
    result = replay(recorded, "policies.yaml", "traces.jsonl", "--json")
    report = json.loads(result.stdout)
    assert [run["policy"] for run in report["runs"]] == [
        "wall",
        "steps",
        "loops",
        "tokens",
        "calls",
    ]
    assert report["summary"]["outcomes"] == {"cancelled": 5}
    assert report["summary"]["stopped_by"] == {
        "calls": 1, "loops": 1, "steps": 1, "tokens": 1, "wall": 1,
    }  # fmt: skip


def test_a_trace_that_cannot_be_read_is_located_and_exits_1(recorded: Path) -> None:
    (recorded / "bad.jsonl").write_text(
        '{"trace": 1, "run_id": "r", "graph": "g", "events": [[0, "jump"]]}\n'
    )
    result = replay(recorded, "policies.yaml", "bad.jsonl")
    assert result.returncode == 1
    assert result.stderr == (
        "watchdog replay: bad.jsonl:1: events[0]: unknown event 'jump'; expected one of node, "
        "node_end, step, llm, usage, tool, tool_end\n"
    )
