"""Cancel latency: deadline to RunCancelled for a hung async node, beside step_timeout."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from typing import Any

from langgraph.graph import START, StateGraph
from prometheus_client import CollectorRegistry

from watchdog import RunCancelled, Supervisor, load_policy_text

from .common import Counter, Row, percentile

DEADLINE = 0.02


def rows(quick: bool) -> list[Row]:
    runs = 30 if quick else 200

    async def hang(state: Counter) -> dict[str, int]:
        await asyncio.Event().wait()
        return {}

    builder = StateGraph(Counter)
    builder.add_node("hang", hang)
    builder.add_edge(START, "hang")
    found = []
    for grace in (0.0, 0.1):
        text = f"version: 1\ndefaults: {{grace_seconds: {grace}, warn_at: null}}\npolicies:\n"
        text += f"- {{name: wall, wall_time: {{node_seconds: {DEADLINE}}}}}\n"
        supervisor = Supervisor(load_policy_text(text), registry=CollectorRegistry())
        app = supervisor.attach(builder.compile(), name="hung")

        async def one(app: Any = app) -> float:
            started = time.perf_counter()
            with contextlib.suppress(RunCancelled):
                await app.ainvoke({"n": 0})
            return time.perf_counter() - started

        overshoots = sorted(1000 * (asyncio.run(one()) - DEADLINE - grace) for _ in range(runs))
        supervisor.close()
        found.append(_row(f"cancel overshoot, grace {grace:g} s", overshoots, grace == 0))
    plain = builder.compile()
    plain.step_timeout = DEADLINE

    async def langgraph_own() -> float:
        started = time.perf_counter()
        with contextlib.suppress(TimeoutError):
            await plain.ainvoke({"n": 0})
        return time.perf_counter() - started

    overshoots = sorted(1000 * (asyncio.run(langgraph_own()) - DEADLINE) for _ in range(runs))
    found.append(_row("LangGraph's own step_timeout", overshoots, False))
    return found


def _row(name: str, overshoots: list[float], targeted: bool) -> Row:
    return Row(
        name,
        f"{statistics.median(overshoots):.2f} ms median, {percentile(overshoots, 0.99):.2f} ms p99",
        f"{overshoots[0]:.2f}-{overshoots[-1]:.2f} ms",
        "<= 5 ms median, <= 20 ms p99" if targeted else "",
    )
