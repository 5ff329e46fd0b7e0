"""What the benchmarks share: the table row, a timer that interleaves, and the trivial graph."""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import structlog
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph

# All five kinds on, with limits no benchmark run reaches: the cost of checking, not of
# cancelling.
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


@dataclass
class Row:
    name: str
    value: str
    spread: str
    target: str


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


def timed(call: Callable[[], Any]) -> float:
    """The CPU time ``call`` takes this process: unlike the wall clock, it does not count the
    time other processes of a shared machine hold the cores."""
    gc.collect()  # so a collection owed to the run before is not charged to this one
    started = time.process_time()
    call()
    return time.process_time() - started


def interleaved(calls: Mapping[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Each call's times over ``repeats`` rounds, after one warm-up round. Every round runs
    them all, in an order rotated by one from the round before, so none always runs first
    or right after the same other."""
    names = list(calls)
    for name in names:
        calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(timed(calls[name]))
    return times


def ratio_row(name: str, ratios: Sequence[float], target: str) -> Row:
    return Row(
        name,
        f"{statistics.median(ratios):.3f}x",
        f"{min(ratios):.3f}-{max(ratios):.3f}",
        target,
    )


def percentile(ordered: Sequence[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def render_events_then_drop_them() -> None:
    """Events are rendered as in production (JSON lines), then dropped: only the table is
    printed."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(open(os.devnull, "w")),  # noqa: SIM115
    )
