"""Cancel by id, by thread, by supersede, and through a run handle; resume afterwards."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypedDict

import pytest
from langchain_core.messages import AIMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, StateGraph
from langgraph.runtime import Runtime
from prometheus_client import CollectorRegistry

from tests.graphs import Bodies, Counter, endless, hanging, one_node, policies, search
from watchdog import RunCancelled, Supervisor
from watchdog._adapter.run import Stop
from watchdog.testing import FakeChatModel, capture_cancellations, capture_events


def thread(name: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": name}}


class State(TypedDict):
    count: int


def the_seeds_demonstration() -> Any:
    """cancel-concept.txt's demonstration graph, its 3 s sleep scaled to 10 ms."""

    async def long_task(state: State) -> dict[str, int]:
        await asyncio.sleep(0.01)  # Simulate slow tool / LLM
        return {"count": state["count"] + 1}

    def router(state: State) -> str:
        if state["count"] >= 100:  # Intentionally unreachable
            return END
        return "work"

    builder = StateGraph(State)
    builder.add_node("work", long_task)
    builder.set_entry_point("work")
    builder.add_conditional_edges("work", router, {"work": "work", END: END})
    return builder.compile(checkpointer=InMemorySaver())


def test_the_seeds_demonstration_is_stopped_by_the_caller_through_a_run_handle() -> None:
    supervisor = Supervisor(policies("- {name: wall, wall_time: {max_seconds: 60}}"))
    app = supervisor.attach(the_seeds_demonstration(), name="demo")

    async def main() -> tuple[bool, list[Any], RunCancelled]:
        run = supervisor.start(app, {"count": 0}, thread("seed"))
        # Let it run for a few cycles: the seed sleeps 0.07 s; a busy machine may need more.
        while not supervisor.runs() or supervisor.runs()[0].steps < 3:
            await asyncio.sleep(0.01)
        cancelled = await run.cancel()  # Cancel the task
        chunks: list[Any] = []

        async def read_it_all() -> None:
            async for chunk in run.stream():
                chunks.append(chunk)  # noqa: PERF401 - the chunks before the raise count

        with pytest.raises(RunCancelled) as raised:
            await read_it_all()
        return cancelled, chunks, raised.value

    try:
        cancelled, chunks, error = asyncio.run(main())
    finally:
        supervisor.close()
    assert cancelled
    assert (error.kind, error.reason) == ("manual", "cancelled by request")
    assert 2 <= len(chunks) <= 4  # the step under way when it was cancelled may complete
    # The state is checkpointed: the last completed step is there to inspect or resume.
    assert app.get_state(thread("seed")).values == chunks[-1]


def test_a_run_handles_result_is_the_final_state() -> None:
    supervisor = Supervisor(policies("- {name: steps, step_count: {max_steps: 3}}"))

    async def main() -> Any:
        run = supervisor.start(
            supervisor.attach(the_seeds_demonstration(), name="d"), {"count": 0}, thread("r")
        )
        with pytest.raises(RunCancelled):
            await run.result()
        return run.done()

    assert asyncio.run(main())


def test_a_hundred_concurrent_cancels_make_one_cancel(registry: CollectorRegistry) -> None:
    supervisor = Supervisor(
        policies("- {name: wall, wall_time: {max_seconds: 60}}"), registry=registry
    )
    app = supervisor.attach(hanging(), name="hung")
    run_id = uuid.uuid4()

    async def main() -> list[bool]:
        task = asyncio.create_task(app.ainvoke({"count": 0}, {"run_id": run_id}))
        await asyncio.sleep(0.01)
        barrier = threading.Barrier(100)
        results: list[bool] = []

        def cancel() -> None:
            barrier.wait(5)  # all hundred at once
            results.append(supervisor.cancel(run_id, reason="stop"))

        threads = [threading.Thread(target=cancel) for _ in range(100)]
        for t in threads:
            t.start()

        def join_all() -> None:
            for t in threads:
                t.join(5)

        await asyncio.to_thread(join_all)
        with pytest.raises(RunCancelled):
            await task
        return results

    try:
        with capture_cancellations() as cancellations:
            results = asyncio.run(main())
    finally:
        supervisor.close()
    assert sorted(results) == [False] * 99 + [True]
    assert len(cancellations) == 1
    assert (
        registry.get_sample_value(
            "watchdog_cancellations_total",
            {"graph": "hung", "policy": "", "kind": "manual", "phase": "hard"},
        )
        == 1
    )


def test_cancel_by_id_from_another_thread_while_the_run_streams() -> None:
    # A grace period the run needs no part of: it drains at the end of its 2 ms step.
    supervisor = Supervisor(
        policies("- {name: steps, step_count: {max_steps: 100000}, grace_seconds: 30}")
    )
    started = threading.Event()

    def slow(state: Counter) -> dict[str, int]:
        started.set()
        threading.Event().wait(0.002)
        return {"count": state["count"] + 1}

    app = supervisor.attach(one_node(slow, loop=True, checkpointer=True), name="streamer")
    run_id = uuid.uuid4()
    answers: list[bool] = []

    def operator() -> None:
        started.wait(5)
        answers.append(supervisor.cancel(str(run_id), reason="operator"))

    helper = threading.Thread(target=operator)
    helper.start()
    chunks: list[Any] = []
    with pytest.raises(RunCancelled) as raised:
        chunks.extend(app.stream({"count": 0}, {**thread("s"), "run_id": run_id}))
    helper.join(5)
    assert answers == [True]
    assert (raised.value.reason, raised.value.phase) == ("operator", "drained")
    assert len(chunks) < 1000
    # A finished run, and an id never seen, cancel nothing and raise nothing.
    assert not supervisor.cancel(run_id)
    assert not supervisor.cancel(uuid.uuid4())


def test_a_running_node_sees_that_a_drain_was_requested() -> None:
    seen: list[bool] = []

    def careful(state: Counter, runtime: Runtime[None]) -> dict[str, int]:
        seen.append(runtime.drain_requested)
        if state["count"] == 1:
            supervisor.cancel_thread("careful")  # as an operator would, mid-node
            seen.append(runtime.drain_requested)
        return {"count": state["count"] + 1}

    supervisor = Supervisor(policies("- {name: steps, step_count: {max_steps: 100}}"))
    app = supervisor.attach(one_node(careful, loop=True, checkpointer=True), name="careful")
    with pytest.raises(RunCancelled):
        app.invoke({"count": 0}, thread("careful"))
    assert seen == [False, False, True]


def test_a_new_run_on_a_thread_supersedes_the_one_still_running() -> None:
    supervisor = Supervisor(
        policies("- {name: latest-wins, supersede: true, wall_time: {max_seconds: 60}}")
    )
    app = supervisor.attach(hanging(), name="chat")

    async def main() -> tuple[RunCancelled, list[str]]:
        first = asyncio.create_task(app.ainvoke({"count": 0}, thread("user-7")))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(app.ainvoke({"count": 0}, thread("user-7")))
        other = asyncio.create_task(app.ainvoke({"count": 0}, thread("user-8")))
        with pytest.raises(RunCancelled) as raised:
            await first
        live = [run.thread_id or "" for run in supervisor.runs()]
        second.cancel()
        other.cancel()
        await asyncio.gather(second, other, return_exceptions=True)
        return raised.value, live

    try:
        cancelled, live = asyncio.run(main())
    finally:
        supervisor.close()
    assert (cancelled.policy, cancelled.kind) == ("latest-wins", "manual")
    assert cancelled.reason.startswith("A newer run (")
    assert sorted(live) == ["user-7", "user-8"]


def test_cancel_thread_cancels_every_run_on_it() -> None:
    supervisor = Supervisor(policies("- {name: wall, wall_time: {max_seconds: 60}}"))
    app = supervisor.attach(hanging(), name="chat")

    async def main() -> tuple[int, int, list[Any]]:
        tasks = [asyncio.create_task(app.ainvoke({"count": 0}, thread(t))) for t in "aab"]
        await asyncio.sleep(0.01)
        count = supervisor.cancel_thread("a", reason="user left")
        again = supervisor.cancel_thread("a")
        done = await asyncio.gather(*tasks[:2], return_exceptions=True)
        tasks[2].cancel()
        await asyncio.gather(tasks[2], return_exceptions=True)
        return count, again, done

    try:
        count, again, done = asyncio.run(main())
    finally:
        supervisor.close()
    assert (count, again) == (2, 0)
    assert [type(d) for d in done] == [RunCancelled, RunCancelled]


@pytest.mark.parametrize("saver", ["memory", "sqlite"])
def test_resume_after_a_cancel_continues_without_rerunning_completed_nodes(saver: str) -> None:
    bodies = Bodies()
    graph = endless(bodies, is_async=False)
    if saver == "sqlite":
        with SqliteSaver.from_conn_string(":memory:") as checkpointer:
            check_resume(graph.builder.compile(checkpointer=checkpointer), bodies)
    else:
        check_resume(graph, bodies)


def check_resume(graph: Any, bodies: Bodies) -> None:
    supervisor = Supervisor(policies("- {name: steps, step_count: {max_steps: 4}}"))
    app = supervisor.attach(graph, name="resumable")
    config = thread("resume")
    with pytest.raises(RunCancelled):
        app.invoke({"count": 0}, config)
    assert (bodies.ran, app.get_state(config).values) == (4, {"count": 4})
    with pytest.raises(RunCancelled):
        app.invoke(None, config)  # a new run: four more steps from the checkpoint
    assert (bodies.ran, app.get_state(config).values) == (8, {"count": 8})


def test_a_sync_node_blocked_in_a_call_is_stopped_as_soon_as_it_returns_to_python() -> None:
    after_the_call: list[str] = []

    def blocked(state: Counter) -> dict[str, int]:
        time.sleep(0.06)  # C code: nothing can interrupt it
        after_the_call.append("ran on")  # never reached: stopped on return to Python
        return {"count": 1}

    supervisor = Supervisor(policies("- {name: wall, wall_time: {node_seconds: 0.01}}"))
    app = supervisor.attach(one_node(blocked), name="sync")
    started = time.monotonic()
    try:
        with pytest.raises(RunCancelled) as raised:
            app.invoke({"count": 0})
    finally:
        supervisor.close()
    assert (raised.value.phase, raised.value.kind) == ("hard", "wall_time")
    assert after_the_call == []
    assert 0.06 <= time.monotonic() - started < 1.0


def test_a_manual_cancel_of_a_hung_node_is_hard_with_no_timer_policy() -> None:
    """The grace period's timer runs even when no policy of the run has timers."""
    supervisor = Supervisor(policies("- {name: steps, step_count: {max_steps: 100}}"))
    app = supervisor.attach(hanging(), name="hung")

    async def main() -> RunCancelled:
        task = asyncio.create_task(app.ainvoke({"count": 0}))
        while not supervisor.runs():
            await asyncio.sleep(0.005)
        assert supervisor.cancel(supervisor.runs()[0].run_id, "operator")
        with pytest.raises(RunCancelled) as raised:
            await asyncio.wait_for(task, timeout=30)
        return raised.value

    try:
        cancelled = asyncio.run(main())
    finally:
        supervisor.close()
    assert (cancelled.kind, cancelled.reason, cancelled.phase) == ("manual", "operator", "hard")


def test_work_an_orphaned_thread_starts_after_its_run_was_cancelled_is_refused_and_reported(
    registry: CollectorRegistry,
) -> None:
    supervisor = Supervisor(
        policies("- {name: steps, step_count: {max_steps: 1}}"), registry=registry
    )
    model = FakeChatModel(responses=[AIMessage("still here")])
    go_on = threading.Event()
    outcomes: list[str] = []

    def keep_working() -> None:
        go_on.wait(30)
        calls: list[Callable[[], object]] = [
            lambda: model.invoke("anyone?"),
            lambda: search.invoke("more"),
            lambda: model.invoke("still?"),
        ]
        for call in calls:
            try:
                call()
                outcomes.append("ran")
            except Stop:
                outcomes.append("refused")

    orphans: list[threading.Thread] = []

    def spawn(state: Counter) -> Counter:
        # A thread in the node's context (as LangChain's executors and asyncio.to_thread
        # make them), left running when the node returns.
        thread = threading.Thread(target=contextvars.copy_context().run, args=(keep_working,))
        orphans.append(thread)
        thread.start()
        return {"count": state["count"] + 1}

    app = supervisor.attach(one_node(spawn, loop=True), name="spawner")
    with capture_events() as events:
        with pytest.raises(RunCancelled) as raised:
            app.invoke({"count": 0})
        go_on.set()  # the run is over and recorded cancelled
        (orphan,) = orphans
        orphan.join(timeout=30)
    assert outcomes == ["refused", "refused", "refused"]
    run = {"run_id": raised.value.run_id, "thread_id": None, "graph": "spawner"}
    assert [e for e in events if e["event"] == "watchdog.activity_after_cancel"] == [
        {"event": "watchdog.activity_after_cancel", **run, **activity}
        for activity in (
            {"activity": "llm_call", "activity_name": "fake-model"},
            {"activity": "tool_call", "activity_name": "search"},
            {"activity": "llm_call", "activity_name": "fake-model"},
        )
    ]
    sample = registry.get_sample_value
    labels = {"graph": "spawner"}
    assert sample("watchdog_activity_after_cancel_total", {**labels, "activity": "llm_call"}) == 2
    assert sample("watchdog_activity_after_cancel_total", {**labels, "activity": "tool_call"}) == 1


def test_work_refused_while_a_run_drains_is_part_of_its_cancel_not_reported() -> None:
    supervisor = Supervisor(policies("- {name: steps, step_count: {max_steps: 50}}"))
    model = FakeChatModel(responses=[AIMessage("hi")])
    refused: list[str] = []

    def calls_after_the_cancel(state: Counter) -> Counter:
        assert supervisor.cancel(supervisor.runs()[0].run_id, "stop")
        try:
            model.invoke("one more")
        except Stop:
            refused.append("llm_call")
        return state

    app = supervisor.attach(one_node(calls_after_the_cancel), name="draining")
    with capture_events() as events, pytest.raises(RunCancelled):
        app.invoke({"count": 0})
    assert refused == ["llm_call"]
    assert [e for e in events if e["event"] == "watchdog.activity_after_cancel"] == []
