"""What supervising costs a run, against bare LangGraph and against what users would pick
instead, every variant of a graph timed interleaved in this process (CPU time).

- Per step: the trivial graph bare, as its floor (the same copy with probes in its nodes that
  find no run, and no callback handler: what a probe design cannot go under), the floor
  with probes calling a run that only counts (what any per-node work starts from),
  supervised with all five kinds, and beside them LangGraph's own ``step_timeout`` and a
  hand-written callback guard.
- Per kind: the loop kind alone, over a supervisor with no policies.
- Per run: a one-step graph, where the fixed cost of starting and ending a run is all there is,
  and the same with its events dropped before structlog renders them.
- A ReAct agent (``create_agent``), supervised and with LangChain's call-limit middleware.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import statistics
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import structlog
from langchain.agents import create_agent
from langchain.agents.middleware import ModelCallLimitMiddleware, ToolCallLimitMiddleware
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.pregel import Pregel
from prometheus_client import CollectorRegistry

from tests.graphs import scripted, search, tool_call
from watchdog import Supervisor, load_policy_text
from watchdog._adapter.callbacks import running
from watchdog._adapter.probe import probed_nodes

from .common import ALL_KINDS, Row, interleaved, ratio_row, trivial

TOOL_CALLS = 10
NO_POLICIES = "version: 1\npolicies: []\n"
LOOP_ONLY = """\
version: 1
defaults: {warn_at: null}
policies:
  - {name: loops, loop: {max_repeats: 3, max_tool_repeats: 3, max_cycle_repeats: 1000000}}
"""
FAR = 1_000_000  # a limit no benchmark run reaches


def supervisor(policies: str) -> Supervisor:
    return Supervisor(load_policy_text(policies), registry=CollectorRegistry())


def floor(graph: Pregel[Any, Any, Any, Any]) -> Any:
    """The graph as a supervised copy runs it, with nothing watching: a probe in each node
    (which finds no run and calls the node) and no callback handler."""
    nodes = probed_nodes(graph, reports_itself=lambda subgraph: False)
    assert nodes is not None
    return graph.copy({"nodes": nodes})


class _Counting(BaseCallbackHandler):
    """A run's handler, as LangChain's configure hook adds it, whose run only counts the
    nodes its probes tell it of."""

    run_inline = True
    ignore_chain = ignore_llm = ignore_agent = ignore_retriever = True
    ignore_retry = ignore_custom_event = ignore_chat_model = True

    def __init__(self) -> None:
        self.run = self
        self.nodes = 0

    def node_starting(self, name: str, metadata: Any, inputs: Any, config: Any = None) -> str:
        self.nodes += 1
        return name

    def node_ended(self, key: str) -> None:
        pass


class CountingFloor:
    """The floor, its probes finding a run that only counts: a handler where the watchdog's
    is, and one call each way a node. What any work of the watchdog's a node starts from."""

    checkpointer = None

    def __init__(self, graph: Pregel[Any, Any, Any, Any]) -> None:
        self.graph = floor(graph)

    def invoke(self, input: Any, config: dict[str, Any]) -> Any:
        context = contextvars.copy_context()
        context.run(running.set, _Counting())  # type: ignore[arg-type]
        return context.run(self.graph.invoke, input, config)


class _Guard:
    """A step guard as users write one: count LangGraph's steps from chain callbacks."""

    raise_error = True

    def __init__(self) -> None:
        self.step = 0

    def _saw(self, metadata: dict[str, Any] | None) -> None:
        step = (metadata or {}).get("langgraph_step")
        if step is not None and step > self.step:
            self.step = step
            if step > FAR:
                msg = "too many steps"
                raise RuntimeError(msg)


class SyncGuard(_Guard, BaseCallbackHandler):
    def on_chain_start(self, serialized: Any, inputs: Any, **kwargs: Any) -> None:
        self._saw(kwargs.get("metadata"))


class AsyncGuard(_Guard, AsyncCallbackHandler):
    async def on_chain_start(self, serialized: Any, inputs: Any, **kwargs: Any) -> None:
        self._saw(kwargs.get("metadata"))


def invoke(target: Any, is_async: bool, config: dict[str, Any], guard: type[_Guard] | None) -> None:
    # A thread of its own per run, deleted after: InMemorySaver finds a thread's latest
    # checkpoint by looking through all of them, and what it keeps would grow the heap the
    # garbage collector walks, slowing every later run down.
    thread_id = str(uuid.uuid4())
    config = {**config, "configurable": {"thread_id": thread_id}}
    if guard is not None:
        config["callbacks"] = [guard()]
    if is_async:
        asyncio.run(target.ainvoke({"n": 0}, config))
    else:
        target.invoke({"n": 0}, config)
    if target.checkpointer:
        target.checkpointer.delete_thread(thread_id)


def rows(quick: bool) -> Iterator[Row]:
    steps, repeats = (500, 5) if quick else (2000, 9)
    all_kinds, loop_only, none = (
        supervisor(ALL_KINDS),
        supervisor(LOOP_ONLY),
        supervisor(NO_POLICIES),
    )
    try:
        for is_async in (False, True):
            for checkpointer in (False, True):
                yield from per_step(steps, repeats, is_async, checkpointer, all_kinds)
        yield from loop_kind(steps, repeats, loop_only, none)
        yield from per_run(repeats, all_kinds, none)
        yield from react(repeats, all_kinds)
    finally:
        for each in (all_kinds, loop_only, none):
            each.close()


def per_step(
    steps: int, repeats: int, is_async: bool, checkpointer: bool, watchdog: Supervisor
) -> Iterator[Row]:
    graph = trivial(steps, is_async=is_async, checkpointer=checkpointer)
    config = {"recursion_limit": steps + 10}
    targets: dict[str, tuple[Any, type[_Guard] | None]] = {
        "bare": (graph, None),
        "floor": (floor(graph), None),
        "watchdog": (watchdog.attach(graph, name="bench"), None),
    }
    if not checkpointer and not is_async:
        targets["counting"] = (CountingFloor(graph), None)
    if not checkpointer:  # the alternatives, once a mode
        targets["step_timeout"] = (graph.copy({"step_timeout": 3600.0}), None)
        # The guard each mode's users reach for first, and LangChain runs the slow way:
        # a sync handler off the loop in an async graph, an async one on a loop of its own
        # per event in a sync graph.
        targets["guard"] = (graph, SyncGuard if is_async else AsyncGuard)
    times = interleaved(
        {
            name: functools.partial(invoke, target, is_async, config, guard)
            for name, (target, guard) in targets.items()
        },
        repeats,
    )
    bare = times["bare"]
    saver = "InMemorySaver" if checkpointer else "no checkpointer"
    what = f"{'async' if is_async else 'sync'}, {saver}"
    yield ratio_row(f"overhead, {what}, {steps} steps", over(times["watchdog"], bare), "<= 1.02x")
    yield ratio_row(
        "  the floor: probes that find no run, no handler", over(times["floor"], bare), ""
    )
    yield ratio_row(
        "  the watchdog / the floor", over(times["watchdog"], times["floor"]), "<= 1.01x"
    )
    if "counting" in times:
        yield ratio_row(
            "  the floor, probes calling a run that only counts nodes",
            over(times["counting"], bare),
            "",
        )
    if "guard" in times:
        yield ratio_row(
            "  LangGraph's own step_timeout, for comparison", over(times["step_timeout"], bare), ""
        )
        handler = "BaseCallbackHandler" if is_async else "AsyncCallbackHandler"
        yield ratio_row(f"  a hand-written {handler} step guard", over(times["guard"], bare), "")


def loop_kind(steps: int, repeats: int, loop_only: Supervisor, none: Supervisor) -> Iterator[Row]:
    """The loop kind alone (every node input fingerprinted, a repeat window, a cycle
    tracker), and its own cost: over a supervisor whose runs have no policy."""
    graph = trivial(steps, is_async=False, checkpointer=False)
    config = {"recursion_limit": steps + 10}
    times = interleaved(
        {
            "bare": functools.partial(invoke, graph, False, config, None),
            "none": functools.partial(
                invoke, none.attach(graph, name="bench"), False, config, None
            ),
            "loop": functools.partial(
                invoke, loop_only.attach(graph, name="bench"), False, config, None
            ),
        },
        repeats,
    )
    yield ratio_row(
        f"the loop kind alone, sync, {steps} steps", over(times["loop"], times["bare"]), ""
    )
    yield per_unit_row(
        "  its own cost, over no policies", times["loop"], times["none"], steps, "a step"
    )


def per_run(repeats: int, all_kinds: Supervisor, none: Supervisor) -> Iterator[Row]:
    """A one-step graph run many times: starting and ending a run is all it does."""
    graph = trivial(1, is_async=False, checkpointer=False)
    runs = 200

    def many(target: Any) -> Callable[[], None]:
        def call() -> None:
            for _ in range(runs):
                target.invoke({"n": 0})

        return call

    supervised = all_kinds.attach(graph, name="bench")
    times = interleaved(
        {
            "bare": many(graph),
            "none": many(none.attach(graph, name="bench")),
            "watchdog": many(supervised),
            "unrendered": _events_dropped(many(supervised)),
        },
        repeats,
    )
    bare = times["bare"]
    yield per_unit_row(
        "per-run cost, a 1-step sync graph, all five kinds", times["watchdog"], bare, runs, "a run"
    )
    yield ratio_row("  the same run, supervised / bare", over(times["watchdog"], bare), "")
    yield per_unit_row("  with no policies", times["none"], bare, runs, "a run")
    yield per_unit_row(
        "  all five kinds, events dropped before structlog renders them",
        times["unrendered"],
        bare,
        runs,
        "a run",
    )


def _drop(logger: Any, method: str, event: Any) -> Any:
    raise structlog.DropEvent


def _events_dropped(call: Callable[[], None]) -> Callable[[], None]:
    """``call`` with structlog dropping every event first: what rendering them costs."""

    def quietly() -> None:
        rendering = structlog.get_config()
        structlog.configure(processors=[_drop])
        try:
            call()
        finally:
            structlog.configure(**rendering)

    return quietly


def react(repeats: int, watchdog: Supervisor) -> Iterator[Row]:
    """``create_agent`` on a fake model: ten searches, then an answer. Supervised, every LLM
    and tool call reaches the watchdog as well; LangChain's own limits are middleware."""
    answers = [
        *(tool_call(f"query {i}", f"call-{i}") for i in range(TOOL_CALLS)),
        AIMessage("done"),
    ]
    bare = create_agent(scripted(*answers), [search])
    limits: list[Any] = [  # each typed with the state it adds to the agent's
        ModelCallLimitMiddleware(run_limit=FAR),
        ToolCallLimitMiddleware(run_limit=FAR),
    ]
    limited = create_agent(scripted(*answers), [search], middleware=limits)
    start = {"messages": [HumanMessage("search ten times")]}
    times = interleaved(
        {
            "bare": functools.partial(bare.invoke, start),
            "watchdog": functools.partial(watchdog.attach(bare, name="react").invoke, start),
            "middleware": functools.partial(limited.invoke, start),
        },
        repeats * 3,  # a short run: more of them
    )
    what = f"ReAct agent (create_agent), {TOOL_CALLS} tool calls, sync"
    yield ratio_row(f"overhead, {what}", over(times["watchdog"], times["bare"]), "<= 1.05x")
    yield ratio_row(
        "  LangChain's Model/ToolCallLimitMiddleware, for comparison",
        over(times["middleware"], times["bare"]),
        "",
    )


def over(times: list[float], base: list[float]) -> list[float]:
    return [t / b for t, b in zip(times, base, strict=True)]


def per_unit_row(name: str, times: list[float], base: list[float], units: int, unit: str) -> Row:
    extra = [(t - b) / units * 1e6 for t, b in zip(times, base, strict=True)]
    return Row(
        name,
        f"{statistics.median(extra):+.1f} µs {unit}",
        f"{min(extra):+.1f} to {max(extra):+.1f}",
        "",
    )
