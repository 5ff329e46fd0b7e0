"""The callback handlers: LLM and tool events, and node runs where probes cannot reach."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from langgraph.func import entrypoint, task

from tests.graphs import Bodies, policies, with_subgraph
from watchdog import RunCancelled, Supervisor


@task
def step(n: int) -> int:
    return n + 1


@entrypoint()
def counting(n: int) -> int:
    for _ in range(20):
        n = step(n).result()
    return n


@pytest.mark.parametrize(
    ("graph", "graph_input"),
    [
        pytest.param(counting, 0, id="functional API"),
        pytest.param(
            with_subgraph(Bodies(), inner_steps=50, called=True),
            {"count": 0},
            id="a plain graph called from a node",
        ),
    ],
)
def test_a_cancel_through_chain_callbacks_logs_no_callback_error(
    graph: Any, graph_input: Any, caplog: pytest.LogCaptureFixture
) -> None:
    supervisor = Supervisor(policies("- {name: runs, step_count: {max_node_runs: 4}}"))
    app = supervisor.attach(graph, name="chains")
    assert not app._watchdog.probed
    with caplog.at_level(logging.WARNING), pytest.raises(RunCancelled) as raised:
        app.invoke(graph_input)
    assert raised.value.observed == 5
    assert [r.getMessage() for r in caplog.records] == []
