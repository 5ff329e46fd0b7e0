"""Shared budgets: what a model call pays for its reservation in Redis, and how many calls
four worker processes make with a shared budget, side by side with a budget of the run alone.

A real ``redis-server`` is started on a free loopback port; without one the rows say so.
Times are wall-clock here: a reservation is a round trip to another process, which CPU time
would not see.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage
from langgraph.graph import START, StateGraph
from prometheus_client import CollectorRegistry

from tests.processes import RedisServer
from watchdog import Supervisor, load_policy_text
from watchdog.testing import FakeChatModel

from .common import Counter, Row, render_events_then_drop_them

CALLS = 200  # model calls a run makes
SECONDS = 3.0  # each worker process's run of calls
BUDGETS = {
    "local": "token_budget: {max_total_tokens: 1000000000000}",
    "shared": (
        "token_budget: {max_total_tokens: 1000000000000, scope: metadata.tenant, window: 1d}"
    ),
}


def calling(calls: int) -> Any:
    """A graph whose one node makes ``calls`` model calls."""
    model = FakeChatModel(responses=[AIMessage("ok")])

    def node(state: Counter) -> Counter:
        for _ in range(calls):
            model.invoke("go")
        return state

    builder = StateGraph(Counter)
    builder.add_node("call", node)
    builder.add_edge(START, "call")
    return builder.compile()


def app(budget: str, redis_url: str) -> Any:
    text = f"version: 1\ndefaults: {{warn_at: null}}\npolicies:\n- {{name: b, {BUDGETS[budget]}}}\n"
    supervisor = Supervisor(
        load_policy_text(text), registry=CollectorRegistry(), redis_url=redis_url
    )
    return supervisor.attach(calling(CALLS), name="calls")


def per_call(apps: dict[str, Any], repeats: int) -> dict[str, list[float]]:
    """Wall-clock seconds a model call takes in each app, run by run, interleaved."""
    config = {"metadata": {"tenant": "bench"}}
    for supervised in apps.values():
        supervised.invoke({"n": 0}, config)  # warm up: a first reservation connects
    times: dict[str, list[float]] = {name: [] for name in apps}
    names = list(apps)
    for repeat in range(repeats):
        for name in names[repeat % 2 :] + names[: repeat % 2]:
            started = time.perf_counter()
            apps[name].invoke({"n": 0}, config)
            times[name].append((time.perf_counter() - started) / CALLS)
    return times


def worker(budget: str, redis_url: str, seconds: float) -> None:
    """One worker process: runs of model calls for ``seconds``; prints how many calls."""
    supervised = app(budget, redis_url)
    config = {"metadata": {"tenant": "bench"}}
    supervised.invoke({"n": 0}, config)
    calls, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        supervised.invoke({"n": 0}, config)
        calls += CALLS
    print(json.dumps({"calls": calls, "seconds": seconds}), flush=True)


def fleet(budget: str, redis_url: str, workers: int = 4) -> float:
    """Model calls a second from ``workers`` processes at once."""
    command = [sys.executable, "-m", "tests.benchmarks.shared", budget, redis_url, str(SECONDS)]
    started = [
        subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=Path.cwd())
        for _ in range(workers)
    ]
    total = 0.0
    for process in started:
        out, _ = process.communicate(timeout=300)
        found = json.loads(out.strip().splitlines()[-1])
        total += found["calls"] / found["seconds"]
    return total


def rows(quick: bool) -> list[Row]:
    if shutil.which("redis-server") is None:
        reason = "redis-server is not installed (.ci/run installs it)"
        return [Row("shared budget: added latency a model call", "not measured", reason, "")]
    with tempfile.TemporaryDirectory() as folder:
        server = RedisServer(Path(folder))
        try:
            apps = {name: app(name, server.url) for name in BUDGETS}
            times = per_call(apps, 5 if quick else 21)
            local, shared = (statistics.median(times[name]) for name in BUDGETS)
            added = [
                1e6 * (s - loc) for s, loc in zip(times["shared"], times["local"], strict=True)
            ]
            found = [
                Row(
                    "shared budget: added wall time a model call (reserve + settle)",
                    f"+{statistics.median(added):.0f} us ({shared / local:.2f}x)",
                    f"{min(added):.0f} to {max(added):.0f} us",
                    "",
                ),
                Row(
                    "  a model call with a budget of the run alone, for scale",
                    f"{1e6 * local:.0f} us",
                    "",
                    "",
                ),
            ]
            rates = {name: fleet(name, server.url) for name in BUDGETS}
            found.append(
                Row(
                    "model calls a second from 4 worker processes, shared budget",
                    f"{rates['shared']:,.0f}/s ({rates['shared'] / rates['local']:.2f}x)",
                    f"local-only budget: {rates['local']:,.0f}/s",
                    "",
                )
            )
            return found
        finally:
            server.stop()


if __name__ == "__main__":
    render_events_then_drop_them()
    worker(sys.argv[1], sys.argv[2], float(sys.argv[3]))
