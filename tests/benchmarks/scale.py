"""Scale: many concurrent supervised runs awaiting inside a node, all cancelled by wall_time.

Two figures, each from its own phase, as tracemalloc slows everything it traces:

- Memory: the runs are started and left waiting inside their node; the memory traced per
  waiting run is taken for bare runs and for supervised ones (all five kinds), side by side,
  and the watchdog's share is the difference: what attaching adds to a run, wherever it is
  allocated.
- Cancel: the same runs under ``max_seconds``, untraced; each run's overshoot is the time
  from its own deadline to its ``RunCancelled``, and the last of them is the figure. The
  deadlines follow each other as closely as the runs' starts did.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import statistics
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

from langgraph.graph import START, StateGraph
from prometheus_client import CollectorRegistry

from watchdog import RunCancelled, Supervisor, load_policy_text

from .common import ALL_KINDS, Counter, Row, percentile


def waiting_graph(inside: list[int], release: asyncio.Event) -> Any:
    """One node that counts itself in, then waits for ``release``."""

    async def wait(state: Counter) -> dict[str, int]:
        inside[0] += 1
        await release.wait()
        return {}

    builder = StateGraph(Counter)
    builder.add_node("wait", wait)
    builder.add_edge(START, "wait")
    return builder.compile()


def policies(max_seconds: float) -> Any:
    return load_policy_text(
        "version: 1\ndefaults: {grace_seconds: 0, warn_at: null}\npolicies:\n"
        f"- {{name: wall, wall_time: {{max_seconds: {max_seconds}}}}}\n"
    )


async def traced_per_run(runs: int, supervised: bool) -> float:
    """Bytes traced per waiting run. Only the total tells what supervising adds: the frames
    of LangGraph's calls are allocated at the lines that call them, which are the watchdog's
    for a supervised run."""
    inside, release = [0], asyncio.Event()
    graph = waiting_graph(inside, release)
    supervisor = Supervisor(load_policy_text(ALL_KINDS), registry=CollectorRegistry())
    target = supervisor.attach(graph, name="scale") if supervised else graph
    release.set()
    await target.ainvoke({"n": 0})  # warm up: first-use caches are not per run
    release.clear()
    inside[0] = 0
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        tasks = [asyncio.create_task(target.ainvoke({"n": 0})) for _ in range(runs)]
        while inside[0] < runs:
            await asyncio.sleep(0.01)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    release.set()
    await asyncio.gather(*tasks)
    supervisor.close()
    total = sum(s.size_diff for s in after.compare_to(before, "filename"))
    return total / runs


async def overshoots(runs: int, max_seconds: float) -> tuple[list[float], float]:
    """Seconds from each run's deadline to its RunCancelled, sorted; and how long it took
    to get every run waiting in its node."""
    inside, release = [0], asyncio.Event()
    supervisor = Supervisor(policies(max_seconds), registry=CollectorRegistry())
    app = supervisor.attach(waiting_graph(inside, release), name="scale")

    async def one() -> float:
        started = time.monotonic()
        with contextlib.suppress(RunCancelled):
            await app.ainvoke({"n": 0})
        return time.monotonic() - started - max_seconds

    began = time.monotonic()
    tasks = [asyncio.create_task(one()) for _ in range(runs)]
    while inside[0] < runs and not all(t.done() for t in tasks):
        await asyncio.sleep(0.01)
    all_waiting = time.monotonic() - began
    late = sorted(await asyncio.gather(*tasks))
    supervisor.close()
    return late, all_waiting


def rows(quick: bool) -> Iterator[Row]:
    runs, repeats = (1_000, 1) if quick else (10_000, 3)
    memory = []
    for _ in range(repeats):
        bare = asyncio.run(traced_per_run(runs, supervised=False))
        supervised = asyncio.run(traced_per_run(runs, supervised=True))
        memory.append((supervised - bare, bare))
    added = [m[0] for m in memory]
    bare_sizes = [m[1] for m in memory]
    yield Row(
        f"memory a supervised run adds, {runs:,} waiting runs",
        f"{statistics.median(added) / 1024:.2f} KiB a run",
        f"{min(added) / 1024:.2f}-{max(added) / 1024:.2f} KiB",
        "<= 2 KiB",
    )
    yield Row(
        "  a bare LangGraph run waiting in a node, for scale",
        f"{statistics.median(bare_sizes) / 1024:.1f} KiB a run",
        f"{min(bare_sizes) / 1024:.1f}-{max(bare_sizes) / 1024:.1f} KiB",
        "",
    )
    # Long enough that every run is waiting before the first deadline (LangGraph takes about
    # a millisecond to start a run here), so the cancels do not queue behind run starts in
    # the event loop: what is measured is the watchdog's cancelling, ten thousand in a row.
    max_seconds = 2.0 if quick else 15.0
    late, all_waiting = asyncio.run(overshoots(runs, max_seconds))
    name = f"deadline to the last of {runs:,} runs cancelled"
    if all_waiting >= max_seconds:
        # Runs still starting when the first fell due: the cancels queued behind the starts,
        # and the figure would measure how busy the machine was.
        yield Row(
            name,
            "not measured",
            f"the runs took {all_waiting:.1f} s to start; first deadline at {max_seconds:g} s",
            "<= 2 s",
        )
        return
    ms = [1000 * s for s in late]
    yield Row(
        name,
        f"{ms[-1]:.0f} ms (median {statistics.median(ms):.0f}, p99 {percentile(ms, 0.99):.0f})",
        f"all waiting after {all_waiting:.1f} s; first deadline at {max_seconds:g} s",
        "<= 2 s",
    )
