"""The program of ../shared/seeds/cleanup-after-cancel.txt, supervised.

The user's work_stage catches the cancellation and returns Command(goto="cleanup_stage");
plain LangGraph never runs cleanup_stage after a hard cancel. Under the watchdog, a
wall_time policy with ``cleanup_node: cleanup_stage`` routes the cancelled run there.
The program is the seed's, but for two things: it is supervised, and the graph has a
checkpointer (a cleanup node resumes the run from its last checkpoint). Its seconds are
hundredths, so the test is quick.
"""

from __future__ import annotations

import asyncio
from asyncio import CancelledError
from typing import Any, TypedDict

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.constants import END, START
from langgraph.graph import StateGraph
from langgraph.types import Command, StreamWriter
from pydantic import BaseModel, Field

from tests.graphs import policies
from watchdog import PolicyError, RunCancelled, Supervisor
from watchdog.testing import capture_events

TICK = 0.01  # the seed's asyncio.sleep(1), scaled down


class GraphState(BaseModel):
    sleep_seconds: int = Field(..., description="sleep seconds", gt=0)
    result: str | None = Field(None, description="result")


async def work_stage(state: GraphState, writer: StreamWriter) -> Command[Any]:
    writer("# run stage: work")
    try:
        writer(f"---> sleep for total {state.sleep_seconds} seconds")
        for i in range(state.sleep_seconds):
            writer(f"---> sleeping: {i + 1}")
            await asyncio.sleep(TICK)
        writer("---> awake")
    except CancelledError:
        print("................ cancellation detected ................")
        writer("cancellation detected, next goto cleanup stage")
        return Command(goto="cleanup_stage")

    return Command(goto=END, update={"result": "done"})


async def cleanup_stage(state: GraphState, writer: StreamWriter) -> Command[Any]:
    writer("# run stage: cleanup")
    return Command(goto=END, update={"result": "cleanup"})


def build(*, checkpointer: bool = True) -> Any:
    graph_builder = StateGraph(GraphState)
    graph_builder.add_node("work_stage", work_stage)
    graph_builder.add_node("cleanup_stage", cleanup_stage)
    graph_builder.add_edge(START, "work_stage")
    return graph_builder.compile(checkpointer=InMemorySaver() if checkpointer else None)


POLICY = """\
- name: wall-time
  grace_seconds: 0.05
  cleanup_node: cleanup_stage
  wall_time: {node_seconds: 0.035}
"""


def test_the_cancelled_run_goes_to_its_cleanup_stage_and_raises_run_cancelled(
    capsys: pytest.CaptureFixture[str],
) -> None:
    supervisor = Supervisor(policies(POLICY))
    graph = supervisor.attach(build(), name="seed")
    config = {"configurable": {"thread_id": "seed-1"}}
    chunks: list[str] = []

    async def main() -> None:
        async def _task() -> None:
            async for _chunk_type, chunk in graph.astream(
                input={"sleep_seconds": 1000},
                config=config,
                stream_mode=["custom"],
            ):
                chunks.append(chunk)

        await asyncio.create_task(_task())

    try:
        with capture_events() as events, pytest.raises(RunCancelled) as raised:
            asyncio.run(main())
    finally:
        supervisor.close()

    assert (raised.value.policy, raised.value.phase) == ("wall-time", "hard")
    assert graph.get_state(config).values["result"] == "cleanup"
    assert "cancellation detected" in capsys.readouterr().out  # the user's except ran
    assert chunks[:3] == [
        "# run stage: work",
        "---> sleep for total 1000 seconds",
        "---> sleeping: 1",
    ]
    names = [e["event"].removeprefix("watchdog.") for e in events]
    assert names[-4:] == ["cleanup_started", "cleanup_finished", "run_cancelled", "run_finished"]
    (finished,) = (e for e in events if e["event"] == "watchdog.cleanup_finished")
    assert (finished["node"], finished["outcome"]) == ("cleanup_stage", "ok")


def test_a_run_drained_at_a_step_boundary_is_routed_to_the_cleanup_node() -> None:
    class Loop(TypedDict):
        count: int
        result: str

    bodies: list[str] = []

    def work(state: Loop) -> dict[str, int]:
        bodies.append("work")
        return {"count": state["count"] + 1}

    def tidy(state: Loop) -> dict[str, str]:
        bodies.append("tidy")
        return {"result": f"tidied after {state['count']}"}

    builder = StateGraph(Loop)
    builder.add_node("work", work)
    builder.add_node("tidy", tidy)
    builder.add_edge(START, "work")
    builder.add_conditional_edges("work", lambda state: "work")
    builder.add_edge("tidy", END)
    supervisor = Supervisor(
        policies("- {name: steps, cleanup_node: tidy, step_count: {max_steps: 3}}")
    )
    app = supervisor.attach(builder.compile(checkpointer=InMemorySaver()), name="loop")
    config = {"configurable": {"thread_id": "drained"}}
    with pytest.raises(RunCancelled) as raised:
        app.invoke({"count": 0, "result": ""}, config)
    assert raised.value.phase == "drained"
    assert bodies == ["work", "work", "work", "tidy"]
    assert app.get_state(config).values == {"count": 3, "result": "tidied after 3"}


def test_a_cleanup_node_the_graph_lacks_is_an_error_at_attach_time() -> None:
    supervisor = Supervisor(policies(POLICY.replace("cleanup_stage", "tidy_up")))
    with pytest.raises(PolicyError) as raised:
        supervisor.attach(build(), name="seed")
    assert raised.value.problems[0].message == (
        "graph 'seed' has no node 'tidy_up'; expected one of work_stage, cleanup_stage"
    )


def test_a_cleanup_node_needs_a_checkpointer() -> None:
    supervisor = Supervisor(policies(POLICY))
    with pytest.raises(PolicyError, match="has no checkpointer"):
        supervisor.attach(build(checkpointer=False), name="seed")
    # A policy scoped to other graphs does not stand in the way.
    scoped = Supervisor(policies(POLICY.replace("  grace", "  match: {graph: other}\n  grace")))
    scoped.attach(build(checkpointer=False), name="seed")
