"""``scope: thread``: totals kept with the thread, exact however its runs overlap."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph

from tests.graphs import Bodies, Counter, endless, one_node, policies, scripted
from watchdog import RunCancelled, Supervisor, testing
from watchdog._adapter import thread_totals as totals
from watchdog._core.state import ThreadTotals

ROOT = Path(__file__).resolve().parents[2]


def stepping(saver: Any, steps: int) -> Any:
    """An async graph that takes ``steps`` steps, yielding to other runs at each."""

    async def step(state: Counter) -> dict[str, int]:
        await asyncio.sleep(0)
        return {"count": state["count"] + 1}

    builder = StateGraph(Counter)
    builder.add_node("work", step)
    builder.add_edge(START, "work")
    builder.add_conditional_edges("work", lambda s: END if s["count"] >= steps else "work")
    return builder.compile(checkpointer=saver)


def thread_config(thread_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread_id}}


UNLIMITED = "- {name: thread, step_count: {max_steps: 1000000, scope: thread}}"


def test_concurrent_runs_on_one_thread_all_count() -> None:
    saver = InMemorySaver()
    app = Supervisor(policies(UNLIMITED)).attach(stepping(saver, steps=4), name="many")

    async def eight_at_once() -> None:
        await asyncio.gather(
            *(app.ainvoke({"count": 0}, thread_config("shared")) for _ in range(8))
        )

    asyncio.run(eight_at_once())
    assert totals.load(saver, "shared").steps == 32


def test_concurrent_sync_runs_on_one_thread_all_count() -> None:
    saver = InMemorySaver()
    graph = one_node(lambda state: {"count": state["count"] + 1}, checkpointer=False)
    app = Supervisor(policies(UNLIMITED)).attach(graph.copy({"checkpointer": saver}), name="s")
    app.batch([{"count": 0}] * 8, thread_config("shared"))
    assert totals.load(saver, "shared").steps == 8


def test_a_thread_limit_holds_across_concurrent_runs() -> None:
    saver = InMemorySaver()
    text = "- {name: thread, step_count: {max_steps: 10, scope: thread}}"
    app = Supervisor(policies(text)).attach(stepping(saver, steps=8), name="parallel")

    async def four_at_once() -> list[Any]:
        runs = (app.ainvoke({"count": 0}, thread_config("limited")) for _ in range(4))
        return await asyncio.gather(*runs, return_exceptions=True)

    outcomes = asyncio.run(four_at_once())
    assert all(isinstance(outcome, RunCancelled) for outcome in outcomes)
    # Each run checks the thread's total as its steps begin: at most one step over the
    # limit per run live at once (a step stopped as it began counts as begun).
    assert 11 <= totals.load(saver, "limited").steps <= 10 + 4


def test_a_superseded_run_keeps_its_steps() -> None:
    saver = InMemorySaver()
    text = """\
    - {name: newest, step_count: {max_steps: 1000}, supersede: true}
    - {name: thread, step_count: {max_steps: 1000000, scope: thread}}
    """
    supervisor = Supervisor(policies(text))
    older_app = supervisor.attach(stepping(saver, steps=1000), name="older")
    newer_app = supervisor.attach(stepping(saver, steps=3), name="newer")

    async def superseded() -> int:
        older = asyncio.create_task(older_app.ainvoke({"count": 0}, thread_config("chat")))
        while not supervisor.runs() or supervisor.runs()[0].steps < 24:
            await asyncio.sleep(0)
        taken = supervisor.runs()[0].steps
        await newer_app.ainvoke({"count": 0}, thread_config("chat"))
        with pytest.raises(RunCancelled):
            await older
        return taken

    taken = asyncio.run(superseded())
    saved = totals.load(saver, "chat").steps
    # The older run's steps (24 or a few more, as it went on meanwhile) and the newer's 3.
    assert saved >= taken + 3 >= 27


def test_processes_sharing_one_checkpointer_lose_no_run(tmp_path: Path) -> None:
    database = str(tmp_path / "shared.sqlite")
    with SqliteSaver.from_conn_string(database) as saver:
        saver.setup()  # the tables and WAL mode, before two writers race to make them
    command = [sys.executable, "-m", "tests.totals_worker", database, "shared", "40"]
    workers = [
        subprocess.Popen(
            command,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for worker in workers:  # both set up before either starts
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "ready"
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    for worker in workers:
        out, errors = worker.communicate(timeout=120)
        assert (worker.returncode, out.strip()) == (0, "done"), errors
    with SqliteSaver.from_conn_string(database) as saver:
        assert totals.load(saver, "shared").steps == 2 * 40 * 3


THREAD_SCOPED = """\
- {name: per-run, step_count: {max_steps: 4}}
- {name: per-thread, step_count: {max_steps: 7, scope: thread}}
"""


def test_scope_thread_counts_across_resumes_and_survives_a_restart(tmp_path: Path) -> None:
    bodies = Bodies()
    database = str(tmp_path / "threads.sqlite")
    config = thread_config("runaway")

    def supervised(checkpointer: SqliteSaver) -> Any:
        graph = endless(bodies, is_async=False).builder.compile(checkpointer=checkpointer)
        return Supervisor(policies(THREAD_SCOPED)).attach(graph, name="runaway")

    with SqliteSaver.from_conn_string(database) as checkpointer:
        app = supervised(checkpointer)
        with pytest.raises(RunCancelled) as first:
            app.invoke({"count": 0}, config)
        assert (first.value.policy, bodies.ran) == ("per-run", 4)
        # Resumed, the run would get a fresh per-run budget; the thread's budget goes on:
        # 5 steps begun (4 ran, the 5th was stopped), so the 3rd step of this run is the 8th.
        with pytest.raises(RunCancelled) as second:
            app.invoke(None, config)
        assert (second.value.policy, second.value.observed, bodies.ran) == ("per-thread", 8, 6)
        assert app.get_state(config).values == {"count": 6}

    # A new process: a new supervisor, the same database.
    with SqliteSaver.from_conn_string(database) as checkpointer:
        app = supervised(checkpointer)
        with pytest.raises(RunCancelled) as third:
            app.invoke(None, config)
        assert (third.value.policy, third.value.observed, bodies.ran) == ("per-thread", 9, 6)
        # The totals live beside the thread, not in its state or its history.
        assert next(s.values for s in app.get_state_history(config)) == {"count": 6}


def test_scope_thread_token_budgets_carry_over_between_runs() -> None:
    model = scripted(AIMessage("thinking..."))  # 120 tokens a call
    supervisor = Supervisor(
        policies(
            """\
            - {name: per-run, step_count: {max_steps: 3}}
            - {name: thread-tokens, token_budget: {max_total_tokens: 500, scope: thread}}
            """
        )
    )
    bodies = Bodies()
    app = supervisor.attach(endless(bodies, is_async=True, model=model), name="chatty")
    config = thread_config("chatty")
    with pytest.raises(RunCancelled) as first:
        asyncio.run(app.ainvoke({"count": 0}, config))
    assert (first.value.policy, bodies.ran) == ("per-run", 3)  # 3 calls: 360 tokens
    with pytest.raises(RunCancelled) as second:
        asyncio.run(app.ainvoke(None, config))
    assert (second.value.policy, second.value.observed) == ("thread-tokens", 600)
    assert bodies.ran == 5  # 3 + 2: the 5th call crossed 500 for the thread


def test_a_reset_lets_a_blocked_thread_run_again_in_every_process_sharing_its_checkpointer(
    tmp_path: Path,
) -> None:
    bodies = Bodies()
    database = str(tmp_path / "threads.sqlite")
    config = thread_config("long-chat")
    limit = "- {name: per-thread, step_count: {max_steps: 3, scope: thread}}"

    def supervised(checkpointer: SqliteSaver) -> tuple[Supervisor, Any]:
        graph = endless(bodies, is_async=False).builder.compile(checkpointer=checkpointer)
        supervisor = Supervisor(policies(limit))
        return supervisor, supervisor.attach(graph, name="chat")

    with SqliteSaver.from_conn_string(database) as checkpointer:
        supervisor, app = supervised(checkpointer)
        with pytest.raises(RunCancelled):
            app.invoke({"count": 0}, config)
        with pytest.raises(RunCancelled) as blocked:
            app.invoke(None, config)
        assert (blocked.value.observed, bodies.ran) == (5, 3)  # stopped as its 1st step began
        with testing.capture_events() as events:
            assert supervisor.reset_thread_totals("long-chat") == 1
            assert supervisor.reset_thread_totals("some-other-thread") == 0
        assert events == [
            {"event": "watchdog.thread_totals_reset", "thread_id": "long-chat", "checkpointers": 1},
            {
                "event": "watchdog.thread_totals_reset",
                "thread_id": "some-other-thread",
                "checkpointers": 0,
            },
        ]
        with pytest.raises(RunCancelled) as again:
            app.invoke(None, config)
        assert (again.value.observed, bodies.ran) == (4, 6)  # three fresh steps ran

    # Another process, the same database: it counts from the reset too.
    with SqliteSaver.from_conn_string(database) as checkpointer:
        _, app = supervised(checkpointer)
        assert totals.load(checkpointer, "long-chat").steps == 4
        with pytest.raises(RunCancelled) as later:
            app.invoke(None, config)
        assert (later.value.observed, bodies.ran) == (5, 6)
        # Nothing was written for the thread that had no totals.
        assert checkpointer.get_tuple(totals._config("some-other-thread")) is None


def test_an_async_reset_also_zeroes_the_totals_the_live_runs_of_the_thread_share() -> None:
    saver = InMemorySaver()
    limit = "- {name: per-thread, step_count: {max_steps: 6, scope: thread}}"
    supervisor = Supervisor(policies(limit))
    app = supervisor.attach(stepping(saver, steps=4), name="chat")
    config = thread_config("t")

    async def scenario() -> None:
        await app.ainvoke({"count": 0}, config)  # 4 steps of the thread's 6
        paused, go_on = asyncio.Event(), asyncio.Event()

        async def wait(state: Counter) -> dict[str, int]:
            paused.set()
            await go_on.wait()
            return {"count": 0}

        graph = one_node(wait).builder.compile(checkpointer=saver)
        waiting = asyncio.create_task(
            supervisor.attach(graph, name="chat").ainvoke({"count": 0}, config)
        )
        async with asyncio.timeout(30):
            await paused.wait()  # a live run of the thread: the totals are shared in memory
            assert await supervisor.areset_thread_totals("t") == 1
            # 1 step of the live run, and these 4: within 6 only if the shared totals reset.
            await app.ainvoke({"count": 0}, config)
            go_on.set()
            await waiting

    asyncio.run(scenario())
    assert totals.load(saver, "t").steps == 5


# -- the records, on real checkpointers ------------------------------------------------------


def usage(steps: int, input_tokens: int = 0, cost: float = 0.0) -> ThreadTotals:
    used = totals.used_by(testing.make_run_state(steps=steps, input_tokens=input_tokens))
    used.cost_usd = {"t": cost}
    return used


@pytest.fixture(params=["memory", "sqlite"])
def saver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "memory":
        yield InMemorySaver()
        return
    with SqliteSaver.from_conn_string(str(tmp_path / "threads.sqlite")) as saver:
        yield saver


def test_a_threads_totals_are_the_sum_of_its_records(saver: Any) -> None:
    assert totals.load(saver, "t").as_dict() == ThreadTotals().as_dict()
    totals.save(saver, "t", usage(3, input_tokens=10, cost=0.5))
    totals.save(saver, "t", usage(4, input_tokens=5, cost=0.25))
    totals.save(saver, "other", usage(100))
    loaded = totals.load(saver, "t")
    assert (loaded.steps, loaded.input_tokens, loaded.cost_usd) == (7, 15, {"t": 0.75})


def test_a_reset_counts_from_itself_and_needs_records_to_reset(saver: Any) -> None:
    assert totals.reset(saver, "t") is False  # nothing to reset: no marker written
    totals.save(saver, "t", usage(3))
    assert totals.reset(saver, "t") is True
    assert totals.load(saver, "t").steps == 0
    totals.save(saver, "t", usage(2))
    assert totals.load(saver, "t").steps == 2


def test_the_records_stay_out_of_the_threads_own_state_and_history(saver: Any) -> None:
    graph = one_node(lambda state: {"count": state["count"] + 1}).builder.compile(
        checkpointer=saver
    )
    graph.invoke({"count": 0}, thread_config("t"))
    before = [c.config for c in graph.get_state_history(thread_config("t"))]
    totals.save(saver, "t", usage(1))
    totals.reset(saver, "t")
    assert graph.get_state(thread_config("t")).values == {"count": 1}
    assert [c.config for c in graph.get_state_history(thread_config("t"))] == before


def test_the_async_records_are_the_same_records() -> None:
    saver = InMemorySaver()

    async def scenario() -> tuple[int, int, bool]:
        await totals.asave(saver, "t", usage(3))
        loaded = (await totals.aload(saver, "t")).steps
        reset = await totals.areset(saver, "t")
        return loaded, totals.load(saver, "t").steps, reset

    assert asyncio.run(scenario()) == (3, 0, True)
