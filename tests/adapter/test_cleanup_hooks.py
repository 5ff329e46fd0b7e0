"""Cleanup hooks run to completion in tasks the supervisor owns, within a time limit."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.graphs import Bodies, Counter, endless, hanging, one_node, policies
from watchdog import RunCancelled, Supervisor, cleanup
from watchdog.testing import capture_events


def test_on_cancel_hooks_run_for_every_cancelled_run_sync_and_async() -> None:
    supervisor = Supervisor(policies("- {name: steps, step_count: {max_steps: 2}}"))
    seen: list[tuple[str, str]] = []

    @supervisor.on_cancel
    def remember(cancelled: RunCancelled) -> None:
        seen.append(("sync hook", cancelled.graph))

    @supervisor.on_cancel(timeout=1)
    async def remember_async(cancelled: RunCancelled) -> None:
        await asyncio.sleep(0.001)
        seen.append(("async hook", cancelled.graph))

    with pytest.raises(RunCancelled):
        supervisor.attach(
            endless(Bodies(), is_async=False, checkpointer=False), name="sync"
        ).invoke({"count": 0})
    app = supervisor.attach(endless(Bodies(), is_async=True, checkpointer=False), name="async")
    with pytest.raises(RunCancelled):
        asyncio.run(app.ainvoke({"count": 0}))
    assert sorted(seen) == [
        ("async hook", "async"),
        ("async hook", "sync"),
        ("sync hook", "async"),
        ("sync hook", "sync"),
    ]


def test_a_nodes_cleanup_runs_to_completion_when_its_task_is_hard_cancelled() -> None:
    finished: list[str] = []

    async def release() -> None:
        await asyncio.sleep(0.03)  # awaiting, inside a task that is being cancelled
        finished.append("released")

    async def node(state: Counter) -> dict[str, int]:
        async with cleanup(release):
            await asyncio.Event().wait()
        return {}

    supervisor = Supervisor(policies("- {name: wall, wall_time: {node_seconds: 0.02}}"))
    app = supervisor.attach(one_node(node), name="holder")
    try:
        with pytest.raises(RunCancelled) as raised:
            asyncio.run(app.ainvoke({"count": 0}))
    finally:
        supervisor.close()
    assert raised.value.phase == "hard"
    assert finished == ["released"]  # done before the caller heard of the cancel


def test_a_sync_nodes_cleanup_runs_on_the_way_out() -> None:
    finished: list[str] = []

    def node(state: Counter) -> dict[str, int]:
        with cleanup(lambda: finished.append("closed")):
            return {"count": 1}

    app = Supervisor(policies("- {name: steps, step_count: {max_steps: 5}}")).attach(
        one_node(node), name="sync"
    )
    assert app.invoke({"count": 0}) == {"count": 1}
    assert finished == ["closed"]


def test_a_node_ignoring_the_drain_is_hard_cancelled_and_a_hanging_hook_is_abandoned() -> None:
    supervisor = Supervisor(
        policies("- {name: wall, grace_seconds: 0.02, wall_time: {node_seconds: 0.02}}")
    )

    @supervisor.on_cancel(timeout=0.05)
    async def hangs(cancelled: RunCancelled) -> None:
        await asyncio.Event().wait()

    app = supervisor.attach(hanging(), name="stubborn")
    started = time.monotonic()
    try:
        with capture_events() as events, pytest.raises(RunCancelled) as raised:
            asyncio.run(app.ainvoke({"count": 0}))
    finally:
        supervisor.close()
    took = time.monotonic() - started
    assert raised.value.phase == "hard"
    names = [e["event"] for e in events]
    assert names.index("watchdog.drain_requested") < names.index("watchdog.hard_cancel")
    (abandoned,) = (e for e in events if e["event"] == "watchdog.cleanup_abandoned")
    assert abandoned["hook"].endswith(".<locals>.hangs")
    assert abandoned["timeout_s"] == 0.05
    assert 0.09 <= took < 1.0  # deadline + grace + the hook's time limit, then it ended


def test_a_failing_hook_is_reported_and_the_run_still_ends() -> None:
    supervisor = Supervisor(policies("- {name: steps, step_count: {max_steps: 1}}"))
    supervisor.on_cancel(lambda cancelled: 1 / 0)
    with capture_events() as events, pytest.raises(RunCancelled):
        supervisor.attach(endless(Bodies(), is_async=False, checkpointer=False), name="g").invoke(
            {"count": 0}
        )
    (failed,) = (e for e in events if e["event"] == "watchdog.cleanup_failed")
    assert failed["error"] == "ZeroDivisionError('division by zero')"
