"""What recording runs for replay costs: the trivial graph bare, supervised (all five kinds)
without recording, and supervised recording every run to a JSON-lines file, interleaved in
this process (CPU time), per step and per run of a ReAct agent."""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage
from prometheus_client import CollectorRegistry

from tests.graphs import react_agent, scripted, tool_call
from watchdog import Supervisor, load_policy_text

from .common import ALL_KINDS, Row, interleaved, ratio_row, trivial


def over(times: list[float], base: list[float]) -> list[float]:
    return [t / b for t, b in zip(times, base, strict=True)]


def rows(quick: bool) -> Iterator[Row]:
    steps, repeats = (500, 5) if quick else (2000, 9)
    with tempfile.TemporaryDirectory() as folder:
        policies = load_policy_text(ALL_KINDS)
        off = Supervisor(policies, registry=CollectorRegistry())
        on = Supervisor(policies, registry=CollectorRegistry(), record=Path(folder) / "t.jsonl")
        tenth = Supervisor(
            policies,
            registry=CollectorRegistry(),
            record=Path(folder) / "tenth.jsonl",
            record_share=0.1,
        )
        try:
            graph = trivial(steps, is_async=False, checkpointer=False)
            config = {"recursion_limit": steps + 10}
            times = interleaved(
                {
                    "bare": functools.partial(graph.invoke, {"n": 0}, config),
                    "off": functools.partial(off.attach(graph, name="b").invoke, {"n": 0}, config),
                    "on": functools.partial(on.attach(graph, name="b").invoke, {"n": 0}, config),
                },
                repeats,
            )
            what = f"sync, no checkpointer, {steps} steps"
            # Off is the supervised path of the overhead benchmark, whose rows hold its target.
            yield ratio_row(f"recording off, {what}", over(times["off"], times["bare"]), "")
            yield ratio_row(f"recording on, {what}", over(times["on"], times["bare"]), "")
            yield ratio_row("  recording on / off", over(times["on"], times["off"]), "<= 1.03x")
            yield from one_in_ten(repeats, off, tenth)
            yield from react_runs(repeats, off, on)
        finally:
            for supervisor in (off, on, tenth):
                supervisor.close()


def one_in_ten(repeats: int, off: Supervisor, tenth: Supervisor) -> Iterator[Row]:
    """Recording a share of the runs: forty runs of 500 steps a round, so that each round
    records about four."""
    graph = trivial(500, is_async=False, checkpointer=False)
    config = {"recursion_limit": 510}

    def runs(app: Any) -> None:
        for _ in range(40):
            app.invoke({"n": 0}, config)

    times = interleaved(
        {
            "off": functools.partial(runs, off.attach(graph, name="b")),
            "tenth": functools.partial(runs, tenth.attach(graph, name="b")),
        },
        repeats,
    )
    yield ratio_row(
        "  recording one run in ten / off", over(times["tenth"], times["off"]), "<= 1.01x"
    )


def react_runs(repeats: int, off: Supervisor, on: Supervisor) -> Iterator[Row]:
    """A ReAct agent of ten tool calls, fifty runs a round: the per-run cost (the trace
    written as each run ends) beside the work of a real run."""

    def runs(app: Any) -> None:
        for _ in range(50):
            app.invoke({"messages": [("user", "go")]})

    def agent() -> Any:
        answers = [*(tool_call(f"q{i}", f"c{i}") for i in range(10)), AIMessage("done")]
        return react_agent(scripted(*answers))

    bare, watched, recorded = agent(), off.attach(agent(), name="r"), on.attach(agent(), name="r")
    times = interleaved(
        {
            "bare": functools.partial(runs, bare),
            "off": functools.partial(runs, watched),
            "on": functools.partial(runs, recorded),
        },
        repeats,
    )
    yield ratio_row(
        "ReAct agent, 10 tool calls: recording off", over(times["off"], times["bare"]), ""
    )
    yield ratio_row("  recording on", over(times["on"], times["bare"]), "")
    yield ratio_row("  recording on / off", over(times["on"], times["off"]), "<= 1.03x")
