from __future__ import annotations

import itertools
import textwrap
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watchdog import Finding, load_policy_text
from watchdog._core.engine import Engine, RunMonitor
from watchdog.testing import FakeClock

Event = Callable[[RunMonitor], tuple[Finding, ...]]
_keys = itertools.count()


def engine(policies: str, clock: FakeClock, *, warn_at: str = "null") -> Engine:
    """An engine over one YAML ``policies:`` list; warnings off unless asked for."""
    text = f"version: 1\ndefaults: {{warn_at: {warn_at}}}\npolicies:\n" + textwrap.indent(
        textwrap.dedent(policies), "  "
    )
    return Engine(load_policy_text(text, "test.yaml"), clock=clock)


def run(policies: str, clock: FakeClock, *, warn_at: str = "null") -> RunMonitor:
    return engine(policies, clock, warn_at=warn_at).start_run("agent")


def verdicts(found: tuple[Finding, ...]) -> list[Finding]:
    return [f for f in found if not f.near]


# -- events that move one counter each ----------------------------------------------------


def step(monitor: RunMonitor) -> tuple[Finding, ...]:
    return monitor.step_started()


def fresh_node(monitor: RunMonitor) -> tuple[Finding, ...]:
    key = next(_keys)
    found = monitor.node_started(key, "agent", key)
    monitor.node_ended(key)
    return found


def same_node(monitor: RunMonitor) -> tuple[Finding, ...]:
    key = next(_keys)
    found = monitor.node_started(key, "agent", "same input")
    monitor.node_ended(key)
    return found


def same_tool(monitor: RunMonitor) -> tuple[Finding, ...]:
    return monitor.tool_started("search", ("q", "weather"))


def llm_call(monitor: RunMonitor) -> tuple[Finding, ...]:
    return monitor.llm_started("gpt-4o")


def tool_call(monitor: RunMonitor) -> tuple[Finding, ...]:
    return monitor.tool_started("search", next(_keys))


def usage(input_tokens: int, output_tokens: int) -> Event:
    def event(monitor: RunMonitor) -> tuple[Finding, ...]:
        return monitor.llm_ended("gpt-4o", input_tokens, output_tokens)

    return event


COUNTED = [
    pytest.param("step_count: {max_steps: 4}", step, 4, "max_steps", id="max_steps"),
    pytest.param("step_count: {max_node_runs: 4}", fresh_node, 4, "max_node_runs", id="node_runs"),
    pytest.param("loop: {max_repeats: 3}", same_node, 3, "max_repeats", id="max_repeats"),
    pytest.param(
        "loop: {max_tool_repeats: 3}", same_tool, 3, "max_tool_repeats", id="tool_repeats"
    ),
    pytest.param(
        "rate: {max_events: 5, per_seconds: 10, of: steps}", step, 5, "max_events", id="rate-steps"
    ),
    pytest.param(
        "rate: {max_events: 5, per_seconds: 10, of: node_runs}",
        fresh_node,
        5,
        "max_events",
        id="rate-nodes",
    ),
    pytest.param(
        "rate: {max_events: 5, per_seconds: 10, of: llm_calls}",
        llm_call,
        5,
        "max_events",
        id="rate-llm",
    ),
    pytest.param(
        "rate: {max_events: 5, per_seconds: 10, of: tool_calls}",
        tool_call,
        5,
        "max_events",
        id="rate-tools",
    ),
    pytest.param(
        "token_budget: {max_total_tokens: 300}", usage(60, 40), 3, "max_total_tokens", id="total"
    ),
    pytest.param(
        "token_budget: {max_input_tokens: 180}", usage(60, 40), 3, "max_input_tokens", id="input"
    ),
    pytest.param(
        "token_budget: {max_output_tokens: 120}", usage(60, 40), 3, "max_output_tokens", id="output"
    ),
    pytest.param(
        "token_budget: {max_cost_usd: 3.0, prices: {default: {input_per_mtok: 6, "
        "output_per_mtok: 15}}}",
        usage(250_000, 100_000),  # $1.50 + $1.50: one call is all $3.00 buys
        1,
        "max_cost_usd",
        id="cost",
    ),
    pytest.param(
        "rate: {max_events: 300, per_seconds: 60, of: tokens}",
        usage(60, 40),
        3,
        "max_events",
        id="rate-tokens",
    ),
]


@pytest.mark.parametrize(("kind", "event", "allowed", "key"), COUNTED)
def test_a_counted_limit_fires_on_the_first_event_past_it_and_not_before(
    clock: FakeClock, kind: str, event: Event, allowed: int, key: str
) -> None:
    monitor = run(f"- name: p\n  {kind}", clock)

    for _ in range(allowed):
        assert event(monitor) == ()
        clock.advance(0.01)
    found = verdicts(event(monitor))

    assert [(v.policy, v.key, v.mode) for v in found] == [("p", key, "enforce")]
    (verdict,) = found
    assert verdict.observed is not None
    assert verdict.limit is not None
    assert verdict.observed > verdict.limit


@pytest.mark.parametrize(
    ("kind", "start", "key"),
    [
        pytest.param(
            "wall_time: {max_seconds: 10}", lambda m: None, "max_seconds", id="max_seconds"
        ),
        pytest.param(
            "wall_time: {idle_seconds: 10}", lambda m: m.tool_ended(), "idle_seconds", id="idle"
        ),
        pytest.param(
            "wall_time: {node_seconds: 10}",
            lambda m: m.node_started("k", "tools", 1),
            "node_seconds",
            id="node_seconds",
        ),
    ],
)
def test_a_time_limit_fires_at_its_deadline_and_not_before(
    clock: FakeClock, kind: str, start: Callable[[RunMonitor], object], key: str
) -> None:
    monitor = run(f"- name: p\n  {kind}", clock)
    clock.advance(3)
    start(monitor)
    deadline = clock.now + 10 if key != "max_seconds" else clock.now + 7

    assert monitor.next_deadline() == deadline
    clock.now = deadline - 0.001
    assert monitor.check_timers() == ()
    clock.now = deadline
    (found,) = monitor.check_timers()

    assert found == Finding(
        policy="p",
        kind="wall_time",
        key=key,
        mode="enforce",
        reason=found.reason,
        observed=pytest.approx(10),  # type: ignore[arg-type]
        limit=10,
        step=0,
        node=found.node,
    )
    assert monitor.next_deadline() is None, "a fired limit is not scheduled again"


def test_reasons_are_one_readable_sentence(clock: FakeClock) -> None:
    monitor = run("- name: steps\n  step_count: {max_steps: 2}", clock)
    step(monitor)
    step(monitor)
    (found,) = step(monitor)
    assert not found.near
    assert found.reason == "The run began step 3, but policy 'steps' allows at most 2 steps."


def test_node_seconds_names_the_hung_node(clock: FakeClock) -> None:
    monitor = run("- name: slow\n  wall_time: {node_seconds: 2}", clock)
    monitor.node_started("a", "agent", 1)
    monitor.node_ended("a")
    monitor.node_started("b", "tools", 2)
    clock.advance(2)
    (found,) = monitor.check_timers()
    assert found.reason == (
        "Node 'tools' has been running for 2.000 s, "
        "but policy 'slow' allows at most 2 s for one node."
    )


def test_idle_is_reset_by_any_progress(clock: FakeClock) -> None:
    monitor = run("- name: idle\n  wall_time: {idle_seconds: 5}", clock)
    for progress in (
        monitor.step_started,
        lambda: monitor.node_started("n", "agent", 1),
        lambda: monitor.node_ended("n"),
        lambda: monitor.llm_started("m"),
        lambda: monitor.llm_ended("m"),
        lambda: monitor.tool_started("t", 1),
        monitor.tool_ended,
    ):
        clock.advance(4)
        progress()
        assert monitor.check_timers() == ()
    clock.advance(5)
    assert [v.key for v in verdicts(monitor.check_timers())] == ["idle_seconds"]


def test_an_idle_stretch_is_caught_at_the_next_event_when_the_timer_was_late(
    clock: FakeClock,
) -> None:
    monitor = run("- name: walls\n  wall_time: {max_seconds: 10}", clock)
    clock.advance(11)
    assert [v.key for v in verdicts(monitor.step_started())] == ["max_seconds"]


def test_the_earliest_of_several_deadlines_is_next(clock: FakeClock) -> None:
    monitor = run(
        "- name: w\n  wall_time: {max_seconds: 100, idle_seconds: 30, node_seconds: 10}", clock
    )
    start = clock.now
    assert monitor.next_deadline() == start + 30
    clock.advance(5)
    monitor.node_started("n", "tools", 1)
    assert monitor.next_deadline() == start + 15
    monitor.node_ended("n")
    assert monitor.next_deadline() == start + 35


# -- loops --------------------------------------------------------------------------------


def test_a_react_loop_whose_states_differ_is_not_a_loop(clock: FakeClock) -> None:
    monitor = run("- name: loops\n  loop: {window: 20, max_repeats: 2, max_tool_repeats: 2}", clock)
    found: list[Finding] = []
    for turn in range(40):
        found += monitor.node_started(("agent", turn), "agent", ("messages", 2 * turn))
        monitor.node_ended(("agent", turn))
        found += monitor.node_started(("tools", turn), "tools", ("messages", 2 * turn + 1))
        found += monitor.tool_started("search", ("query", f"page {turn}"))
        monitor.node_ended(("tools", turn))
    assert found == []


def test_repeats_are_counted_within_the_window_only(clock: FakeClock) -> None:
    monitor = run("- name: loops\n  loop: {window: 4, max_repeats: 2}", clock)
    pattern = ["same", "a", "b", "same", "c", "d", "same", "same"]  # never 3 in 4 runs
    found = [f for i, fp in enumerate(pattern) for f in monitor.node_started(i, "agent", fp)]
    assert found == []
    (verdict,) = monitor.node_started("last", "agent", "same")  # 3 within the last 4
    assert verdict.reason == (
        "Node 'agent' ran 3 times with the same input within the last 4 node runs, "
        "but policy 'loops' allows at most 2."
    )


def test_the_same_tool_with_other_arguments_is_not_a_repeat(clock: FakeClock) -> None:
    monitor = run("- name: loops\n  loop: {max_tool_repeats: 2}", clock)
    calls = [("search", "a"), ("search", "b"), ("fetch", "a"), ("search", "a"), ("fetch", "a")]
    assert [f for name, args in calls for f in monitor.tool_started(name, args)] == []
    (verdict,) = monitor.tool_started("search", "a")
    assert verdict.key == "max_tool_repeats"
    assert verdict.observed == 3


@pytest.mark.parametrize(
    ("names", "cycle"),
    [
        pytest.param(["a"] * 4, "a", id="period-1"),
        pytest.param(["a", "b"] * 4, "a -> b", id="period-2"),
        pytest.param(["x", "a", "b", "c"] * 4, "x -> a -> b -> c", id="period-4"),
    ],
)
def test_a_node_cycle_fires_as_it_completes_one_repeat_too_many(
    clock: FakeClock, names: list[str], cycle: str
) -> None:
    monitor = run("- name: cycles\n  loop: {max_cycle_repeats: 3}", clock)
    *allowed, last = names
    assert [f for i, name in enumerate(allowed) for f in monitor.node_started(i, name, i)] == []
    (verdict,) = monitor.node_started("last", last, "new state")
    assert verdict.reason == (
        f"The node cycle {cycle} repeated 4 times in a row, but policy 'cycles' allows at most 3."
    )


def test_a_broken_cycle_starts_counting_again(clock: FakeClock) -> None:
    monitor = run("- name: cycles\n  loop: {max_cycle_repeats: 2}", clock)
    names = ["a", "b", "a", "b", "c", "a", "b", "a", "b"]
    assert [f for i, name in enumerate(names) for f in monitor.node_started(i, name, i)] == []


# -- tokens and cost ----------------------------------------------------------------------


PRICES = """
prices:
  gpt-4o: {input_per_mtok: 2.5, output_per_mtok: 10}
  "claude-*": {input_per_mtok: 3, output_per_mtok: 15}
  default: {input_per_mtok: 1, output_per_mtok: 1}
"""


@pytest.mark.parametrize(
    ("model", "cost_of_a_call"),
    [
        ("gpt-4o", 1e6 * 2.5 / 1e6 + 1e6 * 10 / 1e6),
        ("claude-sonnet-4", 3 + 15),
        ("local-llama", 1 + 1),
    ],
)
def test_cost_uses_the_price_of_the_model(
    clock: FakeClock, model: str, cost_of_a_call: float
) -> None:
    monitor = run(
        "- name: money\n  token_budget:\n    max_cost_usd: 100" + textwrap.indent(PRICES, "    "),
        clock,
    )
    calls = 0
    while not (found := monitor.llm_ended(model, 1_000_000, 1_000_000)):
        calls += 1
    (verdict,) = found
    assert calls == int(100 // cost_of_a_call)
    assert verdict.observed == pytest.approx((calls + 1) * cost_of_a_call)
    assert verdict.reason.startswith(f"The run cost ${verdict.observed:.4f}, but policy 'money'")


def test_a_run_over_budget_never_starts_another_paid_call(clock: FakeClock) -> None:
    tokens = engine("- name: tokens\n  token_budget: {max_total_tokens: 1000}", clock)
    monitor = tokens.start_run("agent")
    assert monitor.llm_ended("gpt-4o", 500, 300) == ()
    # The limit tightens while the run is live: the next call is stopped before it is paid.
    tokens.reload(
        load_policy_text(
            "version: 1\npolicies:\n"
            "- {name: tokens, warn_at: null, token_budget: {max_total_tokens: 700}}"
        )
    )
    (verdict,) = monitor.llm_started("gpt-4o")
    assert (verdict.key, verdict.observed, verdict.limit) == ("max_total_tokens", 800, 700)


def test_total_tokens_reported_by_the_model_are_used_when_given(clock: FakeClock) -> None:
    monitor = run("- name: t\n  token_budget: {max_total_tokens: 100}", clock)
    (verdict,) = monitor.llm_ended("m", input_tokens=40, output_tokens=40, total_tokens=101)
    assert verdict.observed == 101


# -- rate windows ---------------------------------------------------------------------------


def test_events_leaving_the_window_free_capacity_again(clock: FakeClock) -> None:
    monitor = run("- name: burst\n  rate: {max_events: 3, per_seconds: 10, of: llm_calls}", clock)
    start = clock.now
    for offset in (0, 1, 2):
        clock.now = start + offset
        assert llm_call(monitor) == ()
    clock.now = start + 10  # the call at +0 has left the window (now - 10, now]
    assert llm_call(monitor) == ()
    clock.now = start + 10.5
    (verdict,) = llm_call(monitor)  # +1, +2, +10, +10.5
    assert (verdict.observed, verdict.reason) == (
        4,
        "The run had 4 LLM calls within 10 s, but policy 'burst' allows at most 3 per 10 s.",
    )


def test_a_token_rate_window_slides_too(clock: FakeClock) -> None:
    monitor = run("- name: tps\n  rate: {max_events: 1000, per_seconds: 60, of: tokens}", clock)
    assert usage(400, 200)(monitor) == ()
    clock.advance(30)
    assert usage(200, 200)(monitor) == ()  # 1000 in the window: allowed
    clock.advance(30)
    assert usage(300, 200)(monitor) == ()  # the first 600 left: 900
    (verdict,) = usage(100, 1)(monitor)
    assert verdict.observed == 1001


# -- modes, warnings, matching, reload -------------------------------------------------------


def test_audit_verdicts_are_marked_and_reported_once(clock: FakeClock) -> None:
    monitor = run("- name: steps\n  mode: audit\n  step_count: {max_steps: 1}", clock)
    step(monitor)
    found = [f for _ in range(5) for f in step(monitor)]
    assert [(v.mode, v.observed, v.enforced) for v in verdicts(tuple(found))] == [
        ("audit", 2, False)
    ]


def test_near_limit_is_reported_once_at_warn_at(clock: FakeClock) -> None:
    monitor = run("- name: steps\n  step_count: {max_steps: 10}", clock, warn_at="0.8")
    found = [(i + 1, f) for i in range(10) for f in step(monitor)]
    assert found == [
        (
            8,
            Finding(
                policy="steps",
                kind="step_count",
                key="max_steps",
                mode="enforce",
                reason="max_steps is at 80% of its limit: 8 of 10 (policy 'steps').",
                observed=8,
                limit=10,
                step=8,
                node=None,
                near=True,
            ),
        )
    ]


def test_the_timer_wakes_for_a_warning_before_the_limit(clock: FakeClock) -> None:
    monitor = run("- name: w\n  wall_time: {max_seconds: 100}", clock, warn_at="0.5")
    start = clock.now
    assert monitor.next_deadline() == start + 50
    clock.now = start + 50
    (warning,) = monitor.check_timers()
    assert warning.near
    assert monitor.next_deadline() == start + 100


def test_every_matching_policy_applies_and_the_first_violation_comes_first(
    clock: FakeClock,
) -> None:
    monitor = run(
        """\
        - name: first
          step_count: {max_steps: 2}
        - name: other-graph
          match: {graph: "billing-*"}
          step_count: {max_steps: 1}
        - name: second
          rate: {max_events: 2, per_seconds: 60, of: steps}
        """,
        clock,
    )
    assert [p.name for p in monitor.policies] == ["first", "second"]
    step(monitor)
    step(monitor)
    assert [v.policy for v in verdicts(step(monitor))] == ["first", "second"]


def test_each_run_gets_the_policies_its_graph_tags_and_metadata_match(clock: FakeClock) -> None:
    policies = """\
        - name: all
          step_count: {max_steps: 9}
        - name: billing
          match: {graph: "billing-*"}
          step_count: {max_steps: 9}
        """
    by_name = engine(policies, clock)
    names = [
        [p.name for p in by_name.start_run(graph).policies]
        for graph in ("agent", "billing-eu", "agent", "billing-us")
    ]
    assert names == [["all"], ["all", "billing"], ["all"], ["all", "billing"]]

    vip = "- {name: vip, match: {tags: [vip]}, rate: {max_events: 9, per_seconds: 1, of: steps}}\n"
    tagged = engine(textwrap.dedent(policies) + vip, clock)
    names = [
        [p.name for p in tagged.start_run("agent", tags).policies] for tags in ((), ["vip"], ())
    ]
    assert names == [["all"], ["all", "vip"], ["all"]]

    by_name.reload(
        load_policy_text("version: 1\npolicies:\n- {name: new, loop: {max_repeats: 3}}\n")
    )
    assert [p.name for p in by_name.start_run("agent").policies] == ["new"]


def test_a_node_that_begins_a_step_counts_both_and_a_step_that_stops_leaves_it_uncounted(
    clock: FakeClock,
) -> None:
    monitor = run(
        "- name: steps\n  step_count: {max_steps: 2}\n"
        "- name: audit\n  mode: audit\n  step_count: {max_node_runs: 1}",
        clock,
    )
    assert monitor.node_started("a", "agent", 1, new_step=True) == ()
    (audit,) = monitor.node_started("b", "tools", 2)  # the same step: an audit finding only
    assert (audit.policy, audit.enforced) == ("audit", False)
    assert monitor.node_started("c", "agent", 3, new_step=True) == ()
    (stop,) = monitor.node_started("d", "tools", 4, new_step=True)
    assert (stop.policy, stop.key, stop.node) == ("steps", "max_steps", "tools")
    state = monitor.state
    assert (state.steps, state.node_runs, list(state.open_nodes)) == (3, 3, ["a", "b", "c"])


def test_a_reload_applies_new_limits_at_the_next_check_and_keeps_counters(clock: FakeClock) -> None:
    steps = engine(
        "- name: steps\n  step_count: {max_steps: 10}\n- name: loops\n  loop: {max_repeats: 5}",
        clock,
    )
    monitor = steps.start_run("agent")
    for _ in range(4):
        step(monitor)
        same_node(monitor)
    steps.reload(
        load_policy_text(
            "version: 1\ndefaults: {warn_at: null}\npolicies:\n"
            "- {name: steps, step_count: {max_steps: 4}}\n- {name: loops, loop: {max_repeats: 4}}"
        )
    )
    assert [v.key for v in verdicts(step(monitor))] == ["max_steps"]
    # The loop window survived the reload: this is the fifth identical run, one over 4.
    assert [v.key for v in verdicts(same_node(monitor))] == ["max_repeats"]


def test_memory_does_not_grow_with_the_length_of_a_run(clock: FakeClock) -> None:
    monitor = run(
        """\
        - name: all
          loop: {window: 50, max_repeats: 40, max_tool_repeats: 40, max_cycle_repeats: 1000000}
        - name: rate
          rate: {max_events: 1000000, per_seconds: 1, of: node_runs}
        - name: tokens
          rate: {max_events: 1000000000, per_seconds: 1, of: tokens}
        - name: money
          token_budget:
            max_cost_usd: 1000000
            prices: {default: {input_per_mtok: 1, output_per_mtok: 1}}
        """,
        clock,
    )

    def work(turns: int) -> None:
        for turn in range(turns):
            clock.advance(0.01)
            monitor.step_started()
            monitor.node_started(turn, "agent", turn)
            monitor.tool_started("search", turn)
            monitor.llm_started("m")
            monitor.llm_ended("m", 10, 10)
            monitor.node_ended(turn)

    tracemalloc.start()
    try:
        work(2_000)  # fill the windows
        before = tracemalloc.get_traced_memory()[0]
        work(20_000)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 4096, f"grew {grown} bytes over 20,000 turns"


# -- the hot path's shortcuts change no finding ---------------------------------------------

CHECKED_POLICIES = """\
- name: steps
  step_count: {max_steps: 9, max_node_runs: 12}
- name: loops
  loop: {window: 6, max_repeats: 2, max_tool_repeats: 2, max_cycle_repeats: 3}
- name: rate
  rate: {max_events: 3, per_seconds: 1, of: node_runs}
- name: wall
  wall_time: {max_seconds: 2}
- name: tokens
  token_budget: {max_total_tokens: 400}
"""

monitor_events = st.lists(
    st.one_of(
        st.tuples(st.just("step")),
        st.tuples(st.just("node"), st.sampled_from("abc"), st.integers(0, 2), st.booleans()),
        st.tuples(st.just("tool"), st.integers(0, 2)),
        st.tuples(st.just("llm"), st.integers(0, 150)),
        st.tuples(st.just("wait"), st.sampled_from([0.05, 0.5, 1.0])),
    ),
    max_size=60,
)


def _check_everything(monitor: RunMonitor) -> RunMonitor:
    """A monitor that checks every limit at every event, as if nothing could wait."""
    for checks in (
        monitor._on_step,
        monitor._on_node,
        monitor._on_llm,
        monitor._on_usage,
        monitor._on_tool,
    ):
        checks.every += checks.counted + checks.timed
        checks.counted = checks.timed = ()
    return monitor


@settings(max_examples=300, deadline=None)
@given(events=monitor_events, warn_at=st.sampled_from(["null", "0.5"]))
def test_limits_that_wait_their_turn_find_what_checking_every_event_finds(
    events: list[tuple[Any, ...]], warn_at: str
) -> None:
    clock = FakeClock()
    gated = run(CHECKED_POLICIES, clock, warn_at=warn_at)
    reference = _check_everything(run(CHECKED_POLICIES, clock, warn_at=warn_at))
    for event in events:
        found = []
        for monitor in (gated, reference):
            match event:
                case ("step",):
                    found.append(monitor.step_started())
                case ("node", name, data, new_step):  # the first of a step, or not
                    key = next(_keys)
                    found.append(monitor.node_started(key, name, data, new_step=new_step))
                    monitor.node_ended(key)
                case ("tool", data):
                    found.append(monitor.tool_started("search", data))
                case ("llm", tokens):
                    found.append(monitor.llm_started("m") + monitor.llm_ended("m", tokens, 0))
                case ("wait", _):
                    found.append(())
        assert found[0] == found[1], event
        if event[0] == "wait":
            clock.advance(event[1])
