"""Real compiled LangGraph graphs for the tests; only the LLM is fake."""

from __future__ import annotations

import asyncio
import operator
import textwrap
from collections.abc import Callable
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.types import Send

from watchdog import PolicySet, RunCancelled, Supervisor, load_policy_text
from watchdog.testing import FakeChatModel, FakeClock, capture_events


def policies(text: str) -> PolicySet:
    """A policy set from a YAML ``policies:`` list; warnings off, no grace."""
    body = textwrap.indent(textwrap.dedent(text), "  ")
    header = "version: 1\ndefaults: {warn_at: null, grace_seconds: 0}\npolicies:\n"
    return load_policy_text(header + body, "test.yaml")


class Counter(TypedDict):
    count: int


class Bodies:
    """Counts node bodies as they really run."""

    def __init__(self) -> None:
        self.ran = 0


def endless(
    bodies: Bodies,
    *,
    is_async: bool,
    progress: bool = True,
    clock: FakeClock | None = None,
    model: FakeChatModel | None = None,
    checkpointer: bool = True,
) -> Any:
    """The seed's endless loop: ``work`` routes back to itself forever.

    With ``progress=False`` it returns its input unchanged (no progress); a ``clock`` moves
    one second per body; a ``model`` is called once per body.
    """

    def body(state: Counter) -> dict[str, int]:
        bodies.ran += 1
        if clock is not None:
            clock.advance(1)
        if model is not None:
            model.invoke("go on")
        return {"count": state["count"] + 1} if progress else {}

    async def async_body(state: Counter) -> dict[str, int]:
        bodies.ran += 1
        if clock is not None:
            clock.advance(1)
        if model is not None:
            await model.ainvoke("go on")
        return {"count": state["count"] + 1} if progress else {}

    return one_node(async_body if is_async else body, loop=True, checkpointer=checkpointer)


def one_node(body: Any, *, loop: bool = False, checkpointer: bool = False) -> Any:
    """A graph of one node, ``work``, running ``body``; with ``loop`` it routes back to
    itself forever."""
    builder = StateGraph(Counter)
    builder.add_node("work", body)
    builder.add_edge(START, "work")
    if loop:
        builder.add_conditional_edges("work", lambda state: "work")
    return builder.compile(checkpointer=InMemorySaver() if checkpointer else None)


def hanging() -> Any:
    """One node that never returns."""

    async def hang(state: Counter) -> dict[str, int]:
        await asyncio.Event().wait()
        return {}

    return one_node(hang)


class Fan(TypedDict):
    items: Annotated[list[int], operator.add]


def fan_out(width: int) -> Any:
    """``plan`` sends ``width`` parallel ``work`` tasks, which join at ``done``."""
    builder = StateGraph(Fan)
    builder.add_node("plan", lambda state: {})
    builder.add_node("work", lambda item: {"items": [item["n"]]})
    builder.add_node("done", lambda state: {})
    builder.add_edge(START, "plan")
    builder.add_conditional_edges(
        "plan", lambda state: [Send("work", {"n": i}) for i in range(width)]
    )
    builder.add_edge("work", "done")
    builder.add_edge("done", END)
    return builder.compile()


def inner_loop(bodies: Bodies, steps: int) -> Any:
    """A graph whose one node, ``inner``, counts up until ``count`` reaches ``steps``."""

    def inner(state: Counter) -> dict[str, int]:
        bodies.ran += 1
        return {"count": state["count"] + 1}

    builder = StateGraph(Counter)
    builder.add_node("inner", inner)
    builder.add_edge(START, "inner")
    builder.add_conditional_edges("inner", lambda s: END if s["count"] >= steps else "inner")
    return builder.compile()


def with_subgraph(bodies: Bodies, *, inner_steps: int, called: bool = False) -> Any:
    """A root graph whose middle node is a subgraph looping ``inner_steps`` times: the
    compiled subgraph itself, or a function that ``called`` it."""
    builder = StateGraph(Counter)
    builder.add_node("before", lambda state: {})
    subgraph = inner_loop(bodies, inner_steps)

    def call_subgraph(state: Counter) -> Any:
        return subgraph.invoke(state)

    builder.add_node("sub", call_subgraph if called else subgraph)
    builder.add_node("after", lambda state: {})
    builder.add_edge(START, "before")
    builder.add_edge("before", "sub")
    builder.add_edge("sub", "after")
    builder.add_edge("after", END)
    return builder.compile()


class Chat(TypedDict):
    messages: Annotated[list[BaseMessage], add_messages]


@tool
def search(query: str) -> str:
    """Search the web."""
    return f"results for {query}"


def tool_call(query: str, call_id: str = "call") -> AIMessage:
    return AIMessage("", tool_calls=[{"name": "search", "args": {"query": query}, "id": call_id}])


def react_agent(model: FakeChatModel) -> Any:
    """A hand-built ReAct agent: agent -> tools -> agent ... until no tool is called."""

    def agent(state: Chat) -> dict[str, list[BaseMessage]]:
        return {"messages": [model.invoke(state["messages"])]}

    builder = StateGraph(Chat)
    builder.add_node("agent", agent)
    builder.add_node("tools", ToolNode([search]))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile()


def scripted(
    *answers: AIMessage, input_tokens: int = 100, output_tokens: int = 20
) -> FakeChatModel:
    return FakeChatModel(
        responses=list(answers), input_tokens=input_tokens, output_tokens=output_tokens
    )


Call = Callable[..., Any]


def cancelled_and_completed(supervisor: Supervisor) -> list[dict[str, Any]]:
    """The events of two runs: a loop its step limit cancels (graph ``looper``), and a ReAct
    agent that calls a tool and completes (graph ``agent``)."""
    looping = supervisor.attach(endless(Bodies(), is_async=False), name="looper")
    agent = supervisor.attach(
        react_agent(scripted(tool_call("one"), AIMessage("done"))), name="agent"
    )
    with capture_events() as events:
        with pytest.raises(RunCancelled):
            looping.invoke({"count": 0}, {"configurable": {"thread_id": "t"}})
        agent.invoke({"messages": [("user", "hi")]})
    return events
