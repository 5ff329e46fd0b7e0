"""The soak test: ``python -m tests.soak [--runs N]``, kept out of the test run.

Runs a ReAct agent on the fake chat model under ``policies/default.yaml`` again and again,
through ``invoke`` and ``ainvoke``, with a checkpointer and without, some runs cancelled, and
checks that what a finished run leaves behind stays flat: the objects Python holds (after a
collection), the process's resident size, the timer heap and the threads; with
``--tracemalloc``, the traced memory too (three times slower). It prints one line per tenth of
the runs and exits 1 when something grows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import resource
import threading
import tracemalloc
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog
from langchain_core.messages import AIMessage
from langgraph.checkpoint.memory import InMemorySaver

from tests.graphs import react_agent, scripted, tool_call
from watchdog import RunCancelled, Supervisor

ROOT = Path(__file__).resolve().parent.parent
GROWTH_BYTES = 2 * 1024 * 1024  # allowed growth from the first tenth to the last
GROWTH_OBJECTS = 2_000


def _agents() -> tuple[Any, Any]:
    """A good agent (two tool calls, then an answer), and one that repeats its tool call
    until the loop policy stops it."""
    good = react_agent(
        scripted(tool_call("weather"), tool_call("news", "second"), AIMessage("Done."))
    )
    looping = react_agent(scripted(tool_call("same")))
    return good, looping


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak")
    parser.add_argument("--runs", type=int, default=100_000, help="how many runs (100,000)")
    parser.add_argument("--tracemalloc", action="store_true", help="trace memory as well")
    args = parser.parse_args()
    # Events are rendered as in production, then dropped.
    structlog.configure(
        processors=[structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(open(os.devnull, "w")),  # noqa: SIM115
    )
    supervisor = Supervisor.from_path(ROOT / "policies" / "default.yaml")
    good, looping = _agents()
    saver = InMemorySaver()
    apps = {
        "plain": supervisor.attach(good, name="soak"),
        "checkpointed": supervisor.attach(good.copy({"checkpointer": saver}), name="soak"),
        "looping": supervisor.attach(looping, name="soak-looping"),
    }
    question = {"messages": [("user", "what's new?")]}
    loop = asyncio.new_event_loop()
    # One thread for sync tools in async runs: the default pool grows with the machine's
    # cores as it pleases, which would read as threads piling up.
    loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
    if args.tracemalloc:
        tracemalloc.start()
    samples: list[tuple[int, int, int, int, int]] = []
    tenth = max(1, args.runs // 10)
    cancelled = 0
    for i in range(args.runs):
        kind = ("plain", "checkpointed", "looping")[i % 3]
        config: dict[str, Any] = {}
        if kind == "checkpointed":
            thread_id = str(uuid.uuid4())
            config = {"configurable": {"thread_id": thread_id}}
        try:
            if i % 2:
                loop.run_until_complete(apps[kind].ainvoke(question, config))
            else:
                apps[kind].invoke(question, config)
        except RunCancelled:
            cancelled += 1
        if kind == "checkpointed":
            saver.delete_thread(thread_id)  # the saver's own growth is not the watchdog's
        if (i + 1) % tenth == 0:
            gc.collect()
            objects = len(gc.get_objects())
            traced = tracemalloc.get_traced_memory()[0] if args.tracemalloc else 0
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            heap = len(supervisor.scheduler._heap)
            samples.append((traced, rss, heap, threading.active_count(), objects))
            print(
                f"{i + 1:>8} runs  objects {objects:>8}  traced {traced / 2**20:6.2f} MiB  "
                f"max rss {rss / 2**20:7.1f} MiB  timer heap {heap:>4}  "
                f"threads {threading.active_count()}  live runs {len(supervisor.runs())}  "
                f"cancelled {cancelled}",
                flush=True,
            )
    loop.close()
    supervisor.close()
    with contextlib.suppress(IndexError):
        # The first tenth warms caches and pools up (the loop's executor threads among them):
        # the baseline is the end of the second.
        first, last = samples[min(1, len(samples) - 1)], samples[-1]
        grown, more = last[0] - first[0], last[4] - first[4]
        flat = (
            grown <= GROWTH_BYTES
            and more <= GROWTH_OBJECTS
            and last[2] <= max(first[2], 200)
            and last[3] <= first[3]
        )
        print(
            f"from the second tenth to the last: {more:+d} objects, traced memory "
            f"{grown / 1024:+.1f} KiB, max rss {(last[1] - first[1]) / 2**20:+.1f} MiB; "
            f"{'flat' if flat else 'NOT FLAT'}"
        )
        return 0 if flat else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
