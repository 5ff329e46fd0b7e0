"""The sidecar: events a second it ingests from four workers, and what sidecar mode costs a step.

Both figures use a real ``watchdog serve`` on loopback, with a token, started by
``tests.processes.Pod`` as the sidecar tests start it.
"""

from __future__ import annotations

import functools
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry

from tests.processes import TOKEN, Pod
from watchdog import Supervisor, load_policy_text

from .common import ALL_KINDS, Row, interleaved, ratio_row, trivial

WORKERS = 4
INGESTED = ("watchdog_sidecar_events_total", ())


def rows(quick: bool) -> Iterator[Row]:
    yield from ingest_rows(quick)
    yield from overhead_rows(quick)


def ingest_rows(quick: bool) -> list[Row]:
    """Four worker processes push events through their real links as fast as they are taken.

    Supervised runs cannot make 50,000 events/s on a small machine, so each worker hands its
    link events shaped as real runs' (``tests.sidecar_worker.flood``), through the listener
    the link hears the watchdog's events with; the link buffers them and POSTs batches, its
    wire format and all. A round is timed from the first event any worker sent to the moment
    the sidecar's own counter shows every event ingested (polled every 5 ms once all workers
    have handed over their last event, so the poll does not compete during the round). A
    worker whose buffer is full waits, so nothing is dropped; the round fails if anything is.
    """
    per_worker, rounds = (10_000, 3) if quick else (50_000, 5)
    total = WORKERS * per_worker
    rates, waiting = [], []
    with tempfile.TemporaryDirectory(prefix="watchdog-bench-") as directory:
        pod = Pod(Path(directory))
        try:
            pod.start_sidecar(poll_interval=1.0)
            workers = pod.start_workers({f"w-{i}": {"flood": per_worker} for i in range(WORKERS)})
            for _ in range(rounds):
                expected = ingested(pod) + total
                for worker in workers.values():
                    worker.tell(go=True)
                reports = [worker.expect("flooded", timeout=300) for worker in workers.values()]
                while (count := ingested(pod)) < expected:
                    time.sleep(0.005)
                finished = time.time()
                started = min(report["first_sent"] for report in reports)
                dropped = sum(report["dropped"] or 0 for report in reports)
                if count != expected or dropped:
                    msg = f"sent {total} events, the sidecar took {count - expected + total}; "
                    msg += f"the workers dropped {dropped}"
                    raise AssertionError(msg)
                rates.append(total / (finished - started))
                waiting.append(statistics.mean(r["waited_s"] for r in reports))
        finally:
            pod.stop()
    return [
        Row(
            f"sidecar ingest, {WORKERS} workers x {per_worker:,} events",
            f"{statistics.median(rates):,.0f} events/s",
            f"{min(rates):,.0f}-{max(rates):,.0f}",
            ">= 50,000 events/s",
        ),
        Row(
            "  a worker's time waiting on its full buffer",
            f"{statistics.median(waiting):.2f} s median a round",
            f"{min(waiting):.2f}-{max(waiting):.2f} s",
            "",
        ),
    ]


def ingested(pod: Pod) -> float:
    return pod.metrics().get(INGESTED, 0.0)


def overhead_rows(quick: bool) -> list[Row]:
    """The trivial graph bare, embedded and in sidecar mode, interleaved in this process.

    The sidecar serves the same policies the embedded supervisor has. Every repetition runs
    the three in a rotated order, so none always runs first after the others.
    """
    steps, repeats = (500, 5) if quick else (2000, 15)
    graph = trivial(steps, is_async=False, checkpointer=False)
    config = {"recursion_limit": steps + 10}
    with tempfile.TemporaryDirectory(prefix="watchdog-bench-") as directory:
        pod = Pod(Path(directory), policies=ALL_KINDS)
        embedded = Supervisor(load_policy_text(ALL_KINDS), registry=CollectorRegistry())
        remote: Supervisor | None = None
        try:
            pod.start_sidecar(poll_interval=1.0)
            remote = Supervisor.connect(pod.url, TOKEN, registry=CollectorRegistry())
            names = [p.name for p in remote.policies.policies]
            assert names == [p.name for p in embedded.policies.policies], names
            times = interleaved(
                {
                    "bare": functools.partial(graph.invoke, {"n": 0}, config),
                    "embedded": functools.partial(
                        embedded.attach(graph, name="bench").invoke, {"n": 0}, config
                    ),
                    "sidecar": functools.partial(
                        remote.attach(graph, name="bench").invoke, {"n": 0}, config
                    ),
                },
                repeats,
            )
        finally:
            if remote is not None:
                remote.close()
            embedded.close()
            pod.stop()
    bare, embedded_times, sidecar = times["bare"], times["embedded"], times["sidecar"]
    what = f"sync, no checkpointer, {steps} steps"
    overheads = [(s - b) / (e - b) for b, e, s in zip(bare, embedded_times, sidecar, strict=True)]
    of_medians = (statistics.median(s / b for b, s in zip(bare, sidecar, strict=True)) - 1) / (
        statistics.median(e / b for b, e in zip(bare, embedded_times, strict=True)) - 1
    )
    return [
        ratio_row(
            f"sidecar mode / bare, {what}",
            [s / b for b, s in zip(bare, sidecar, strict=True)],
            "",
        ),
        ratio_row(
            f"embedded / bare, {what}",
            [e / b for b, e in zip(bare, embedded_times, strict=True)],
            "<= 1.05x",
        ),
        ratio_row(
            "sidecar mode / embedded",
            [s / e for e, s in zip(embedded_times, sidecar, strict=True)],
            "",
        ),
        Row(
            "sidecar overhead / embedded overhead",
            f"{statistics.median(overheads):.2f}x median, {of_medians:.2f}x of medians",
            f"{min(overheads):.2f}-{max(overheads):.2f}",
            "<= 1.5x",
        ),
    ]
