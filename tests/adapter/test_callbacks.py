"""The callback handlers: LLM and tool events, and node runs where probes cannot reach."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.runnables import RunnableConfig
from langgraph.func import entrypoint, task

from tests.graphs import Bodies, Counter, one_node, policies, scripted, with_subgraph
from watchdog import RunCancelled, Supervisor
from watchdog._adapter.callbacks import _usage, running
from watchdog.testing import capture_events


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


def generation(input_tokens: int, output_tokens: int, **total: int) -> ChatGeneration:
    usage = UsageMetadata(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=total.get("total_tokens", input_tokens + output_tokens),
    )
    return ChatGeneration(message=AIMessage("x", usage_metadata=usage))


def test_usage_adds_up_every_generation_and_skips_those_without() -> None:
    result = LLMResult(
        generations=[
            [generation(10, 2), ChatGeneration(message=AIMessage("no usage"))],
            [generation(5, 1, total_tokens=7)],
        ]
    )
    assert _usage(result) == (15, 3, 19)
    assert _usage(LLMResult(generations=[[ChatGeneration(message=AIMessage("none"))]])) == (
        0,
        0,
        None,
    )


def chatty(model: Any, calls: int) -> Any:
    """One node that calls ``model`` ``calls`` times."""

    def talk(state: Counter) -> dict[str, int]:
        for _ in range(calls):
            model.invoke("hi")
        return {"count": state["count"] + 1}

    return one_node(talk)


def test_llm_usage_reaches_the_run_and_a_budget_stops_the_next_call() -> None:
    model = scripted(*[AIMessage("ok")] * 5, input_tokens=40, output_tokens=10)
    supervisor = Supervisor(policies("- {name: tokens, token_budget: {max_total_tokens: 100}}"))
    app = supervisor.attach(chatty(model, calls=5), name="chatty")
    with capture_events() as events, pytest.raises(RunCancelled) as raised:
        app.invoke({"count": 0})
    assert (raised.value.kind, raised.value.observed) == ("token_budget", 150)
    assert model.i == 3, "the call after the one past the budget never started"
    (finished,) = [e for e in events if e["event"] == "watchdog.run_finished"]
    assert (finished["input_tokens"], finished["output_tokens"]) == (120, 30)


def test_an_error_of_the_watchdogs_in_a_callback_is_reported_and_the_run_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: object) -> None:
        msg = "a bug in the watchdog"
        raise ZeroDivisionError(msg)

    monkeypatch.setattr("watchdog._core.engine.RunMonitor.llm_started", broken)
    model = scripted(*[AIMessage("ok")] * 3)  # its count of calls wraps at the last answer
    app = Supervisor(policies("- {name: steps, step_count: {max_steps: 10}}")).attach(
        chatty(model, calls=2), name="chatty"
    )
    with capture_events() as events:
        assert app.invoke({"count": 0}) == {"count": 1}
    errors = [e["error"] for e in events if e["event"] == "watchdog.internal_error"]
    assert errors == ["ZeroDivisionError: a bug in the watchdog"] * 2
    assert model.i == 2


def test_a_probed_graph_runs_with_the_callers_callbacks_and_its_calls_still_report() -> None:
    """The handler is added by LangChain's configure hook to each chat model's (and tool's)
    call alone: the node's config carries the caller's callbacks, and nothing is left in
    this context once the run is over."""
    model = scripted(AIMessage("ok"), input_tokens=40, output_tokens=10)
    seen: list[Any] = []

    def talk(state: Counter, config: RunnableConfig) -> dict[str, int]:
        seen.append(config["callbacks"])
        model.invoke("hello", config)
        return {"count": state["count"] + 1}

    supervisor = Supervisor(policies("- {name: tokens, token_budget: {max_total_tokens: 100}}"))
    app = supervisor.attach(one_node(talk), name="talk")
    with capture_events() as events:
        app.invoke({"count": 0})
    (manager,) = seen
    assert [type(h).__name__ for h in manager.handlers] == []  # LangGraph's, with none of ours
    (finished,) = [e for e in events if e["event"] == "watchdog.run_finished"]
    assert (finished["input_tokens"], finished["output_tokens"]) == (40, 10)
    assert running.get() is None
