"""Each policy kind is a pure function of one run state."""

from __future__ import annotations

import pytest

from watchdog import (
    Match,
    PolicyError,
    Rate,
    StepCount,
    TokenBudget,
    WallTime,
    load_policy_text,
)
from watchdog._core.policies import Kind
from watchdog._core.state import RunState
from watchdog.testing import make_run_state


@pytest.mark.parametrize(
    ("kind", "within", "over", "key"),
    [
        (StepCount(max_steps=10), make_run_state(steps=10), make_run_state(steps=11), "max_steps"),
        (
            StepCount(max_node_runs=40),
            make_run_state(node_runs=40),
            make_run_state(node_runs=41),
            "max_node_runs",
        ),
        (
            WallTime(max_seconds=300),
            make_run_state(elapsed=299.999),
            make_run_state(elapsed=300),
            "max_seconds",
        ),
        (
            WallTime(idle_seconds=60),
            make_run_state(elapsed=500, idle=59.999),
            make_run_state(elapsed=500, idle=60),
            "idle_seconds",
        ),
        (
            WallTime(node_seconds=120),
            make_run_state(elapsed=500, open_nodes={1: ("tools", 119.999)}),
            make_run_state(elapsed=500, open_nodes={1: ("tools", 120), 2: ("agent", 1)}),
            "node_seconds",
        ),
        (
            TokenBudget(max_total_tokens=1000),
            make_run_state(input_tokens=600, output_tokens=400),
            make_run_state(input_tokens=600, output_tokens=401),
            "max_total_tokens",
        ),
        (
            TokenBudget(max_input_tokens=600),
            make_run_state(input_tokens=600, output_tokens=10_000),
            make_run_state(input_tokens=601),
            "max_input_tokens",
        ),
        (
            TokenBudget(max_output_tokens=400),
            make_run_state(output_tokens=400),
            make_run_state(output_tokens=401),
            "max_output_tokens",
        ),
    ],
)
def test_a_kind_allows_its_limit_and_stops_past_it(
    kind: Kind, within: RunState, over: RunState, key: str
) -> None:
    assert kind.check(within) is None
    breach = kind.check(over)
    assert breach is not None
    assert breach.key == key


def test_windowed_kinds_read_their_window_from_the_state() -> None:
    kind = Rate(max_events=2, per_seconds=10, of="steps")
    (limit,) = kind.limits
    state = make_run_state(elapsed=20)
    assert limit.tracker is not None
    window = state.trackers[limit.tracker] = limit.tracker.create()
    for at in (5, 15, 19):
        window.push(at)  # type: ignore[attr-defined]
    assert kind.check(state) is None  # the step at 5 left the window (10, 20]
    window.push(20)  # type: ignore[attr-defined]
    assert kind.check(state) == limit


def test_equal_kinds_are_equal_and_hashable() -> None:
    assert StepCount(max_steps=3) == StepCount(max_steps=3)
    assert hash(WallTime(max_seconds=1)) == hash(WallTime(max_seconds=1))
    assert StepCount(max_steps=3) != StepCount(max_steps=4)


@pytest.mark.parametrize(
    ("match", "graph", "tags", "metadata", "expected"),
    [
        (Match(), "anything", (), {}, True),
        (Match(graphs=("support-*",)), "support-bot", (), {}, True),
        (Match(graphs=("support-*",)), "billing-bot", (), {}, False),
        (Match(graphs=("a", "b*")), "bot", (), {}, True),
        (Match(tags=frozenset({"prod", "eu"})), "g", ("prod", "eu", "x"), {}, True),
        (Match(tags=frozenset({"prod", "eu"})), "g", ("prod",), {}, False),
        (Match(metadata={"tenant": "acme"}), "g", (), {"tenant": "acme", "x": 1}, True),
        (Match(metadata={"tenant": "acme"}), "g", (), {"tenant": "other"}, False),
        (Match(metadata={"tenant": None}), "g", (), {}, False),
    ],
)
def test_match(
    match: Match,
    graph: str,
    tags: tuple[str, ...],
    metadata: dict[str, object],
    expected: bool,
) -> None:
    assert match.matches(graph, tags, metadata) is expected


def test_scope_thread_loads_on_step_count_and_token_budget_only() -> None:
    policies = load_policy_text(
        "version: 1\npolicies:\n"
        "- {name: a, step_count: {max_steps: 9, scope: thread}}\n"
        "- {name: b, token_budget: {max_total_tokens: 9, scope: run}}\n"
    )
    assert [p.kind.per_thread for p in policies.policies] == [True, False]
    with pytest.raises(PolicyError) as misspelt:
        load_policy_text("version: 1\npolicies:\n- {name: a, step_count: {scope: thred}}\n")
    assert "got the string 'thred' (did you mean thread?)" in str(misspelt.value)
    with pytest.raises(PolicyError, match="unknown key 'scope'"):
        load_policy_text(
            "version: 1\npolicies:\n- {name: a, loop: {max_repeats: 2, scope: thread}}\n"
        )
    with pytest.raises(PolicyError, match="step_count sets no limit"):
        load_policy_text("version: 1\npolicies:\n- {name: a, step_count: {scope: thread}}\n")
