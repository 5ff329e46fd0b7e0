"""Loop detection on a large state: the cost of fingerprinting a 1 MB node input.

``max_repeats`` fingerprints the input of every node run, so a run with a long message history
pays for it at every node start. The state is what a long ReAct run holds: 100 rounds of a
question, a tool call and a tool's answer (300 messages), a work list of 150 tasks and a
summary, about 1 MB of text. Two cases: the messages were seen before (a node start in a
running graph, where only the newest message is new) and every message new. A LangGraph
step that adds one message to the same state, without the watchdog, is timed beside them
for scale.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from watchdog._core.fingerprint import fingerprint

from .common import Row

ROUNDS = 100
TASKS = 150
WORDS = ["order", "refund", "customer", "search", "result", "policy", "shipping", "invoice"]


def _text(chooser: random.Random, size: int) -> str:
    words: list[str] = []
    length = 0
    while length < size:
        word = chooser.choice(WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)


def big_state(seed: int = 7) -> dict[str, Any]:
    chooser = random.Random(seed)
    messages: list[BaseMessage] = []
    for i in range(ROUNDS):
        call = {"name": "search", "args": {"query": _text(chooser, 60), "page": i}, "id": f"c{i}"}
        messages += [
            HumanMessage(_text(chooser, 1000), id=f"h{i}"),
            AIMessage("", id=f"a{i}", tool_calls=[call]),
            ToolMessage(_text(chooser, 7000), id=f"t{i}", tool_call_id=f"c{i}"),
        ]
    work = [
        {
            "task": i,
            "title": _text(chooser, 80),
            "notes": _text(chooser, 400),
            "done": i % 3 == 0,
            "tags": ["billing", "urgent"],
        }
        for i in range(TASKS)
    ]
    return {"messages": messages, "work": work, "step": 0, "summary": _text(chooser, 2000)}


def text_size(state: dict[str, Any]) -> int:
    messages = sum(len(str(m.content)) for m in state["messages"])
    work = sum(len(t["title"]) + len(t["notes"]) for t in state["work"])
    return messages + work + len(state["summary"])


def per_call_us(call: Any, states: list[dict[str, Any]]) -> float:
    started = time.perf_counter()
    for state in states:
        call(state)
    return 1e6 * (time.perf_counter() - started) / len(states)


class Chat(TypedDict):
    messages: Annotated[list[BaseMessage], add_messages]
    work: list[dict[str, Any]]
    step: int
    summary: str


def langgraph_step_us(steps: int) -> float:
    """A step that adds one message to the big state, per step, no checkpointer."""

    def respond(state: Chat) -> dict[str, Any]:
        return {"messages": [AIMessage("ok", id=f"r{state['step']}")], "step": state["step"] + 1}

    builder = StateGraph(Chat)
    builder.add_node("respond", respond)
    builder.add_edge(START, "respond")
    builder.add_conditional_edges("respond", lambda s: END if s["step"] >= steps else "respond")
    graph = builder.compile()
    state: Any = big_state()
    started = time.perf_counter()
    graph.invoke(state, {"recursion_limit": steps + 10})
    return 1e6 * (time.perf_counter() - started) / steps


def _row(name: str, figures: list[float], target: str) -> Row:
    return Row(
        name,
        f"{statistics.median(figures):.0f} us",
        f"{min(figures):.0f}-{max(figures):.0f}",
        target,
    )


def rows(quick: bool) -> list[Row]:
    repeats, calls = (5, 20) if quick else (21, 50)
    state = big_state()
    size = f"{text_size(state) / 1e6:.2f} MB, {len(state['messages'])} messages, {TASKS} tasks"
    fingerprint(state)  # its messages are now known, as in a running graph
    seen = [per_call_us(fingerprint, [state] * calls) for _ in range(repeats)]
    fresh = []
    for _ in range(repeats):
        states = [big_state() for _ in range(min(calls, 10))]  # new objects, the same text
        fresh.append(per_call_us(fingerprint, states))
    steps = [langgraph_step_us(20 if quick else 50) for _ in range(max(3, repeats // 4))]
    return [
        _row(f"fingerprint of a {size}, messages seen before", seen, "< a LangGraph step"),
        _row("the same, every message new", fresh, ""),
        _row("a LangGraph step adding a message to that state, for scale", steps, ""),
    ]
