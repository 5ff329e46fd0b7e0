"""Supervising real compiled LangGraph graphs: every kind cancels, sync and async."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage
from langgraph.errors import GraphDrained
from langgraph.func import entrypoint, task
from langgraph.runtime import RunControl
from prometheus_client import CollectorRegistry

from tests.graphs import (
    Bodies,
    Counter,
    endless,
    fan_out,
    hanging,
    one_node,
    policies,
    react_agent,
    scripted,
    search,
    tool_call,
    with_subgraph,
)
from watchdog import Finding, RunCancelled, Supervisor
from watchdog._adapter.supervisor import new_run_id
from watchdog.testing import FakeClock, capture_events

MODES = ["invoke", "stream", "ainvoke", "astream"]


def call(app: Any, mode: str, graph_input: Any, config: dict[str, Any] | None = None) -> Any:
    """Run ``app`` through one of its entry points, to the end."""
    if mode == "invoke":
        return app.invoke(graph_input, config)
    if mode == "stream":
        return list(app.stream(graph_input, config))
    if mode == "ainvoke":
        return asyncio.run(app.ainvoke(graph_input, config))

    async def consume() -> list[Any]:
        return [chunk async for chunk in app.astream(graph_input, config)]

    return asyncio.run(consume())


def thread(name: str = "t") -> dict[str, Any]:
    return {"configurable": {"thread_id": name}}


KINDS = {
    "step_count": ("- {name: steps, step_count: {max_steps: 5}}", "max_steps", 5),
    "loop": ("- {name: loops, loop: {max_repeats: 3}}", "max_repeats", 3),
    "rate": (
        "- {name: burst, rate: {max_events: 4, per_seconds: 60, of: node_runs}}",
        "max_events",
        4,
    ),
    "wall_time": ("- {name: wall, wall_time: {max_seconds: 3.5}}", "max_seconds", 4),
    "token_budget": ("- {name: tokens, token_budget: {max_total_tokens: 500}}", "x", 5),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_cancels_a_real_graph(
    kind: str, mode: str, clock: FakeClock, registry: CollectorRegistry
) -> None:
    policy, _, bodies_allowed = KINDS[kind]
    supervisor = Supervisor(policies(policy), registry=registry, clock=clock)
    bodies = Bodies()
    graph = endless(
        bodies,
        is_async=mode.startswith("a"),
        progress=kind != "loop",  # the loop: same input every time, no progress
        clock=clock if kind == "wall_time" else None,
        model=scripted(AIMessage("thinking...")) if kind == "token_budget" else None,
    )
    app = supervisor.attach(graph, name="endless")

    with pytest.raises(RunCancelled) as raised:
        call(app, mode, {"count": 0}, thread())

    # Not one node body ran past the limit: 120 tokens a call, so the fifth call (600) is
    # the one over 500, and it is stopped as its usage arrives.
    assert bodies.ran == bodies_allowed
    assert (raised.value.kind, raised.value.graph, raised.value.phase) == (
        kind,
        "endless",
        "drained",
    )
    assert supervisor.runs() == []


def test_the_last_completed_step_stays_checkpointed(clock: FakeClock) -> None:
    supervisor = Supervisor(policies("- {name: steps, step_count: {max_steps: 3}}"), clock=clock)
    bodies = Bodies()
    app = supervisor.attach(endless(bodies, is_async=False), name="endless")
    with pytest.raises(RunCancelled):
        app.invoke({"count": 0}, thread("kept"))
    # get_state passes through to the compiled graph.
    assert app.get_state(thread("kept")).values == {"count": 3}


def test_run_cancelled_carries_what_happened(clock: FakeClock) -> None:
    supervisor = Supervisor(policies("- {name: steps, step_count: {max_steps: 2}}"), clock=clock)
    app = supervisor.attach(endless(Bodies(), is_async=False), name="endless")
    run_id = uuid.uuid4()
    with pytest.raises(RunCancelled) as raised:
        app.invoke({"count": 0}, {**thread("t-7"), "run_id": run_id})
    reason = "The run began step 3, but policy 'steps' allows at most 2 steps."
    assert vars(raised.value) == {
        "finding": Finding(
            policy="steps",
            kind="step_count",
            key="max_steps",
            mode="enforce",
            reason=reason,
            observed=3,
            limit=2,
            step=3,
            node="work",
        ),
        "run_id": str(run_id),
        "thread_id": "t-7",
        "graph": "endless",
        "policy": "steps",
        "kind": "step_count",
        "reason": "The run began step 3, but policy 'steps' allows at most 2 steps.",
        "observed": 3,
        "limit": 2,
        "step": 3,
        "phase": "drained",
    }


# -- agents ---------------------------------------------------------------------------------


def test_a_react_agent_is_stopped_by_its_token_budget_before_the_next_paid_call() -> None:
    model = scripted(*(tool_call(f"page {i}", f"c{i}") for i in range(100)))
    supervisor = Supervisor(policies("- {name: tokens, token_budget: {max_total_tokens: 1000}}"))
    app = supervisor.attach(react_agent(model), name="agent")
    with capture_events() as events, pytest.raises(RunCancelled) as raised:
        app.invoke({"messages": [("user", "research everything")]})
    assert raised.value.kind == "token_budget"
    llm_calls = model.i  # 120 tokens a call: the 9th call (1080) crosses 1000
    assert llm_calls == 9
    (cancelled,) = (e for e in events if e["event"] == "watchdog.run_cancelled")
    assert cancelled["tokens"] == 9 * 120


def test_langchains_create_agent_is_stopped_before_the_call_that_breaks_its_budget() -> None:
    model = scripted(*(tool_call(f"page {i}", f"c{i}") for i in range(100)))
    agent = create_agent(model, [search])
    supervisor = Supervisor(policies("- {name: tokens, token_budget: {max_total_tokens: 600}}"))
    app = supervisor.attach(agent, name="create-agent")
    with pytest.raises(RunCancelled) as raised:
        asyncio.run(app.ainvoke({"messages": [("user", "research everything")]}))
    assert (raised.value.kind, raised.value.observed) == ("token_budget", 720)
    assert model.i == 6  # the sixth call's usage crossed 600; no seventh call was made


def test_a_react_agent_calling_the_same_tool_forever_is_stopped_by_loop() -> None:
    model = scripted(tool_call("the same question"))
    supervisor = Supervisor(policies("- {name: loops, loop: {max_tool_repeats: 3}}"))
    app = supervisor.attach(react_agent(model), name="agent")
    with pytest.raises(RunCancelled) as raised:
        asyncio.run(app.ainvoke({"messages": [("user", "hi")]}))
    assert (raised.value.kind, raised.value.policy) == ("loop", "loops")
    assert raised.value.observed == 4


def test_a_legitimate_agent_completes_under_the_default_policies() -> None:
    model = scripted(
        tool_call("weather in Paris", "c1"),
        tool_call("weather in Rome", "c2"),
        tool_call("flights Paris Rome", "c3"),
        AIMessage("Take the 9:40 flight; bring an umbrella."),
    )
    supervisor = Supervisor.from_path("policies/default.yaml", registry=CollectorRegistry())
    app = supervisor.attach(react_agent(model), name="agent")
    result = app.invoke({"messages": [("user", "plan my trip")]})
    assert result["messages"][-1].content == "Take the 9:40 flight; bring an umbrella."


# -- timers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", ["max_seconds", "idle_seconds", "node_seconds"])
def test_a_node_awaiting_forever_is_cancelled_by_a_timer(limit: str) -> None:
    # A deadline well past the run's start-up, so the node is hung by then on a loaded machine.
    supervisor = Supervisor(policies(f"- {{name: wall, wall_time: {{{limit}: 0.15}}}}"))
    app = supervisor.attach(hanging(), name="hung")

    async def measure() -> tuple[RunCancelled, float]:
        started = time.monotonic()
        try:
            await app.ainvoke({"count": 0})
        except RunCancelled as cancelled:
            return cancelled, time.monotonic() - started
        raise AssertionError

    try:
        cancelled, took = asyncio.run(measure())
    finally:
        supervisor.close()
    print(f"{limit}: cancelled {1000 * (took - 0.15):.2f} ms past the deadline")
    assert (cancelled.kind, cancelled.phase) == ("wall_time", "hard")
    assert 0.15 <= took < 1.0


def test_an_outer_cancel_of_the_caller_is_not_swallowed() -> None:
    supervisor = Supervisor(policies("- {name: wall, wall_time: {max_seconds: 60}}"))
    app = supervisor.attach(hanging(), name="hung")

    async def cancel_the_caller() -> None:
        task = asyncio.create_task(app.ainvoke({"count": 0}))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(cancel_the_caller())
    finally:
        supervisor.close()


# -- counting -------------------------------------------------------------------------------


@pytest.mark.parametrize("called", [False, True], ids=["subgraph node", "called subgraph"])
def test_a_loop_inside_a_subgraph_counts_its_steps(called: bool) -> None:
    bodies = Bodies()
    supervisor = Supervisor(policies("- {name: steps, step_count: {max_steps: 6}}"))
    app = supervisor.attach(with_subgraph(bodies, inner_steps=100, called=called), name="nested")
    # A subgraph node is probed with the rest; one called from a function is out of a
    # probe's reach, so that graph's node events come from chain callbacks.
    assert app._watchdog.probed is not called
    with pytest.raises(RunCancelled) as raised:
        app.invoke({"count": 0})
    # Root steps: before, sub; inside sub: inner, inner, inner, inner -> the 7th step is
    # the fifth inner run, stopped before its body.
    assert bodies.ran == 4
    assert raised.value.step == 7


def test_a_functional_api_graph_is_supervised_through_chain_callbacks() -> None:
    @task
    def work(n: int) -> int:
        for _ in range(500):  # a second in all: hung well past the deadline
            time.sleep(0.002)
        return n + 1

    @entrypoint()
    def count(n: int) -> int:
        while True:
            n = work(n).result()

    supervisor = Supervisor(
        policies(
            "- {name: wall, wall_time: {max_seconds: 0.05}, grace_seconds: 0}",
        )
    )
    app = supervisor.attach(count, name="functional")
    assert not app._watchdog.probed
    try:
        with pytest.raises(RunCancelled) as raised:
            app.invoke(0)
    finally:
        supervisor.close()
    assert (raised.value.kind, raised.value.phase) == ("wall_time", "hard")


def test_a_send_fan_out_is_one_step_of_many_node_runs() -> None:
    supervisor = Supervisor(
        policies(
            """\
            - {name: steps, step_count: {max_steps: 3}}
            - {name: runs, step_count: {max_node_runs: 12}}
            """
        )
    )
    app = supervisor.attach(fan_out(10), name="fan")
    with capture_events() as events:
        assert sorted(app.invoke({"items": []})["items"]) == list(range(10))
    (finished,) = (e for e in events if e["event"] == "watchdog.run_finished")
    assert finished["steps"] == 3  # plan, the ten works, done

    tight = Supervisor(policies("- {name: runs, step_count: {max_node_runs: 8}}"))
    with pytest.raises(RunCancelled) as raised:
        tight.attach(fan_out(10), name="fan").invoke({"items": []})
    assert raised.value.observed == 9


# -- many runs at once ------------------------------------------------------------------------


def test_two_hundred_concurrent_runs_each_get_their_own_verdict(
    registry: CollectorRegistry,
) -> None:
    supervisor = Supervisor(
        policies(
            """\
            - {name: short, match: {tags: [short]}, step_count: {max_steps: 3}}
            - {name: long, match: {tags: [long]}, step_count: {max_steps: 7}}
            - {name: stuck, match: {tags: [stuck]}, loop: {max_repeats: 2}}
            """
        ),
        registry=registry,
    )
    plans = [("short", 3, True), ("long", 7, True), ("stuck", 2, False), ("free", 12, True)]

    async def one(index: int) -> tuple[str, int, str]:
        tag, _, progress = plans[index % 4]
        bodies = Bodies()
        graph = endless(bodies, is_async=True, progress=progress, checkpointer=False)
        if tag == "free":
            graph = graph.with_config(recursion_limit=12)  # ends by LangGraph's own limit
        app = supervisor.attach(graph, name=tag)
        try:
            await app.ainvoke({"count": 0}, {"tags": [tag]})
        except RunCancelled as cancelled:
            return tag, bodies.ran, cancelled.policy or ""
        except Exception as error:
            return tag, bodies.ran, type(error).__name__
        return tag, bodies.ran, "completed"

    async def everyone() -> list[tuple[str, int, str]]:
        return await asyncio.gather(*(one(i) for i in range(200)))

    results = asyncio.run(everyone())
    expected = {
        "short": (3, "short"),
        "long": (7, "long"),
        "stuck": (2, "stuck"),
        "free": (12, "GraphRecursionError"),
    }
    assert {(tag, ran, outcome) for tag, ran, outcome in results} == {
        (tag, *expected[tag]) for tag in expected
    }
    for tag in ("short", "long", "stuck"):
        assert (
            registry.get_sample_value(
                "watchdog_runs_finished_total", {"graph": tag, "outcome": "cancelled"}
            )
            == 50
        )
    assert (
        registry.get_sample_value(
            "watchdog_runs_finished_total", {"graph": "free", "outcome": "failed"}
        )
        == 50
    )


# -- audit mode, callers' callbacks and controls, internal errors --------------------------


def test_audit_mode_reports_and_never_cancels(registry: CollectorRegistry) -> None:
    supervisor = Supervisor(
        policies("- {name: steps, mode: audit, step_count: {max_steps: 2}}"), registry=registry
    )
    bodies = Bodies()
    graph = endless(bodies, is_async=False, checkpointer=False).with_config(recursion_limit=6)
    app = supervisor.attach(graph, name="audited")
    with capture_events() as events, pytest.raises(Exception, match="Recursion limit"):
        app.invoke({"count": 0})
    assert bodies.ran == 6
    assert [e["event"] for e in events if e["event"] != "watchdog.run_started"] == [
        "watchdog.violation",
        "watchdog.run_finished",
    ]
    assert (
        registry.get_sample_value(
            "watchdog_violations_total",
            {"graph": "audited", "policy": "steps", "kind": "step_count", "mode": "audit"},
        )
        == 1
    )


def test_the_callers_callbacks_and_run_control_still_work() -> None:
    seen: list[str] = []

    class Spy(BaseCallbackHandler):
        def on_chain_start(self, serialized: Any, inputs: Any, **kwargs: Any) -> None:
            seen.append(kwargs.get("name") or "?")

    control = RunControl()
    bodies = Bodies()

    def drain_after_two(state: Counter) -> dict[str, int]:
        bodies.ran += 1
        if bodies.ran == 2:
            control.request_drain("the caller's own drain")
        return {"count": state["count"] + 1}

    supervisor = Supervisor(policies("- {name: steps, step_count: {max_steps: 50}}"))
    app = supervisor.attach(one_node(drain_after_two, loop=True, checkpointer=True), name="g")
    with pytest.raises(GraphDrained, match="the caller's own drain"):
        app.invoke({"count": 0}, {**thread(), "callbacks": [Spy()]}, control=control)
    assert bodies.ran == 2
    assert seen.count("work") == 2


def test_a_watchdog_bug_is_logged_and_counted_and_the_run_goes_on(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    supervisor = Supervisor(
        policies("- {name: steps, step_count: {max_steps: 50}}"), registry=registry
    )
    graph = endless(Bodies(), is_async=False, checkpointer=False).with_config(recursion_limit=3)
    app = supervisor.attach(graph, name="g")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("a bug in the watchdog")

    monkeypatch.setattr("watchdog._core.engine.RunMonitor.node_started", broken)
    with capture_events() as events, pytest.raises(Exception, match="Recursion limit"):
        app.invoke({"count": 0})  # ran all three steps despite the bug
    errors = [e for e in events if e["event"] == "watchdog.internal_error"]
    assert len(errors) == 3
    assert errors[0]["error"] == "ZeroDivisionError: a bug in the watchdog"
    assert registry.get_sample_value("watchdog_internal_errors_total") == 3


def test_runs_lists_live_runs_and_cancel_stops_one() -> None:
    supervisor = Supervisor(policies("- {name: wall, wall_time: {max_seconds: 60}}"))
    app = supervisor.attach(hanging(), name="hung")
    run_id = uuid.uuid4()

    async def scenario() -> RunCancelled:
        task = asyncio.create_task(app.ainvoke({"count": 0}, {"run_id": run_id}))
        await asyncio.sleep(0.01)
        (live,) = supervisor.runs()
        assert (live.run_id, live.graph, live.status) == (str(run_id), "hung", "running")
        assert supervisor.cancel(run_id, reason="user pressed stop")
        assert not supervisor.cancel(str(run_id), reason="twice")
        try:
            await task
        except RunCancelled as cancelled:
            return cancelled
        raise AssertionError

    try:
        cancelled = asyncio.run(scenario())
    finally:
        supervisor.close()
    assert (cancelled.kind, cancelled.reason, cancelled.policy) == (
        "manual",
        "user pressed stop",
        None,
    )
    assert not supervisor.cancel(run_id)
    assert not supervisor.cancel("not a run id")


def test_batch_and_abatch_supervise_each_input(clock: FakeClock) -> None:
    supervisor = Supervisor(policies("- {name: steps, step_count: {max_steps: 3}}"), clock=clock)
    app = supervisor.attach(endless(Bodies(), is_async=False, checkpointer=False), name="g")
    results = app.batch([{"count": 0}, {"count": 10}], return_exceptions=True)
    assert [type(r) for r in results] == [RunCancelled, RunCancelled]

    async_app = supervisor.attach(endless(Bodies(), is_async=True, checkpointer=False), name="a")
    results = asyncio.run(async_app.abatch([{"count": 0}] * 3, return_exceptions=True))
    assert [type(r) for r in results] == [RunCancelled] * 3


def test_astream_events_is_supervised(clock: FakeClock) -> None:
    supervisor = Supervisor(policies("- {name: steps, step_count: {max_steps: 3}}"), clock=clock)
    bodies = Bodies()
    app = supervisor.attach(endless(bodies, is_async=True), name="events")

    async def consume() -> list[str]:
        return [e["event"] async for e in app.astream_events({"count": 0}, thread(), version="v2")]

    with pytest.raises(RunCancelled):
        asyncio.run(consume())
    assert bodies.ran == 3


def test_a_stream_the_caller_stops_reading_is_recorded_as_cancelled(clock: FakeClock) -> None:
    supervisor = Supervisor(policies("- {name: steps, step_count: {max_steps: 50}}"), clock=clock)
    app = supervisor.attach(endless(Bodies(), is_async=False), name="abandoned")
    with capture_events() as events:
        for chunk in app.stream({"count": 0}, thread()):
            if chunk["work"]["count"] == 2:
                break
    (cancelled,) = (e for e in events if e["event"] == "watchdog.run_cancelled")
    assert (cancelled["kind"], cancelled["reason"]) == (
        "manual",
        "The caller stopped reading the stream.",
    )
    assert supervisor.runs() == []


def test_a_node_that_catches_the_hard_cancel_leaves_the_callers_task_uncancelled() -> None:
    caught: list[str] = []

    async def stubborn(state: Counter) -> dict[str, int]:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            caught.append("cancel")  # and carry on, as the cleanup-after-cancel user does
        return {"count": 1}

    supervisor = Supervisor(policies("- {name: wall, wall_time: {node_seconds: 0.02}}"))
    app = supervisor.attach(one_node(stubborn), name="stubborn")

    async def scenario() -> int:
        with pytest.raises(RunCancelled) as raised:
            await app.ainvoke({"count": 0})
        assert raised.value.phase == "hard"
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling()

    try:
        assert asyncio.run(scenario()) == 0
    finally:
        supervisor.close()
    assert caught == ["cancel"]


def test_run_ids_leave_the_random_module_alone() -> None:
    random.seed(7)
    expected = [random.random() for _ in range(3)]
    random.seed(7)
    ids = {new_run_id() for _ in range(1000)}
    assert [random.random() for _ in range(3)] == expected  # nothing drawn from it
    assert len(ids) == 1000
    assert {i.version for i in ids} == {4}


# In a process of its own: forking this one, which has threads, could deadlock.
FORKED_IDS = """
import os
from watchdog._adapter.supervisor import new_run_id
read, write = os.pipe()
if os.fork() == 0:
    os.write(write, new_run_id().bytes)
    os._exit(0)
os.wait()
print(os.read(read, 16) != new_run_id().bytes)
"""


def test_a_forked_child_draws_run_ids_of_its_own() -> None:
    found = subprocess.run(
        [sys.executable, "-c", FORKED_IDS], check=False, capture_output=True, text=True, timeout=120
    )
    assert (found.returncode, found.stdout.strip()) == (0, "True"), found.stderr
