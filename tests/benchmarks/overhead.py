"""Per-step overhead: supervised / bare on the same graph, runs interleaved."""

from __future__ import annotations

import asyncio
import functools
import uuid
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage
from prometheus_client import CollectorRegistry

from tests.graphs import react_agent, scripted, tool_call
from watchdog import Supervisor, load_policy_text

from .common import ALL_KINDS, Row, ratio_row, timed, trivial

TOOL_CALLS = 10


def run(target: Any, config: dict[str, Any], *, is_async: bool) -> None:
    # A thread of its own per run, deleted after: InMemorySaver finds a thread's latest
    # checkpoint by looking through all of them, and what it keeps would grow the heap the
    # garbage collector walks, slowing every later run down.
    thread_id = str(uuid.uuid4())
    config = {**config, "configurable": {"thread_id": thread_id}}
    if is_async:
        asyncio.run(target.ainvoke({"n": 0}, config))
    else:
        target.invoke({"n": 0}, config)
    if target.checkpointer:
        target.checkpointer.delete_thread(thread_id)


def rows(quick: bool) -> list[Row]:
    steps, repeats = (500, 3) if quick else (2000, 7)
    supervisor = Supervisor(load_policy_text(ALL_KINDS), registry=CollectorRegistry())
    found = []
    for is_async in (False, True):
        for checkpointer in (False, True):
            graph = trivial(steps, is_async=is_async, checkpointer=checkpointer)
            app = supervisor.attach(graph, name="bench")
            config = {"recursion_limit": steps + 10}

            run(graph, config, is_async=is_async)
            run(app, config, is_async=is_async)  # warm up both
            ratios = []
            for _ in range(repeats):
                bare = timed(functools.partial(run, graph, config, is_async=is_async))
                watched = timed(functools.partial(run, app, config, is_async=is_async))
                ratios.append(watched / bare)
            kind = "async" if is_async else "sync"
            saver = "InMemorySaver" if checkpointer else "no checkpointer"
            found.append(ratio_row(f"overhead, {kind}, {saver}, {steps} steps", ratios, "<= 1.05x"))
    found.append(react(supervisor, repeats))
    supervisor.close()
    return found


def react(supervisor: Supervisor, repeats: int) -> Row:
    """A ReAct agent on a fake model: ten searches, then an answer; every LLM and tool call
    goes through the watchdog's callback handler as well."""
    answers = [tool_call(f"query {i}", f"call-{i}") for i in range(TOOL_CALLS)]
    graph = react_agent(scripted(*answers, AIMessage("done")))
    app = supervisor.attach(graph, name="react")
    start = {"messages": [HumanMessage("search ten times")]}
    graph.invoke(start)
    app.invoke(start)
    ratios = []
    for _ in range(repeats * 3):  # a short run: more of them
        bare = timed(functools.partial(graph.invoke, start))
        watched = timed(functools.partial(app.invoke, start))
        ratios.append(watched / bare)
    return ratio_row(f"overhead, ReAct agent, {TOOL_CALLS} tool calls, sync", ratios, "<= 1.05x")
