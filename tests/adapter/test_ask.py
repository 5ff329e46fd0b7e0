"""on_violation: ask: at a limit the run pauses with LangGraph's interrupt(), carrying the
violation; a person's answer extends the limit and the run goes on, or cancels it."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypedDict

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command

from tests.graphs import policies, search
from watchdog import PolicyError, RunCancelled, Supervisor
from watchdog.testing import FakeChatModel, capture_events

THREAD = {"configurable": {"thread_id": "t"}}
ASK_AT_THREE_STEPS = "- {name: steps, on_violation: ask, step_count: {max_steps: 3}}"
REASON = "The run began step 4, but policy 'steps' allows at most 3 steps."


class Count(TypedDict):
    count: int


def counting_to_five(saver: BaseCheckpointSaver[Any]) -> Any:
    builder = StateGraph(Count)
    builder.add_node("work", lambda state: {"count": state["count"] + 1})
    builder.add_edge(START, "work")
    builder.add_conditional_edges("work", lambda state: END if state["count"] >= 5 else "work")
    return builder.compile(checkpointer=saver)


@contextmanager
def saver(kind: str) -> Iterator[BaseCheckpointSaver[Any]]:
    if kind == "memory":
        yield InMemorySaver()
        return
    connection = sqlite3.connect(":memory:", check_same_thread=False)
    try:
        yield SqliteSaver(connection)
    finally:
        connection.close()


def question(paused: dict[str, Any]) -> dict[str, Any]:
    (pending,) = paused["__interrupt__"]
    asked: dict[str, Any] = pending.value
    return asked


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_run_pauses_at_its_limit_and_an_extension_lets_it_complete(kind: str) -> None:
    with saver(kind) as checkpointer:
        app = Supervisor(policies(ASK_AT_THREE_STEPS)).attach(
            counting_to_five(checkpointer), name="counter"
        )
        with capture_events() as events:
            paused = app.invoke({"count": 0}, THREAD)
            finished = app.invoke(Command(resume={"extend": 5}), THREAD)
    asked = question(paused)
    assert paused["count"] == 3
    assert {
        k: asked[k] for k in ("policy", "kind", "limit_key", "observed", "limit", "reason")
    } == {
        "policy": "steps",
        "kind": "step_count",
        "limit_key": "max_steps",
        "observed": 4,
        "limit": 3,
        "reason": REASON,
    }
    assert finished == {"count": 5}
    asks = [
        (e["event"], e.get("extend"))
        for e in events
        if e["event"] in ("watchdog.asked", "watchdog.ask_answered")
    ]
    assert asks == [("watchdog.asked", None), ("watchdog.ask_answered", 5)]


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_refusal_cancels_the_run(kind: str) -> None:
    with saver(kind) as checkpointer:
        app = Supervisor(policies(ASK_AT_THREE_STEPS)).attach(
            counting_to_five(checkpointer), name="counter"
        )
        app.invoke({"count": 0}, THREAD)
        with pytest.raises(RunCancelled) as raised:
            app.invoke(Command(resume={"extend": 0}), THREAD)
        assert app.get_state(THREAD).values == {"count": 3}  # no step ran past the limit
    assert (raised.value.policy, raised.value.kind) == ("steps", "step_count")
    assert raised.value.reason == f"{REASON} The person asked did not let it go on."


def test_an_extension_too_small_asks_again() -> None:
    app = Supervisor(policies(ASK_AT_THREE_STEPS)).attach(
        counting_to_five(InMemorySaver()), name="counter"
    )
    app.invoke({"count": 0}, THREAD)
    again = app.invoke(Command(resume={"extend": 1}), THREAD)
    assert again["count"] == 4
    assert question(again)["limit"] == 4


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_ask_through_astream(kind: str) -> None:
    async def main(checkpointer: BaseCheckpointSaver[Any]) -> tuple[list[Any], list[Any]]:
        app = Supervisor(policies(ASK_AT_THREE_STEPS)).attach(
            counting_to_five(checkpointer), name="counter"
        )
        first = [c async for c in app.astream({"count": 0}, THREAD, stream_mode="updates")]
        second = [
            c
            async for c in app.astream(Command(resume={"extend": 5}), THREAD, stream_mode="updates")
        ]
        return first, second

    if kind == "memory":
        first, second = asyncio.run(main(InMemorySaver()))
    else:

        async def with_sqlite() -> tuple[list[Any], list[Any]]:
            async with AsyncSqliteSaver.from_conn_string(":memory:") as checkpointer:
                return await main(checkpointer)

        first, second = asyncio.run(with_sqlite())
    assert first[:3] == [{"work": {"count": n}} for n in (1, 2, 3)]
    assert question(first[3])["policy"] == "steps"
    assert second == [{"work": {"count": 4}}, {"work": {"count": 5}}]


def test_an_agent_pauses_before_its_tools_when_its_token_budget_is_spent() -> None:
    calls = [
        AIMessage("", tool_calls=[{"name": "search", "args": {"query": q}, "id": q}])
        for q in ("a", "b")
    ]
    model = FakeChatModel(responses=[*calls, AIMessage("done")])
    text = "- {name: budget, on_violation: ask, token_budget: {max_total_tokens: 200}}"
    app = Supervisor(policies(text)).attach(
        create_agent(model, [search], checkpointer=InMemorySaver()), name="agent"
    )
    paused = app.invoke({"messages": [HumanMessage("go")]}, THREAD)
    asked = question(paused)
    assert (asked["kind"], asked["observed"], asked["at"]) == ("token_budget", 240, "tools")
    assert asked["usage"]["total_tokens"] == 240
    finished = app.invoke(Command(resume={"extend": 1000}), THREAD)
    assert finished["messages"][-1].content == "done"


def test_attach_needs_a_checkpointer_to_ask() -> None:
    builder = StateGraph(Count)
    builder.add_node("work", lambda state: state)
    builder.add_edge(START, "work")
    with pytest.raises(PolicyError, match="resumed after a person answers"):
        Supervisor(policies(ASK_AT_THREE_STEPS)).attach(builder.compile(), name="counter")


def test_a_limit_reached_inside_a_node_pauses_at_its_next_model_call() -> None:
    model = FakeChatModel(responses=[AIMessage("a thought")])
    called: list[str] = []

    class Notes(TypedDict):
        notes: list[str]

    def think(state: Notes) -> Notes:
        first = model.invoke("first thought")  # 120 tokens: past the budget of 100
        called.append("first")
        second = model.invoke("second thought")  # pauses here, before the call
        called.append("second")
        return {"notes": [str(first.content), str(second.content)]}

    builder = StateGraph(Notes)
    builder.add_node("think", think)
    builder.add_edge(START, "think")
    text = "- {name: budget, on_violation: ask, token_budget: {max_total_tokens: 100}}"
    app = Supervisor(policies(text)).attach(
        builder.compile(checkpointer=InMemorySaver()), name="thinker"
    )
    paused = app.invoke({"notes": []}, THREAD)
    asked = question(paused)
    assert (asked["at"], asked["usage"]["total_tokens"], called) == ("think", 120, ["first"])
    finished = app.invoke(Command(resume={"extend": 1000}), THREAD)
    # The node ran again from its start, as LangGraph reruns an interrupted node.
    assert finished == {"notes": ["a thought", "a thought"]}
    assert called == ["first", "first", "second"]
