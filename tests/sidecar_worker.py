"""An agent worker process for the sidecar tests: ``python -m tests.sidecar_worker NAME PLAN``.

It connects to the sidecar named by ``WATCHDOG_SIDECAR_URL`` and ``WATCHDOG_SIDECAR_TOKEN``,
runs the supervised graphs its JSON plan asks for, and prints one JSON line per finished
run (with the wall-clock time it ended), then ``{"done": ...}`` once it has flushed its events.

Plan keys: ``hang`` (run ids of runs that hang until cancelled), ``loops`` (how many endless
loops for the step policy to stop), ``slow`` (run ids of slow endless loops), ``chat`` (how
many ReAct runs that complete, using tokens), ``steady`` (seconds of short runs that
complete, one after another).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from typing import Any

from langchain_core.messages import AIMessage
from langgraph.graph import END, START, StateGraph

from tests.graphs import Bodies, Counter, endless, hanging, react_agent, scripted, tool_call
from watchdog import RunCancelled, Supervisor


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
    supervisor: Supervisor, graph: Any, name: str, run_id: uuid.UUID, graph_input: Any = None
) -> None:
    app = supervisor.attach(graph, name=name)
    policy: str | None = None
    reason: str | None = None
    try:
        await app.ainvoke(graph_input or {"count": 0}, {"run_id": run_id})
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


async def steady(supervisor: Supervisor, seconds: float) -> None:
    end = time.monotonic() + seconds
    graph = stepping(0.005, steps=2)
    while time.monotonic() < end:
        await one(supervisor, graph, "steady", uuid.uuid4())


async def main(name: str, plan: dict[str, Any]) -> None:
    supervisor = Supervisor.connect(worker=name)
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
    if "steady" in plan:
        runs.append(steady(supervisor, plan["steady"]))
    say(ready=name)
    await asyncio.gather(*runs)
    supervisor.close()  # flushes what is buffered
    dropped = supervisor.metrics.registry.get_sample_value("watchdog_sidecar_events_dropped_total")
    say(done=name, dropped=dropped)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], json.loads(sys.argv[2])))
