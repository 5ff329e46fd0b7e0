"""Thread repair: a cancelled run leaves every tool call of its thread answered, so the
thread's next turn is accepted by a model that, like real providers, refuses dangling calls."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, RemoveMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.constants import CONFIG_KEY_CHECKPOINTER
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.graph.message import REMOVE_ALL_MESSAGES
from langgraph.types import PregelTask, StateSnapshot

from tests.graphs import Counter, hanging, one_node, policies
from watchdog import RunCancelled, Supervisor
from watchdog._adapter.repair import messages_channel, repair
from watchdog.testing import FakeChatModel, FakeClock, capture_events, dangling_tool_calls

THREAD = {"configurable": {"thread_id": "chat"}}
WALL = "The run has been going for 60.000 s, but policy 'wall' allows at most 60 s."
CANCELLED_BY_WALL = (
    f"Tool call cancelled: (policy 'wall', wall_time) {WALL} Its result is not available."
)


def calls(*ids: str) -> AIMessage:
    """An assistant message calling ``quick`` for ids starting with q, else ``hang``."""
    return AIMessage(
        "",
        tool_calls=[
            {"name": "quick" if i.startswith("q") else "hang", "args": {"q": i}, "id": i}
            for i in ids
        ],
    )


def strict_model(first: AIMessage) -> FakeChatModel:
    return FakeChatModel(responses=[first, AIMessage("answered")], rejects_dangling_tool_calls=True)


def the_policy(*, repair_thread: bool = True) -> str:
    flag = "" if repair_thread else ", repair_thread: false"
    return f"- {{name: wall, grace_seconds: 1, wall_time: {{max_seconds: 60}}{flag}}}"


# -- the repair, from a snapshot ------------------------------------------------------------


def snapshot(messages: list[BaseMessage], *tasks: PregelTask) -> StateSnapshot:
    return StateSnapshot({"messages": messages}, (), {}, None, None, None, tasks, ())


def task(name: str, result: Any = None) -> PregelTask:
    return PregelTask(f"id-{name}", name, (), None, (), None, result)


def cancelled(call_id: str, name: str = "hang") -> ToolMessage:
    return ToolMessage(
        f"Tool call cancelled: {WALL} Its result is not available.",
        tool_call_id=call_id,
        name=name,
        status="error",
    )


def test_a_thread_whose_calls_all_have_results_needs_no_repair() -> None:
    answered = [HumanMessage("hi"), calls("q1"), ToolMessage("ok", tool_call_id="q1")]
    assert repair(snapshot(answered), "messages", WALL) is None
    assert repair(snapshot([HumanMessage("hi"), AIMessage("hello")]), "messages", WALL) is None
    assert repair(snapshot([]), "messages", WALL) is None


def test_dangling_calls_at_the_end_are_answered_by_appending() -> None:
    found = repair(
        snapshot([HumanMessage("hi"), calls("h1", "h2")], task("tools")), "messages", WALL
    )
    assert found is not None
    assert (found.messages, found.as_node, found.cancelled, found.recovered) == (
        [cancelled("h1"), cancelled("h2")],
        "tools",
        2,
        0,
    )


def test_results_of_tools_that_finished_are_written_again_with_the_cancelled_ones() -> None:
    # A finished task's result is only a pending write of the interrupted step: shown in a
    # live snapshot, dropped by the thread's next input unless written.
    result = ToolMessage("ok", tool_call_id="q1", name="quick", id="result-1")
    messages = [HumanMessage("hi"), calls("q1", "h2"), result]
    tasks = (task("tools", {"messages": [result]}), task("tools"))
    found = repair(snapshot(messages, *tasks), "messages", WALL)
    assert found is not None
    assert (found.messages, found.as_node, found.cancelled, found.recovered) == (
        [result, cancelled("h2")],
        "tools",
        1,
        1,
    )


def test_dangling_calls_before_later_messages_rewrite_the_conversation_in_order() -> None:
    messages = [HumanMessage("hi", id="1"), calls("h1"), HumanMessage("are you there?", id="3")]
    found = repair(snapshot(messages), "messages", WALL)
    assert found is not None
    assert found.messages == [
        RemoveMessage(id=REMOVE_ALL_MESSAGES),
        messages[0],
        messages[1],
        cancelled("h1"),
        messages[2],
    ]
    assert dangling_tool_calls(found.messages[1:]) == []


def test_the_messages_channel_is_the_one_add_messages_reduces() -> None:
    agent = create_agent(FakeChatModel(responses=[AIMessage("hi")]), [])
    chat = StateGraph(MessagesState)
    chat.add_node("reply", lambda state: {})
    chat.add_edge(START, "reply")
    assert messages_channel(agent) == "messages"
    assert messages_channel(chat.compile()) == "messages"
    assert messages_channel(hanging()) is None


# -- create_agent, cancelled while tools hang -----------------------------------------------


hung: list[str] = []  # the hanging tools that started, by tool call


@pytest.fixture(autouse=True)
def _no_tool_hung_yet() -> None:
    hung.clear()


@tool
async def hang(q: str) -> str:
    """Wait for ever."""
    hung.append(q)
    await asyncio.Event().wait()
    return "never"


@tool
async def quick(q: str) -> str:
    """Answer at once."""
    return f"quick {q}"


def test_a_hard_cancel_while_tools_hang_leaves_the_thread_usable_async(clock: FakeClock) -> None:
    supervisor = Supervisor(policies(the_policy()), clock=clock)
    model = strict_model(calls("q1", "h2", "h3"))
    app = supervisor.attach(
        create_agent(model, [hang, quick], checkpointer=InMemorySaver()), name="agent"
    )

    async def main() -> tuple[RunCancelled, dict[str, Any]]:
        run = asyncio.create_task(app.ainvoke({"messages": [HumanMessage("hi")]}, THREAD))
        # Both hanging tools started, and the quick one's result is saved.
        await until(lambda: len(hung) == 2 and wrote_result(app, "q1"))
        clock.advance(60)
        supervisor.check_timers()  # the violation: a drain, which hung tools never reach
        clock.advance(1)
        supervisor.check_timers()  # the grace is over: the run's task is cancelled
        with pytest.raises(RunCancelled) as raised:
            await run
        return raised.value, await app.ainvoke({"messages": [HumanMessage("again")]}, THREAD)

    with capture_events() as events:
        stopped, next_turn = asyncio.run(main())
    assert (stopped.kind, stopped.phase) == ("wall_time", "hard")
    assert next_turn["messages"][-1].content == "answered"
    assert [(m.tool_call_id, m.status, m.content) for m in tool_messages(next_turn)] == [
        ("q1", "success", "quick q1"),
        ("h2", "error", CANCELLED_BY_WALL),
        ("h3", "error", CANCELLED_BY_WALL),
    ]
    assert repairs(events) == [
        {
            "event": "watchdog.thread_repaired",
            "run_id": stopped.run_id,
            "thread_id": "chat",
            "graph": "agent",
            "node": "tools",
            "cancelled_calls": 2,
            "recovered_results": 1,
        }
    ]


def test_without_repair_the_next_turn_is_refused_as_a_provider_would(clock: FakeClock) -> None:
    supervisor = Supervisor(policies(the_policy(repair_thread=False)), clock=clock)
    model = strict_model(calls("q1", "h2"))
    app = supervisor.attach(
        create_agent(model, [hang, quick], checkpointer=InMemorySaver()), name="agent"
    )

    async def main() -> None:
        run = asyncio.create_task(app.ainvoke({"messages": [HumanMessage("hi")]}, THREAD))
        await until(lambda: len(hung) == 1 and wrote_result(app, "q1"))
        clock.advance(60)
        supervisor.check_timers()
        clock.advance(1)
        supervisor.check_timers()
        with pytest.raises(RunCancelled):
            await run
        await app.ainvoke({"messages": [HumanMessage("again")]}, THREAD)

    with capture_events() as events, pytest.raises(ValueError, match="missing: \\['q1', 'h2'\\]"):
        asyncio.run(main())
    assert repairs(events) == []


@tool
def hang_sync(q: str) -> str:
    """Wait until released, in Python, so that a hard cancel can land."""
    hung.append(q)
    while not released.wait(0.005):
        pass
    return "released"


@tool
def quick_sync(q: str) -> str:
    """Answer at once."""
    return f"quick {q}"


released = threading.Event()


def cancelled_sync_agent(clock: FakeClock, *, repair_thread: bool) -> Any:
    """A sync create_agent on InMemorySaver, hard-cancelled by a policy while two of its
    three parallel tool calls hang; the quick one finished."""
    supervisor = Supervisor(policies(the_policy(repair_thread=repair_thread)), clock=clock)
    first = AIMessage(
        "",
        tool_calls=[
            {"name": "quick_sync", "args": {"q": "q1"}, "id": "q1"},
            {"name": "hang_sync", "args": {"q": "h2"}, "id": "h2"},
            {"name": "hang_sync", "args": {"q": "h3"}, "id": "h3"},
        ],
    )
    agent = create_agent(strict_model(first), [hang_sync, quick_sync], checkpointer=InMemorySaver())
    app = supervisor.attach(agent, name="agent")
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            app.invoke({"messages": [HumanMessage("hi")]}, THREAD)
        except BaseException as error:  # handed to the test's thread
            outcome.append(error)

    caller = threading.Thread(target=call)
    caller.start()
    try:
        wait_until(lambda: len(hung) == 2 and wrote_result(app, "q1"))
        clock.advance(60)
        supervisor.check_timers()
        clock.advance(1)
        supervisor.check_timers()  # Stop raised in the node's thread and its tools' threads
        caller.join(timeout=30)
    finally:
        released.set()  # whatever happens, no thread is left waiting
        caller.join(timeout=30)
        released.clear()
    (stopped,) = outcome
    assert isinstance(stopped, RunCancelled)
    assert (stopped.kind, stopped.phase) == ("wall_time", "hard")
    return app


def test_a_hard_cancel_while_tools_hang_leaves_the_thread_usable_sync(clock: FakeClock) -> None:
    app = cancelled_sync_agent(clock, repair_thread=True)
    next_turn = app.invoke({"messages": [HumanMessage("again")]}, THREAD)
    assert next_turn["messages"][-1].content == "answered"
    assert [(m.tool_call_id, m.status) for m in tool_messages(next_turn)] == [
        ("q1", "success"),
        ("h2", "error"),
        ("h3", "error"),
    ]


def test_without_repair_the_next_turn_is_refused_sync(clock: FakeClock) -> None:
    app = cancelled_sync_agent(clock, repair_thread=False)
    with pytest.raises(ValueError, match="missing: \\['q1', 'h2', 'h3'\\]"):
        app.invoke({"messages": [HumanMessage("again")]}, THREAD)


def test_a_manual_cancel_repairs_the_thread_with_the_operators_reason() -> None:
    supervisor = Supervisor(
        policies("- {name: steps, grace_seconds: 0, step_count: {max_steps: 50}}")
    )
    model = strict_model(calls("h1"))
    app = supervisor.attach(
        create_agent(model, [hang, quick], checkpointer=InMemorySaver()), name="agent"
    )

    async def main() -> dict[str, Any]:
        run = asyncio.create_task(app.ainvoke({"messages": [HumanMessage("hi")]}, THREAD))
        await until(lambda: hung == ["h1"])
        assert supervisor.cancel(supervisor.runs()[0].run_id, "The user pressed stop.")
        with pytest.raises(RunCancelled):
            await asyncio.wait_for(run, timeout=30)
        next_turn: dict[str, Any] = await app.ainvoke({"messages": [HumanMessage("again")]}, THREAD)
        return next_turn

    try:
        next_turn = asyncio.run(main())
    finally:
        supervisor.close()
    assert [(m.tool_call_id, m.content) for m in tool_messages(next_turn)] == [
        ("h1", "Tool call cancelled: (manual) The user pressed stop. Its result is not available.")
    ]


def test_a_stream_its_caller_stops_reading_leaves_the_thread_usable() -> None:
    # The caller goes away after the model asked for tools, before they ran.
    supervisor = Supervisor(policies("- {name: steps, step_count: {max_steps: 50}}"))
    app = supervisor.attach(
        create_agent(strict_model(calls("q1")), [hang, quick], checkpointer=InMemorySaver()),
        name="agent",
    )
    with capture_events() as events:
        for chunk in app.stream({"messages": [HumanMessage("hi")]}, THREAD, stream_mode="updates"):
            assert "model" in chunk
            break
    assert app.invoke({"messages": [HumanMessage("again")]}, THREAD)["messages"][-1].content == (
        "answered"
    )
    assert [e["cancelled_calls"] for e in repairs(events)] == [1]


def test_a_graph_without_messages_is_left_as_it_was() -> None:
    supervisor = Supervisor(
        policies("- {name: steps, grace_seconds: 0, step_count: {max_steps: 50}}")
    )

    async def stuck(state: Counter) -> Counter:
        hung.append("node")
        await asyncio.Event().wait()
        return state

    graph = one_node(stuck, checkpointer=True)
    saver = graph.checkpointer
    app = supervisor.attach(graph, name="hung")

    async def main() -> None:
        run = asyncio.create_task(app.ainvoke(Counter(count=0), THREAD))
        await until(lambda: hung == ["node"])
        supervisor.cancel(supervisor.runs()[0].run_id, "stop")
        with pytest.raises(RunCancelled):
            await asyncio.wait_for(run, timeout=30)

    def checkpoints() -> int:
        return len(list(saver.list(THREAD)))

    with capture_events() as events:
        try:
            asyncio.run(main())
        finally:
            supervisor.close()
        written = checkpoints()
    assert repairs(events) == []
    assert written == checkpoints()
    assert written > 0


# -- helpers ---------------------------------------------------------------------------------


def wrote_result(app: Any, call_id: str) -> bool:
    """Whether the thread's checkpointer holds the result of ``call_id``, as a pending write
    of the step under way."""
    saved = app.checkpointer.get_tuple(THREAD)
    for _, channel, value in (saved.pending_writes or []) if saved else ():
        written = value if isinstance(value, list) else [value]
        if channel == "messages" and any(
            isinstance(m, ToolMessage) and m.tool_call_id == call_id for m in written
        ):
            return True
    return False


async def until(condition: Callable[[], bool], timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.002)


def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    gate = threading.Event()
    for _ in range(int(timeout / 0.002)):
        if condition():
            return
        gate.wait(0.002)
    msg = "condition not met in time"
    raise AssertionError(msg)


def tool_messages(state: dict[str, Any]) -> Iterator[ToolMessage]:
    return (m for m in state["messages"] if isinstance(m, ToolMessage))


def repairs(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["event"].startswith("watchdog.thread_repair")]


def test_a_thread_kept_by_a_checkpointer_a_server_lends_is_repaired_too() -> None:
    # LangGraph's Agent Server compiles graphs without a checkpointer and lends each run one
    # in its config.
    supervisor = Supervisor(
        policies("- {name: steps, grace_seconds: 0, step_count: {max_steps: 50}}")
    )
    app = supervisor.attach(create_agent(strict_model(calls("h1")), [hang, quick]), name="agent")
    lent = {"configurable": {"thread_id": "chat", CONFIG_KEY_CHECKPOINTER: InMemorySaver()}}

    async def main() -> dict[str, Any]:
        run = asyncio.create_task(app.ainvoke({"messages": [HumanMessage("hi")]}, lent))
        await until(lambda: hung == ["h1"])
        supervisor.cancel(supervisor.runs()[0].run_id, "The user pressed stop.")
        with pytest.raises(RunCancelled):
            await asyncio.wait_for(run, timeout=30)
        next_turn: dict[str, Any] = await app.ainvoke({"messages": [HumanMessage("again")]}, lent)
        return next_turn

    try:
        next_turn = asyncio.run(main())
    finally:
        supervisor.close()
    assert next_turn["messages"][-1].content == "answered"
