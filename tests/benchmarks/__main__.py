"""The benchmark suite: ``python -m tests.benchmarks [--quick]``.

Every figure is measured side by side in one process: bare and supervised runs interleaved,
several repetitions, medians and spread, because machines are shared and noisy. It is kept
out of the test run; it prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from prometheus_client import CollectorRegistry

from watchdog import RunCancelled, Supervisor, load_policy_text

ALL_KINDS = """\
version: 1
defaults: {warn_at: null}
policies:
  - {name: wall, wall_time: {max_seconds: 3600, idle_seconds: 600, node_seconds: 600}}
  - {name: steps, step_count: {max_steps: 1000000, max_node_runs: 1000000}}
  - {name: loops, loop: {max_repeats: 3, max_tool_repeats: 3, max_cycle_repeats: 1000000}}
  - {name: tokens, token_budget: {max_total_tokens: 1000000000}}
  - {name: rate, rate: {max_events: 1000000, per_seconds: 1, of: steps}}
"""


class Counter(TypedDict):
    n: int


def trivial(steps: int, *, is_async: bool, checkpointer: bool) -> Any:
    """One node that adds one, ``steps`` times: the cost of a step and nothing else."""

    def add(state: Counter) -> dict[str, int]:
        return {"n": state["n"] + 1}

    async def add_async(state: Counter) -> dict[str, int]:
        return {"n": state["n"] + 1}

    builder = StateGraph(Counter)
    builder.add_node("add", add_async if is_async else add)
    builder.add_edge(START, "add")
    builder.add_conditional_edges("add", lambda s: END if s["n"] >= steps else "add")
    return builder.compile(checkpointer=InMemorySaver() if checkpointer else None)


@dataclass
class Row:
    name: str
    value: str
    spread: str
    target: str


def timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def run(target: Any, config: dict[str, Any], *, is_async: bool) -> None:
    if is_async:
        asyncio.run(target.ainvoke({"n": 0}, config))
    else:
        target.invoke({"n": 0}, config)


def overhead(steps: int, repeats: int) -> list[Row]:
    supervisor = Supervisor(load_policy_text(ALL_KINDS), registry=CollectorRegistry())
    rows = []
    for is_async in (False, True):
        for checkpointer in (False, True):
            graph = trivial(steps, is_async=is_async, checkpointer=checkpointer)
            app = supervisor.attach(graph, name="bench")
            config = {"recursion_limit": steps + 10, "configurable": {"thread_id": "t"}}

            run(graph, config, is_async=is_async)
            run(app, config, is_async=is_async)  # warm up both
            ratios = []
            for _ in range(repeats):
                bare = timed(functools.partial(run, graph, config, is_async=is_async))
                watched = timed(functools.partial(run, app, config, is_async=is_async))
                ratios.append(watched / bare)
            kind = "async" if is_async else "sync"
            saver = "InMemorySaver" if checkpointer else "no checkpointer"
            rows.append(
                Row(
                    f"overhead, {kind}, {saver}, {steps} steps",
                    f"{statistics.median(ratios):.3f}x",
                    f"{min(ratios):.3f}-{max(ratios):.3f}",
                    "<= 1.05x",
                )
            )
    supervisor.close()
    return rows


def cancel_latency(runs: int) -> list[Row]:
    """Deadline to RunCancelled for a hung async node, beside LangGraph's step_timeout."""

    async def hang(state: Counter) -> dict[str, int]:
        await asyncio.Event().wait()
        return {}

    builder = StateGraph(Counter)
    builder.add_node("hang", hang)
    builder.add_edge(START, "hang")
    deadline = 0.02
    rows = []
    for grace in (0.0, 0.1):
        text = f"version: 1\ndefaults: {{grace_seconds: {grace}, warn_at: null}}\npolicies:\n"
        text += f"- {{name: wall, wall_time: {{node_seconds: {deadline}}}}}\n"
        supervisor = Supervisor(load_policy_text(text), registry=CollectorRegistry())
        app = supervisor.attach(builder.compile(), name="hung")

        async def one(app: Any = app) -> float:
            started = time.perf_counter()
            with contextlib.suppress(RunCancelled):
                await app.ainvoke({"n": 0})
            return time.perf_counter() - started

        overshoots = sorted(1000 * (asyncio.run(one()) - deadline - grace) for _ in range(runs))
        supervisor.close()
        rows.append(_latency_row(f"cancel overshoot, grace {grace:g} s", overshoots, grace == 0))
    plain = builder.compile()
    plain.step_timeout = deadline

    async def langgraph_own() -> float:
        started = time.perf_counter()
        with contextlib.suppress(TimeoutError):
            await plain.ainvoke({"n": 0})
        return time.perf_counter() - started

    overshoots = sorted(1000 * (asyncio.run(langgraph_own()) - deadline) for _ in range(runs))
    rows.append(_latency_row("LangGraph's own step_timeout", overshoots, False))
    return rows


def _latency_row(name: str, overshoots: list[float], targeted: bool) -> Row:
    p99 = overshoots[min(len(overshoots) - 1, int(len(overshoots) * 0.99))]
    return Row(
        name,
        f"{statistics.median(overshoots):.2f} ms median, {p99:.2f} ms p99",
        f"{overshoots[0]:.2f}-{overshoots[-1]:.2f} ms",
        "<= 5 ms median, <= 20 ms p99" if targeted else "",
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks")
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    args = parser.parse_args()
    steps, repeats, runs = (500, 3, 30) if args.quick else (2000, 7, 200)
    rows = overhead(steps, repeats) + cancel_latency(runs)
    widths = [max(len(getattr(r, f)) for r in rows) for f in ("name", "value", "spread")]
    for row in rows:
        print(
            f"{row.name:<{widths[0]}}  {row.value:<{widths[1]}}  {row.spread:<{widths[2]}}  "
            f"{row.target}"
        )


if __name__ == "__main__":
    main()
