"""``watchdog demo``, run as a user runs it: a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from watchdog._demo import SCENARIOS


def test_the_demo_cancels_every_runaway_by_its_own_policy_and_completes_the_good_agent() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "watchdog", "demo", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    events: list[dict[str, Any]] = [json.loads(line) for line in result.stdout.splitlines()]
    cancelled_by = {
        e["graph"]: e["policy"] for e in events if e["event"] == "watchdog.run_cancelled"
    }
    finished = {e["graph"]: e["outcome"] for e in events if e["event"] == "watchdog.run_finished"}
    assert cancelled_by == {s.name: s.expected_policy for s in SCENARIOS if s.expected_policy}
    assert finished["good-agent"] == "completed"
    (summary,) = (e for e in events if e["event"] == "demo_summary")
    assert all(run["as_expected"] for run in summary["runs"])
    # The story of the runs is on standard error, ending with the summary table.
    assert "every run ended as expected." in result.stderr
    assert "scenario           outcome    policy" in result.stderr
