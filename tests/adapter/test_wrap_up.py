"""on_violation: wrap_up: a run that reaches a limit lands softly, answering with what it has,
within an allowance, instead of being cancelled."""

from __future__ import annotations

import asyncio
from typing import Any, TypedDict

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph

from tests.graphs import policies
from watchdog import PolicyError, RunCancelled, Supervisor
from watchdog._core.policies import DEFAULT_WRAP_UP_MESSAGE
from watchdog.testing import FakeChatModel, capture_events, dangling_tool_calls

THREAD = {"configurable": {"thread_id": "t"}}
# Each model call reports 100 input and 20 output tokens: the second call passes 200.
BUDGET = """
- name: budget
  on_violation: wrap_up
  token_budget: {max_total_tokens: 200}
"""

ran: list[str] = []  # the tool calls that ran


@pytest.fixture(autouse=True)
def _no_tool_ran_yet() -> None:
    ran.clear()


@tool
def lookup(q: str) -> str:
    """Look something up."""
    ran.append(q)
    return f"found {q}"


def asks(call_id: str) -> AIMessage:
    return AIMessage("", tool_calls=[{"name": "lookup", "args": {"q": call_id}, "id": call_id}])


def agent(*answers: AIMessage, text: str = BUDGET) -> tuple[Any, FakeChatModel, Supervisor]:
    model = FakeChatModel(responses=list(answers), rejects_dangling_tool_calls=True)
    supervisor = Supervisor(policies(text))
    app = supervisor.attach(
        create_agent(model, [lookup], checkpointer=InMemorySaver()), name="agent"
    )
    return app, model, supervisor


def landings(events: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    names = ("wrap_up_started", "landed_softly", "run_cancelled", "run_finished")
    keep = ("policy", "kind", "llm_calls", "outcome", "node")
    return [
        (e["event"].removeprefix("watchdog."), {k: e[k] for k in keep if k in e})
        for e in events
        if e["event"].removeprefix("watchdog.") in names
    ]


def test_a_spent_token_budget_lands_with_the_final_answer() -> None:
    app, model, _ = agent(asks("a"), asks("b"), AIMessage("Here is what I found."))
    with capture_events() as events:
        final = app.invoke({"messages": [HumanMessage("research this")]}, THREAD)
    messages = final["messages"]
    assert messages[-1].content == "Here is what I found."
    assert ran == ["a"]  # b was asked for after the limit, and never ran
    cancelled_b = next(m for m in messages if isinstance(m, ToolMessage) and m.tool_call_id == "b")
    assert cancelled_b.status == "error"
    assert [m.content for m in messages if isinstance(m, HumanMessage)][-1] == (
        DEFAULT_WRAP_UP_MESSAGE
    )
    assert model.i == 3 % len(model.responses)  # three calls: one past the limit, allowed
    assert landings(events) == [
        (
            "wrap_up_started",
            {"policy": "budget", "kind": "token_budget", "llm_calls": 1, "node": None},
        ),
        ("landed_softly", {"policy": "budget", "kind": "token_budget", "llm_calls": 1}),
        ("run_finished", {"outcome": "completed"}),
    ]


def test_a_soft_landing_through_astream_streams_the_answer_too() -> None:
    app, _, _ = agent(asks("a"), asks("b"), AIMessage("Streamed answer."))

    async def main() -> list[Any]:
        return [
            chunk
            async for chunk in app.astream(
                {"messages": [HumanMessage("go")]}, THREAD, stream_mode="values"
            )
        ]

    chunks = asyncio.run(main())
    assert chunks[-1]["messages"][-1].content == "Streamed answer."
    assert ran == ["a"]


def test_a_model_that_asks_for_tools_past_its_allowance_is_cancelled() -> None:
    app, _, _ = agent(asks("a"), asks("b"), asks("c"))
    with capture_events() as events, pytest.raises(RunCancelled) as raised:
        app.invoke({"messages": [HumanMessage("research this")]}, THREAD)
    assert (raised.value.policy, raised.value.kind) == ("budget", "token_budget")
    assert ran == ["a"]
    assert [name for name, _ in landings(events)] == [
        "wrap_up_started",
        "run_cancelled",
        "run_finished",
    ]
    # The thread is usable: the calls that never ran are answered.
    assert dangling_tool_calls(app.get_state(THREAD).values["messages"]) == []


class Work(TypedDict):
    count: int
    summary: str


def looping_with_a_summary() -> Any:
    builder = StateGraph(Work)
    builder.add_node("work", lambda state: {"count": state["count"] + 1})
    builder.add_node("summarize", lambda state: {"summary": f"stopped at {state['count']}"})
    builder.add_edge(START, "work")
    builder.add_conditional_edges("work", lambda state: "work")
    builder.add_edge("summarize", END)
    return builder.compile(checkpointer=InMemorySaver())


def test_a_run_lands_at_the_node_its_policy_names_sync_and_async() -> None:
    text = """
- name: steps
  on_violation: wrap_up
  wrap_up: {node: summarize}
  step_count: {max_steps: 3}
"""
    app = Supervisor(policies(text)).attach(looping_with_a_summary(), name="looper")
    with capture_events() as events:
        final = app.invoke({"count": 0, "summary": ""}, THREAD)
    # Three steps ran; the fourth was stopped as it began, and the run went to summarize.
    assert final == {"count": 3, "summary": "stopped at 3"}
    assert [name for name, _ in landings(events)] == [
        "wrap_up_started",
        "landed_softly",
        "run_finished",
    ]
    final = asyncio.run(
        app.ainvoke({"count": 0, "summary": ""}, {"configurable": {"thread_id": "async"}})
    )
    assert final == {"count": 3, "summary": "stopped at 3"}


def test_attach_refuses_a_wrap_up_the_graph_cannot_land() -> None:
    no_messages = """
- name: steps
  on_violation: wrap_up
  step_count: {max_steps: 3}
"""
    with pytest.raises(PolicyError, match="has no messages channel"):
        Supervisor(policies(no_messages)).attach(looping_with_a_summary(), name="looper")
    missing_node = no_messages.replace(
        "on_violation: wrap_up", "on_violation: wrap_up\n  wrap_up: {node: nowhere}"
    )
    with pytest.raises(PolicyError, match="has no node 'nowhere'"):
        Supervisor(policies(missing_node)).attach(looping_with_a_summary(), name="looper")
    model = FakeChatModel(responses=[AIMessage("hi")])
    with pytest.raises(PolicyError, match="has no checkpointer"):
        Supervisor(policies(BUDGET)).attach(create_agent(model, [lookup]), name="agent")


def summarizing_twice(llm_calls: int) -> tuple[Any, list[str]]:
    """A loop stopped after two steps and landed at a node that calls the model twice,
    under an allowance of ``llm_calls``; and the calls that node got through."""
    model = FakeChatModel(responses=[AIMessage("a summary")])
    calls: list[str] = []

    def summarize(state: Work) -> dict[str, str]:
        calls.append("first")
        first = model.invoke("summarize")
        calls.append("second")
        model.invoke("and again")  # past an allowance of one call: refused
        calls.append("both")
        return {"summary": str(first.content)}

    builder = StateGraph(Work)
    builder.add_node("work", lambda state: {"count": state["count"] + 1})
    builder.add_node("summarize", summarize)
    builder.add_edge(START, "work")
    builder.add_conditional_edges("work", lambda state: "work")
    builder.add_edge("summarize", END)
    text = f"""
- name: steps
  on_violation: wrap_up
  wrap_up: {{node: summarize, llm_calls: {llm_calls}}}
  step_count: {{max_steps: 2}}
"""
    app = Supervisor(policies(text)).attach(
        builder.compile(checkpointer=InMemorySaver()), name="looper"
    )
    return app, calls


def test_a_landing_node_that_calls_the_model_past_its_allowance_is_cancelled() -> None:
    app, calls = summarizing_twice(llm_calls=1)
    with pytest.raises(RunCancelled) as raised:
        for _ in app.stream({"count": 0, "summary": ""}, THREAD):
            pass
    assert (raised.value.policy, calls) == ("steps", ["first", "second"])


def test_the_allowance_can_be_more_than_one_call() -> None:
    app, calls = summarizing_twice(llm_calls=2)
    with capture_events() as events:
        final = app.invoke({"count": 0, "summary": ""}, THREAD)
    assert (final["summary"], calls) == ("a summary", ["first", "second", "both"])
    assert [f.get("llm_calls") for n, f in landings(events) if n == "landed_softly"] == [2]
