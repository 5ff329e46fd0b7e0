"""Replay on a simulated clock, with traces made directly: timers at their deadlines, and
what a policy set that does not stop a run says of it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.graphs import policies
from watchdog import Trace, replay
from watchdog._core.replay import summarize
from watchdog._core.trace import TraceError, read_traces


def trace(*events: tuple[Any, ...], end: dict[str, Any] | None = None) -> Trace:
    return Trace(
        run_id="r",
        graph="agent",
        events=events,
        end=end or {"elapsed_s": 0, "outcome": "completed"},
    )


def test_a_time_limit_fires_at_its_deadline_between_events_with_the_step_then() -> None:
    run = trace(
        (0, "node", "agent", 1, 1, 1),
        (500_000, "node_end", 1),
        (500_000, "node", "tools", 2, 2, 1),
        (3_000_000, "node_end", 2),
        (3_000_000, "node", "agent", 3, 3, 1),
        end={"elapsed_s": 3.0, "outcome": "completed"},
    )
    text = "- {name: wall, warn_at: 0.8, wall_time: {max_seconds: 2}}"
    (verdict,) = replay(policies(text), [run])
    assert (verdict.outcome, verdict.stop, verdict.steps) == (
        "cancelled",
        ("wall", "wall_time", "max_seconds", 2),
        2,
    )
    assert [(f.policy, f.step) for f in verdict.near] == [("wall", 2)]  # at 1.6 s


def test_a_deadline_after_the_run_ended_does_not_fire() -> None:
    run = trace((0, "node", "agent", 1, 1, 1), end={"elapsed_s": 1.0, "outcome": "completed"})
    (verdict,) = replay(policies("- {name: wall, wall_time: {max_seconds: 2}}"), [run])
    assert (verdict.outcome, verdict.finding, verdict.near) == ("completed", None, ())


def test_a_recorded_cancel_that_no_policy_repeats_is_cut_short() -> None:
    run = trace(
        *((i * 1_000_000, "node", "agent", i, i, 1) for i in range(1, 7)),
        end={"elapsed_s": 6.0, "outcome": "cancelled", "policy": "steps", "step": 6},
    )
    (verdict,) = replay(policies("- {name: steps, step_count: {max_steps: 100}}"), [run])
    assert (verdict.outcome, verdict.describe()) == ("cut_short", "cut short")


def test_audit_findings_are_kept_and_the_run_goes_on() -> None:
    run = trace(*((i * 1_000_000, "node", "agent", i, i, 1) for i in range(1, 5)))
    text = "- {name: steps, mode: audit, warn_at: null, step_count: {max_steps: 2}}"
    (verdict,) = replay(policies(text), [run])
    assert (verdict.outcome, [(f.policy, f.step) for f in verdict.audit]) == (
        "completed",
        [("steps", 3)],
    )
    assert summarize([verdict]).audit_by == {"steps": 1}


def test_equal_input_numbers_are_equal_inputs_to_a_loop_limit() -> None:
    same = [(i * 1_000_000, "node", "agent", i, 7, 1) for i in range(1, 5)]
    text = "- {name: loops, loop: {max_repeats: 3}}"
    (verdict,) = replay(policies(text), [trace(*same)])
    assert verdict.stop == ("loops", "loop", "max_repeats", 4)


def test_a_limit_shared_across_pods_is_not_replayed() -> None:
    run = trace((0, "llm", "m"), (100_000, "usage", "m", 10**6, 0, None))
    text = "- {name: t, token_budget: {max_total_tokens: 1, scope: global, window: 1d}}"
    (verdict,) = replay(policies(text), [run])
    assert verdict.outcome == "completed"


NOT_JSON = (
    "t:1: not JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"
)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("[]", "t:1: expected a trace (a JSON object with \"trace\": 1)"),
        ('{"trace": 1, "run_id": "r", "graph": "g", "events": [[0, "node", "a"]]}',
         "t:1: events[0]: expected [microseconds, 'node', 4 fields], got [0, 'node', 'a']"),
        ('{"trace": 1, "run_id": "r", "graph": "g", "events": [[-1, "tool_end"]]}',
         "t:1: events[0]: expected [microseconds, 'tool_end', 0 fields], got [-1, 'tool_end']"),
        ('{"trace": 1, "run_id": "r", "graph": "g", "events": [[0, "llm", 3]]}',
         "t:1: events[0]: a 'llm' event holds 3 where it expects <class 'str'>"),
        ("{", NOT_JSON),
    ],
)  # fmt: skip
def test_a_trace_that_cannot_be_read_says_where_and_what(line: str, message: str) -> None:
    with pytest.raises(TraceError) as raised:
        read_traces(line, "t")
    assert str(raised.value) == message
