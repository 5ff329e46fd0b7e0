"""Per-step overhead: supervised / bare on the same graph, runs interleaved."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from prometheus_client import CollectorRegistry

from watchdog import Supervisor, load_policy_text

from .common import ALL_KINDS, Row, ratio_row, timed, trivial


def run(target: Any, config: dict[str, Any], *, is_async: bool) -> None:
    if is_async:
        asyncio.run(target.ainvoke({"n": 0}, config))
    else:
        target.invoke({"n": 0}, config)


def rows(quick: bool) -> list[Row]:
    steps, repeats = (500, 3) if quick else (2000, 7)
    supervisor = Supervisor(load_policy_text(ALL_KINDS), registry=CollectorRegistry())
    found = []
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
            found.append(ratio_row(f"overhead, {kind}, {saver}, {steps} steps", ratios, "<= 1.05x"))
    supervisor.close()
    return found
