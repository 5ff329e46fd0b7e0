"""Instructions a step, counted by valgrind's callgrind: a profile that a busy machine does
not blur.

CPU-time ratios move by a few percent from run to run on a shared machine; the number of
instructions a process executes does not. Each variant of the trivial graph runs in a child
process under callgrind twice, for a short and a long run; their difference over the extra
steps is the cost of one step, start-up and warm-up cancelled out. The child disables the
garbage collector after its warm-up, so that when a collection happens does not count.

The rows split the watchdog's cost per step: the floor (probes that find no run), the run's
plumbing with no policies, the loop kind alone, all five kinds, all five with each run
recorded for replay; and the same for an async graph. Needs ``valgrind`` (Debian:
``apt-get install valgrind``); without it the rows say so. Takes a few minutes: each child
runs about fifty times slower than natively.
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import CollectorRegistry

from watchdog import Supervisor, load_policy_text

from .common import ALL_KINDS, Row, render_events_then_drop_them, trivial
from .overhead import LOOP_ONLY, NO_POLICIES, floor

SHORT, LONG = 100, 600  # steps of the two runs whose difference is counted
VARIANTS = ("bare", "floor", "none", "loop", "all", "recorded")
ASYNC_VARIANTS = ("bare", "floor", "all")
COLLECTED = re.compile(r"Collected : (\d+)")


def rows(quick: bool) -> Iterator[Row]:
    if shutil.which("valgrind") is None:
        yield Row("instructions a step (callgrind)", "not measured", "", "valgrind is missing")
        return
    for is_async, variants in ((False, VARIANTS), (True, ASYNC_VARIANTS)):
        mode = "async" if is_async else "sync"
        per_step = {variant: instructions_a_step(variant, is_async) for variant in variants}
        bare = per_step.pop("bare")
        yield Row(f"instructions a step, trivial graph, {mode}, bare", f"{bare:,.0f}", "", "")
        for variant, count in per_step.items():
            added = count - bare
            yield Row(f"  {LABELS[variant]}", f"+{added:,.0f} ({added / bare:.1%})", "", "")


LABELS = {
    "floor": "the floor: probes that find no run",
    "none": "supervised, no policies",
    "loop": "the loop kind alone",
    "all": "all five kinds",
    "recorded": "all five kinds, each run recorded (its trace written to /dev/null)",
}


def instructions_a_step(variant: str, is_async: bool) -> float:
    """The instructions one step of ``variant`` executes, from two runs side by side."""
    with ThreadPoolExecutor(2) as pool:
        short, long = pool.map(lambda steps: _counted(variant, is_async, steps), (SHORT, LONG))
    return (long - short) / (2 * (LONG - SHORT))  # each child runs its graph twice


def _counted(variant: str, is_async: bool, steps: int) -> int:
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "tests.benchmarks.instructions",
        variant,
        "async" if is_async else "sync",
        str(steps),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}  # the same dicts in both runs
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    found = COLLECTED.search(done.stderr)
    if found is None:
        msg = f"callgrind printed no count for {variant}: {done.stderr[-500:]}"
        raise RuntimeError(msg)
    return int(found.group(1))


def child(variant: str, is_async: bool, steps: int) -> None:
    """One run of ``steps`` steps after a warm-up run, as ``valgrind`` counts it."""
    graph = trivial(steps, is_async=is_async, checkpointer=False)
    target: Any = graph
    if variant == "floor":
        target = floor(graph)
    elif variant != "bare":
        policies = {"none": NO_POLICIES, "loop": LOOP_ONLY}.get(variant, ALL_KINDS)
        record = os.devnull if variant == "recorded" else None
        supervisor = Supervisor(
            load_policy_text(policies), registry=CollectorRegistry(), record=record
        )
        target = supervisor.attach(graph, name="bench")
    config = {"recursion_limit": steps + 10}
    for _ in range(2):  # a warm-up run, then the counted one; both count in both processes
        if is_async:
            asyncio.run(target.ainvoke({"n": 0}, config))
        else:
            target.invoke({"n": 0}, config)
        gc.collect()
        gc.disable()


if __name__ == "__main__":
    render_events_then_drop_them()
    child(sys.argv[1], sys.argv[2] == "async", int(sys.argv[3]))
