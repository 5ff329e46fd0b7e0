"""An agent worker process for the sidecar tests: ``python -m tests.sidecar_worker NAME PLAN``.

It connects to the sidecar named by ``WATCHDOG_SIDECAR_URL`` and ``WATCHDOG_SIDECAR_TOKEN``,
runs the supervised graphs its JSON plan asks for, and prints one JSON line per finished
run (with the wall-clock time it ended), then ``{"done": ...}`` once it has flushed its events.

Plan keys: ``worker`` (the worker's name, when it is not NAME: two workers may share one),
``hang`` (run ids of runs that hang until cancelled), ``loops`` (how many endless
loops for the step policy to stop), ``slow`` (run ids of slow endless loops), ``chat`` (how
many ReAct runs that complete, using tokens), ``spend`` (``{"tenant": ..., "runs": n}``:
runs of a ReAct agent that searches for ever, under that tenant's metadata), ``steady``
(seconds of short runs that complete, one after another; null: until stdin ends; with
``tenant``, ReAct runs that spend tokens under that tenant's metadata),
``flood`` (events to push through the
link per round, no graphs: see ``flood``).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from langchain_core.messages import AIMessage
from langgraph.graph import END, START, StateGraph

from tests.graphs import Bodies, Counter, endless, hanging, react_agent, scripted, tool_call
from watchdog import Finding, RunCancelled, Supervisor
from watchdog._sinks import schema


def say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def stepping(seconds: float, steps: int | None) -> Any:
    """A graph whose one node takes ``seconds`` and routes back to itself ``steps`` times
    (forever when None)."""

    async def step(state: Counter) -> dict[str, int]:
        await asyncio.sleep(seconds)
        return {"count": state["count"] + 1}

    def route(state: Counter) -> str:
        return END if steps is not None and state["count"] >= steps else "step"

    builder = StateGraph(Counter)
    builder.add_node("step", step)
    builder.add_edge(START, "step")
    builder.add_conditional_edges("step", route)
    return builder.compile()


async def one(
    supervisor: Supervisor,
    graph: Any,
    name: str,
    run_id: uuid.UUID,
    graph_input: Any = None,
    *,
    metadata: dict[str, Any] | None = None,
) -> None:
    app = supervisor.attach(graph, name=name)
    policy: str | None = None
    reason: str | None = None
    try:
        await app.ainvoke(
            graph_input or {"count": 0}, {"run_id": run_id, "metadata": metadata or {}}
        )
    except RunCancelled as cancelled:
        outcome, policy, reason = "cancelled", cancelled.policy, cancelled.reason
    except Exception as error:
        outcome, reason = "failed", repr(error)
    else:
        outcome = "completed"
    say(
        run_id=str(run_id),
        graph=name,
        outcome=outcome,
        policy=policy,
        reason=reason,
        at=time.time(),
    )


async def steady(supervisor: Supervisor, seconds: float | None, tenant: str | None = None) -> None:
    """Short runs one after another, for ``seconds``, or (None) until stdin ends; with a
    ``tenant``, each a ReAct run of two model calls (240 tokens) under its metadata."""
    end = None if seconds is None else time.monotonic() + seconds
    ended = threading.Event()

    def read_to_the_end() -> None:
        sys.stdin.read()
        ended.set()

    if end is None:
        threading.Thread(target=read_to_the_end, daemon=True).start()
    graph = stepping(0.005, steps=2)
    while not ended.is_set() and (end is None or time.monotonic() < end):
        if tenant is None:
            await one(supervisor, graph, "steady", uuid.uuid4())
            continue
        answering = react_agent(scripted(tool_call("q", "c1"), AIMessage("done")))
        messages = {"messages": [("user", "go")]}
        await one(
            supervisor, answering, "spend", uuid.uuid4(), messages, metadata={"tenant": tenant}
        )


POLICY_NAMES = ["wall", "steps", "loops", "tokens", "rate"]


def run_events(run_id: str, graph: str, *, cancelled: bool) -> list[dict[str, Any]]:
    """What one run tells its sidecar, made with the event schema the supervisor uses: a
    completed run sends two events, a run cancelled by its step limit five."""
    ids = {"run_id": run_id, "thread_id": f"thread-{run_id[-6:]}"}
    # Runs differ only in their ids: the schema makes a graph's records once, so a worker
    # flooding its sidecar spends its CPU sending events rather than making them.
    return [{**record, **ids} for record in _run_records(graph, cancelled)]


@functools.cache
def _run_records(graph: str, cancelled: bool) -> tuple[dict[str, Any], ...]:
    run: dict[str, Any] = {"run_id": "", "thread_id": "", "graph": graph}
    events: list[schema.Event] = [schema.RunStarted(**run, policies=POLICY_NAMES)]
    if cancelled:
        finding = Finding(
            policy="steps",
            kind="step_count",
            key="max_steps",
            mode="enforce",
            reason="The run began step 12, but policy 'steps' allows at most 11 steps.",
            observed=12,
            limit=11,
            step=12,
            node="agent",
        )
        events += [
            schema.Violation(**run, **finding.fields()),
            schema.DrainRequested(
                **run,
                policy=finding.policy,
                kind=finding.kind,
                reason=finding.reason,
                step=finding.step,
                grace_seconds=5.0,
            ),
            schema.RunCancelled(
                **run,
                **finding.fields(),
                phase="drained",
                also=[],
                latency_s=0.000412,
                elapsed_s=1.234567,
                steps=12,
                tokens=1830,
            ),
        ]
    events.append(
        schema.RunFinished(
            **run,
            outcome="cancelled" if cancelled else "completed",
            error=None,
            elapsed_s=1.234567,
            steps=12,
            tokens=1830,
            input_tokens=1500,
            output_tokens=330,
        )
    )
    return tuple(event.record() for event in events)


def flood_events(name: str, round_number: int) -> Iterator[dict[str, Any]]:
    """Endless events of runs one after another; one run in ten is cancelled."""
    prefix = uuid.uuid5(uuid.NAMESPACE_URL, f"{name}/{round_number}").hex[:23]
    for index in itertools.count():
        run_id = f"{prefix}-{index:012d}"  # as long as a uuid, cheaper to make
        yield from run_events(run_id, "support-bot", cancelled=index % 10 == 9)


def flood(supervisor: Supervisor, name: str, count: int) -> None:
    """For each line read on stdin, push ``count`` events through the real link, as fast as
    it takes them; say when the first went in.

    Events go in through the listener the link hears every watchdog event with, and out
    through its buffer and batch POSTs, as a busy worker's would. The buffer is bounded and
    drops what does not fit, so while it is full this producer waits (sleeping 1 ms at a time,
    so it does not take the CPU the link and the sidecar need): what is timed is how fast
    events are taken, never how fast they can be dropped. Each round reports how long it
    waited, and the drops counted so far (none, if the pacing holds).
    """
    link = supervisor.link
    assert link is not None
    for round_number, _ in enumerate(sys.stdin):
        events = flood_events(name, round_number)
        waited = 0.0
        first_sent = time.time()
        for event in itertools.islice(events, count):
            if link.buffered >= link.max_buffer:
                paused = time.perf_counter()
                while link.buffered >= link.max_buffer:
                    time.sleep(0.001)
                waited += time.perf_counter() - paused
            link.enqueue(event)
        say(
            flooded=name,
            round=round_number,
            first_sent=first_sent,
            waited_s=round(waited, 3),
            dropped=dropped(supervisor),
        )


def dropped(supervisor: Supervisor) -> float | None:
    return supervisor.metrics.registry.get_sample_value("watchdog_sidecar_events_dropped_total")


async def main(name: str, plan: dict[str, Any]) -> None:
    supervisor = Supervisor.connect(worker=plan.get("worker", name))
    runs = [one(supervisor, hanging(), "hang", uuid.UUID(r)) for r in plan.get("hang", [])]
    runs += [
        one(supervisor, endless(Bodies(), is_async=True, checkpointer=False), "loop", uuid.uuid4())
        for _ in range(plan.get("loops", 0))
    ]
    runs += [
        one(supervisor, stepping(0.01, steps=None), "slow", uuid.UUID(r))
        for r in plan.get("slow", [])
    ]
    runs += [
        one(
            supervisor,
            react_agent(scripted(tool_call("q"), AIMessage("done"))),
            "chat",
            uuid.uuid4(),
            {"messages": [("user", "hi")]},
        )
        for _ in range(plan.get("chat", 0))
    ]
    spend = plan.get("spend", {})
    runs += [
        one(
            supervisor,
            react_agent(scripted(*(tool_call(f"q{i}", f"c{i}") for i in range(200)))),
            "spend",
            uuid.uuid4(),
            {"messages": [("user", "research")]},
            metadata={"tenant": spend["tenant"]},
        )
        for _ in range(spend.get("runs", 0))
    ]
    if "steady" in plan:
        runs.append(steady(supervisor, plan["steady"], plan.get("tenant")))
    say(ready=name)
    if "flood" in plan:
        flood(supervisor, name, plan["flood"])
    await asyncio.gather(*runs)
    supervisor.close()  # flushes what is buffered
    say(done=name, dropped=dropped(supervisor))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], json.loads(sys.argv[2])))
