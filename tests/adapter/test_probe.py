"""Probes in a graph's nodes: which nodes get one, and what a probe does in and out of a run."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from langchain_core.runnables import RunnableLambda
from langgraph.func import entrypoint
from langgraph.pregel import Pregel

from tests.graphs import Bodies, one_node, policies, with_subgraph
from watchdog import RunCancelled, Supervisor
from watchdog._adapter.probe import NodeProbe, probed_nodes
from watchdog.testing import capture_events


def never(subgraph: Any) -> bool:
    return False


def test_every_node_of_a_state_graph_gets_a_probe_but_the_start() -> None:
    graph = with_subgraph(Bodies(), inner_steps=2)
    nodes = probed_nodes(graph, reports_itself=never)
    assert nodes is not None
    probes = {name: type(node.node).__name__ for name, node in nodes.items()}
    assert probes == {
        "__start__": "ChannelWrite",
        "before": "NodeProbe",
        "sub": "NodeProbe",
        "after": "NodeProbe",
    }
    assert not isinstance(graph.nodes["before"].node, NodeProbe), "the graph is left as it was"


def test_a_subgraph_node_has_its_own_nodes_probed() -> None:
    nodes = probed_nodes(with_subgraph(Bodies(), inner_steps=2), reports_itself=never)
    assert nodes is not None
    inner = nodes["sub"].bound
    assert isinstance(inner, Pregel)
    assert isinstance(inner.nodes["inner"].node, NodeProbe)


def test_a_subgraph_that_reports_itself_is_left_as_it_is() -> None:
    graph = with_subgraph(Bodies(), inner_steps=2)
    nodes = probed_nodes(graph, reports_itself=lambda subgraph: True)
    assert nodes is not None
    assert nodes["sub"].subgraphs == graph.nodes["sub"].subgraphs


@pytest.mark.parametrize(
    "graph",
    [
        pytest.param(with_subgraph(Bodies(), inner_steps=2, called=True), id="called-subgraph"),
        pytest.param(entrypoint()(lambda value: value), id="functional-api"),
    ],
)
def test_work_out_of_a_probes_reach_leaves_the_graph_to_chain_callbacks(graph: Any) -> None:
    assert probed_nodes(graph, reports_itself=never) is None


def test_outside_a_run_a_probe_is_its_node() -> None:
    probe = NodeProbe(RunnableLambda(lambda x: x * 2), "double")
    assert probe.invoke(2) == 4
    assert list(probe.stream(3)) == [6]

    async def in_a_loop() -> tuple[Any, list[Any]]:
        return await probe.ainvoke(4), [chunk async for chunk in probe.astream(5)]

    assert asyncio.run(in_a_loop()) == (8, [10])


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_probed_node_gives_what_the_bare_node_gives(is_async: bool) -> None:
    def add(state: dict[str, int]) -> dict[str, int]:
        return {"count": state["count"] + 1}

    async def add_async(state: dict[str, int]) -> dict[str, int]:
        return add(state)

    bare = one_node(add_async if is_async else add)
    app = Supervisor(policies("- {name: steps, step_count: {max_steps: 100}}")).attach(
        bare, name="one"
    )
    assert isinstance(app.nodes["work"].node, NodeProbe)
    if is_async:
        assert asyncio.run(app.ainvoke({"count": 1})) == asyncio.run(bare.ainvoke({"count": 1}))
    else:
        assert app.invoke({"count": 1}) == bare.invoke({"count": 1}) == {"count": 2}


def test_a_node_of_a_cancelled_run_never_starts() -> None:
    supervisor = Supervisor(policies("- {name: steps, step_count: {max_steps: 100}}"))
    run_id = uuid.uuid4()
    bodies = Bodies()

    def cancel(state: dict[str, int]) -> dict[str, int]:
        supervisor.cancel(run_id, reason="stop here")
        return {"count": 1}

    def after(state: dict[str, int]) -> dict[str, int]:
        bodies.ran += 1
        return {"count": 2}

    graph = one_node(cancel)
    builder = graph.builder
    builder.add_node("after", after)
    builder.add_edge("work", "after")
    app = supervisor.attach(builder.compile(), name="two")
    with pytest.raises(RunCancelled) as raised:
        app.invoke({"count": 0}, {"run_id": run_id})
    assert (raised.value.reason, raised.value.phase) == ("stop here", "drained")
    assert bodies.ran == 0


def test_an_error_of_the_watchdogs_in_a_probe_is_reported_and_the_node_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        msg = "a bug in the watchdog"
        raise ZeroDivisionError(msg)

    monkeypatch.setattr("watchdog._core.engine.RunMonitor.node_started", broken)
    app = Supervisor(policies("- {name: steps, step_count: {max_steps: 100}}")).attach(
        one_node(lambda state: {"count": state["count"] + 1}), name="one"
    )
    with capture_events() as events:
        assert app.invoke({"count": 0}) == {"count": 1}
    (error,) = [e for e in events if e["event"] == "watchdog.internal_error"]
    assert error["error"] == "ZeroDivisionError: a bug in the watchdog"
    assert [e["outcome"] for e in events if e["event"] == "watchdog.run_finished"] == ["completed"]
