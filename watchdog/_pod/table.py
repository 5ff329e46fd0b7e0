"""The pod's live-run table: its workers, their runs, the commands queued for them, and the
metrics computed from their events (the sidecar's state, without its HTTP)."""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase
from pydantic import BaseModel, Field

from .._core.trace import Trace, TraceError
from .._sinks import events as _events
from .._sinks import schema
from .._sinks.metrics import record_metrics
from .link import TRACE_EVENT
from .policy_source import PolicySource
from .run_api import timestamp

__all__ = ["Ack", "Command", "LiveRun", "RunRow", "SidecarState", "WorkerRow"]

# Label values from workers: see LabelBounds. The run table keeps this much of each text.
MAX_LABEL_LENGTH = 128
MAX_LABEL_VALUES = 100
MAX_SERIES = 1000
OVERFLOW = "__overflow__"
MAX_TABLE_TEXT = 256
MAX_RUN_POLICIES = 50
MAX_RUNS = 20_000
MAX_ENDED_RUNS = 1000  # ended runs kept for GET /v1/runs/{run_id}
MAX_WORKERS = 1000
MAX_TRACES = 1000  # the traces of the pod's last runs, kept for GET /v1/traces
# What the run table takes of a worker's numbers: counts up to the largest integer every JSON
# reader keeps exact, times up to the last second RFC 3339 (and datetime) can write.
MAX_COUNT = 2**53
MAX_EPOCH = 253_402_300_799.0  # 9999-12-31T23:59:59Z


WorkerKey = tuple[str, str]  # a worker's name, and the incarnation of its process


@dataclass
class CancelCommand:
    """A cancel on its way to the worker that owns the run: queued, then sent in the answer
    to a long-poll, then ``taken`` when the worker acknowledges it with the next one."""

    id: str
    run_id: str
    reason: str
    requested_at: float = field(default_factory=time.time)
    taken: asyncio.Event = field(default_factory=asyncio.Event)
    applied: bool | None = None  # whether the worker's cancel stopped the run
    live: bool | None = None  # whether the worker had the run at all

    def as_message(self) -> dict[str, Any]:
        return {"id": self.id, "type": "cancel", "run_id": self.run_id, "reason": self.reason}

    def as_dict(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "requested_at": timestamp(self.requested_at),
            "delivered": self.taken.is_set(),
            "applied": self.applied,
        }


@dataclass
class ResetCommand:
    """A reset of a thread's ``scope: thread`` totals, sent to one worker process: it resets
    them in the checkpointers it knows. ``checkpointers``: how many held totals of the
    thread, once the worker has taken it."""

    id: str
    thread_id: str
    taken: asyncio.Event = field(default_factory=asyncio.Event)
    checkpointers: int | None = None

    def as_message(self) -> dict[str, Any]:
        return {"id": self.id, "type": "reset_thread_totals", "thread_id": self.thread_id}


Command = CancelCommand | ResetCommand


@dataclass
class RunRow:
    run_id: str
    worker: str
    incarnation: str
    thread_id: str | None
    graph: str
    started_at: float | None  # epoch seconds, as its worker says; None until one says
    status: str = "running"
    policies: list[str] = field(default_factory=list)
    cancel: CancelCommand | None = None  # the latest cancel asked for through the sidecar
    finished_at: float | None = None
    steps: int = 0
    tokens: int = 0
    duration: float | None = None  # seconds, once it ended

    @property
    def owner(self) -> WorkerKey:
        return (self.worker, self.incarnation)

    def progressed(
        self, steps: object = None, tokens: object = None, started_at: object = None
    ) -> None:
        """What its worker says of the run; a value that is not a number >= 0 is ignored."""
        if (count := schema.finite(steps)) is not None:
            self.steps = int(min(count, MAX_COUNT))
        if (count := schema.finite(tokens)) is not None:
            self.tokens = int(min(count, MAX_COUNT))
        if self.started_at is None:
            self.started_at = _moment(started_at)

    def as_dict(self, now: float) -> dict[str, Any]:
        """The run as the API shows it, ``now`` (epoch seconds) being when it is asked."""
        elapsed = self.duration
        if elapsed is None and self.started_at is not None:
            elapsed = round(max(0.0, now - self.started_at), 3)
        return {
            "run_id": self.run_id,
            "worker": self.worker,
            "incarnation": self.incarnation,
            "thread_id": self.thread_id,
            "graph": self.graph,
            "status": self.status,
            "started_at": None if self.started_at is None else timestamp(self.started_at),
            "finished_at": None if self.finished_at is None else timestamp(self.finished_at),
            "elapsed_s": elapsed,
            "steps": self.steps,
            "tokens": self.tokens,
            "policies": self.policies,
            "cancel": None if self.cancel is None else self.cancel.as_dict(),
        }


class LabelBounds:
    """Keeps the label values workers send bounded, whoever holds the token.

    A value longer than ``MAX_LABEL_LENGTH``, or new once a label has ``MAX_LABEL_VALUES``
    values, is collapsed into ``__overflow__``, and so is a new label set once a metric has
    ``MAX_SERIES``; each collapse is counted in ``watchdog_sidecar_label_overflow_total``.
    A label takes the same values in every metric, so ``graph`` stays one dimension.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._values: dict[str, set[str]] = {}
        self._overflow = Counter(
            "watchdog_sidecar_label_overflow",
            f"Label values from workers collapsed into {OVERFLOW}: too long, or new once a "
            f"label had {MAX_LABEL_VALUES} values (label), or new label sets once a metric "
            f"had {MAX_SERIES} (label *).",
            ["metric", "label"],
            registry=registry,
        )

    def value(self, metric: str, label: str, value: str) -> str:
        known = self._values.setdefault(label, set())
        if value in known:
            return value
        if len(value) > MAX_LABEL_LENGTH or len(known) >= MAX_LABEL_VALUES:
            self.overflowed(metric, label)
            return OVERFLOW
        known.add(value)
        return value

    def overflowed(self, metric: str, label: str) -> None:
        self._overflow.labels(metric, label).inc()


class _Children:
    """A metric's children by their label values, looked up without ``labels()``, and
    bounded by ``LabelBounds``.

    ``labels()`` takes a lock and checks its arguments on every call, which made it most of
    the cost of ingesting an event. The children are the metric's own: this holds no label
    set the metric does not.
    """

    __slots__ = ("_bounds", "_children", "_labels", "_metric", "_name", "_series")

    def __init__(self, metric: MetricWrapperBase, bounds: LabelBounds) -> None:
        self._metric = metric
        self._name = metric._name
        self._bounds = bounds
        self._labels: tuple[str, ...] = metric._labelnames
        self._children: dict[tuple[str, ...], Any] = {}  # values as sent, when kept as sent
        self._series: dict[tuple[str, ...], Any] = {}  # every label set, as bounded

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._bounded(values)
        return child

    def _bounded(self, values: tuple[str, ...]) -> Any:
        bounds = self._bounds
        kept = tuple(
            bounds.value(self._name, label, value)
            for label, value in zip(self._labels, values, strict=True)
        )
        child = self._series.get(kept)
        if child is None:
            if len(self._series) >= MAX_SERIES:
                bounds.overflowed(self._name, "*")
                kept = (OVERFLOW,) * len(values)
                child = self._series.get(kept)
            if child is None:
                child = self._series[kept] = self._metric.labels(*kept)
        if kept == values:
            self._children[values] = child
        return child


@dataclass
class WorkerRow:
    """One worker process: its name may be shared (two containers of a pod, a restarted
    container), the incarnation its link drew at start is not."""

    worker: str
    incarnation: str
    last_seen: float
    runs: set[str] = field(default_factory=set)  # the ids of its runs in the table
    queued: list[Command] = field(default_factory=list)  # to send at its next poll
    sent: dict[str, Command] = field(default_factory=dict)  # sent, not acknowledged
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    polling: int = 0  # long-polls in progress: a worker waiting for commands is alive
    # Runs whose end arrived since the worker last listed its live runs: a list taken just
    # before that end must not bring them back.
    ended_since_sync: set[str] = field(default_factory=set)

    @property
    def key(self) -> WorkerKey:
        return (self.worker, self.incarnation)


class BackgroundLoop:
    """One of the sidecar's background loops: it survives any error in a round, reports it
    (a ``watchdog.sidecar_loop_failed`` event, ``watchdog_sidecar_loop_errors_total``,
    ``/readyz``), backs off while the errors last, and goes on."""

    MAX_BACKOFF = 30.0

    def __init__(self, name: str, errors: Counter) -> None:
        self.name = name
        self.errors = errors.labels(name)
        self.failures = 0  # in a row
        self.error_count = 0
        self.last_error: str | None = None

    async def run(self, step: Callable[[], object], interval: float) -> None:
        while True:
            backoff = interval * 2 ** min(self.failures, 10)
            await asyncio.sleep(min(backoff, max(interval, self.MAX_BACKOFF)))
            self.once(step)

    def once(self, step: Callable[[], object]) -> None:
        try:
            step()
        except Exception as error:
            self.failed(error)
        else:
            self.failures = 0

    def failed(self, error: Exception) -> None:
        self.failures += 1
        self.error_count += 1
        self.errors.inc()
        described = f"{type(error).__name__}: {error}"
        if self.failures == 1 or described != self.last_error:  # not once a poll
            _events.emit(
                "sidecar_loop_failed",
                loop=self.name,
                error=described,
                failures=self.failures,
                traceback="".join(traceback.format_exception(error)),
            )
        self.last_error = described

    def as_dict(self) -> dict[str, Any]:
        return {
            "errors": self.error_count,
            "failing": self.failures > 0,
            "last_error": self.last_error,
        }


class SidecarState:
    """The live-run table of the pod, its workers, and the metrics computed from events.

    No lock: only the server's event loop touches it, and no method awaits part-way.
    """

    def __init__(
        self,
        source: PolicySource,
        registry: CollectorRegistry,
        *,
        worker_timeout: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.registry = registry
        self.metrics = source.metrics
        self.worker_timeout = worker_timeout
        self.clock = clock
        self.runs: dict[str, RunRow] = {}
        self.workers: dict[WorkerKey, WorkerRow] = {}
        # Runs that ended lately, so a client that cancelled one can see how it ended.
        self.ended: collections.OrderedDict[str, RunRow] = collections.OrderedDict()
        self._command_ids = itertools.count(1)
        # Set as the server stops: uvicorn waits for every open request before it exits, so
        # the long-polls and the cancels waiting for their worker are answered at once.
        self.closing = asyncio.Event()
        self.events_ingested = Counter(
            "watchdog_sidecar_events", "Events received from workers.", registry=registry
        )
        self.runs_lost = Counter(
            "watchdog_sidecar_runs_lost",
            "Runs that left the table without their end: their worker went silent, or no "
            "longer had them when it listed its live runs (their last events were lost).",
            ["graph"],
            registry=registry,
        )
        self.workers_connected = Gauge(
            "watchdog_sidecar_workers", "Workers heard from recently.", registry=registry
        )
        self.workers_connected.set_function(lambda: len(self.workers))
        loop_errors = Counter(
            "watchdog_sidecar_loop_errors",
            "Errors in the sidecar's background loops, by loop; each was reported and the "
            "loop went on.",
            ["loop"],
            registry=registry,
        )
        self._loop_errors = loop_errors
        self.loops = {
            name: BackgroundLoop(name, loop_errors) for name in ("policy_watch", "reaper")
        }
        self.traces: collections.deque[Trace] = collections.deque(maxlen=MAX_TRACES)
        self.traces_refused = Counter(
            "watchdog_sidecar_traces_refused",
            "Run traces from workers that could not be read, and were left out.",
            registry=registry,
        )
        self.runs_untracked = Counter(
            "watchdog_sidecar_runs_untracked",
            f"Runs left out of the run table, which holds at most {MAX_RUNS} runs.",
            registry=registry,
        )
        bounds = LabelBounds(registry)
        # Every labelled metric an event may move: a batch must never meet one it lacks.
        self._children: dict[MetricWrapperBase, _Children] = {
            metric: _Children(metric, bounds)
            for metric in vars(self.metrics).values()
            if isinstance(metric, MetricWrapperBase) and metric._labelnames
        }
        self._active_runs = self._children[self.metrics.active_runs]
        self._runs_lost = _Children(self.runs_lost, bounds)
        self._policy_lists: dict[tuple[str, ...], list[str]] = {}

    def worker(self, worker: str, incarnation: str = "") -> WorkerRow:
        """A worker's row, made on first contact, and marked as heard from now."""
        key = (worker, incarnation)
        row = self.workers.get(key)
        if row is None:
            if len(self.workers) >= MAX_WORKERS:
                msg = f"the sidecar already has {MAX_WORKERS} workers; try again later"
                raise HTTPException(status_code=503, detail=msg)
            row = self.workers[key] = WorkerRow(worker, incarnation, self.clock())
        row.last_seen = self.clock()
        return row

    def ingest(
        self,
        worker: str,
        events: list[dict[str, Any]],
        *,
        incarnation: str = "",
        live: list[LiveRun] | None = None,
    ) -> None:
        """Apply a worker's batch of events to the live-run table and the pod's metrics,
        then, when it sent the list of its ``live`` runs, make its part of the table that.

        Counters and gauges move once a batch by what the whole batch adds up to, as each
        ``inc`` takes a lock; a batch is applied within one step of the event loop, so no
        scrape sees part of one. A field of any JSON type is taken without error (a wrong
        one counts as absent): a worker never has its batch refused for what one event holds.
        """
        row = self.worker(worker, incarnation)
        batch = _Batch(self._children)
        for event in events:
            self._apply(row, event, batch)
        self.events_ingested.inc(len(events))
        batch.move()
        if live is not None:
            self.reconcile(row, live)

    def reconcile(self, worker: WorkerRow, live: list[LiveRun]) -> None:
        """Make the worker's part of the table its runs as it listed them.

        The list was taken after every event sent before it, so a run of the table that is
        not in it has ended and its end was lost (dropped from a full buffer, in a refused
        batch): it leaves the table, counted as lost. A listed run the table lacks (its
        start was lost, or this sidecar restarted since) comes in.
        """
        listed = {entry[0]: entry for entry in live}
        for run_id in [r for r in worker.runs if r not in listed]:
            self._lose(run_id)
        for run_id, graph, thread_id, *progress in listed.values():
            row = self.runs.get(run_id)
            if row is None and run_id not in worker.ended_since_sync:
                row = RunRow(
                    run_id=run_id,
                    worker=worker.worker,
                    incarnation=worker.incarnation,
                    thread_id=thread_id and thread_id[:MAX_TABLE_TEXT],
                    graph=graph[:MAX_TABLE_TEXT],
                    started_at=None,
                )
                self._add(row)
            if row is not None and self.runs.get(run_id) is row and row.owner == worker.key:
                row.progressed(*progress)
        worker.ended_since_sync.clear()

    def _apply(self, worker: WorkerRow, record: Mapping[str, Any], batch: _Batch) -> None:
        if record.get("event") == TRACE_EVENT:
            self._keep_trace(record.get("trace"))
            return
        event = schema.read_event(record)
        if event is None:
            return
        record_metrics(self.metrics, event, batch)
        match event:
            case schema.RunStarted():
                row = RunRow(
                    run_id=event.run_id,
                    worker=worker.worker,
                    incarnation=worker.incarnation,
                    thread_id=event.thread_id and event.thread_id[:MAX_TABLE_TEXT],
                    graph=event.graph[:MAX_TABLE_TEXT],
                    started_at=_moment(record.get("timestamp")),
                    policies=self._policies(event.policies),
                )
                known = self.runs.get(event.run_id)
                if known is not None and known.owner == row.owner:  # listed before it started
                    row.cancel, row.steps, row.tokens = known.cancel, known.steps, known.tokens
                    self.runs[event.run_id] = row
                else:
                    self._add(row, batch.moves)
            case schema.RunFinished():
                status = event.outcome[:MAX_TABLE_TEXT]
                ended = self._end(event.run_id, worker, status, batch.moves)
                if ended is not None:
                    ended.progressed(event.steps, event.tokens)
                    if event.elapsed_s is not None:
                        ended.duration = event.elapsed_s
            case schema.DrainRequested() if event.run_id in self.runs:
                self.runs[event.run_id].status = "cancelling"

    def _keep_trace(self, record: object) -> None:
        """Keep a run's trace, among the pod's last ``MAX_TRACES``; one that is not a trace
        is left out (and its batch still taken)."""
        try:
            trace = Trace.from_record(record)
        except (TraceError, TypeError, ValueError):
            self.traces_refused.inc()
            return
        self.traces.append(trace)

    # -- the run table: every row comes in and leaves through these --------------------------

    def _add(self, row: RunRow, moves: dict[Any, float] | None = None) -> None:
        if len(self.runs) >= MAX_RUNS or len(row.run_id) > MAX_TABLE_TEXT:
            self.runs_untracked.inc()
            return
        if (known := self.runs.get(row.run_id)) is not None:  # another worker said it first
            self._drop(known)
        self.runs[row.run_id] = row
        if (owner := self.workers.get(row.owner)) is not None:
            owner.runs.add(row.run_id)
        if moves is None:
            self._active_runs(row.graph).inc()
        else:
            _move(moves, self._active_runs(row.graph), 1)

    def _drop(self, row: RunRow, moves: dict[Any, float] | None = None) -> None:
        del self.runs[row.run_id]
        if (owner := self.workers.get(row.owner)) is not None:
            owner.runs.discard(row.run_id)
        if moves is None:
            self._active_runs(row.graph).dec()
        else:
            _move(moves, self._active_runs(row.graph), -1)

    def _end(
        self, run_id: str, worker: WorkerRow, status: str, moves: dict[Any, float] | None = None
    ) -> RunRow | None:
        """A run of ``worker`` ended: it leaves the table, and is kept a while in ``ended``.
        Its duration is until now, unless its worker says otherwise. None when the table did
        not have it."""
        worker.ended_since_sync.add(run_id)
        row = self.runs.get(run_id)
        if row is None or row.owner != worker.key:
            return None
        self._drop(row, moves)
        row.status, row.finished_at = status, time.time()
        if row.started_at is not None:
            row.duration = round(max(0.0, row.finished_at - row.started_at), 3)
        self.ended[run_id] = row
        self.ended.move_to_end(run_id)
        while len(self.ended) > MAX_ENDED_RUNS:
            self.ended.popitem(last=False)
        return row

    def _lose(self, run_id: str) -> None:
        row = self.runs[run_id]
        owner = self.workers.get(row.owner)
        if owner is not None:
            self._end(run_id, owner, "lost")
        else:
            self._drop(row)
        self._runs_lost(row.graph).inc()

    def _policies(self, policies: list[str]) -> list[str]:
        """A run's policy names, bounded, and shared by the runs that have the same."""
        names = tuple(p[:MAX_LABEL_LENGTH] for p in policies[:MAX_RUN_POLICIES])
        shared = self._policy_lists.get(names)
        if shared is None:
            shared = list(names)
            if len(self._policy_lists) < MAX_RUNS:
                self._policy_lists[names] = shared
        return shared

    # -- cancels ---------------------------------------------------------------------------

    def cancel(self, row: RunRow, reason: str) -> CancelCommand:
        """Queue a cancel for the worker that owns the run, and wake its long-poll."""
        worker = self.workers.get(row.owner) or self.worker(*row.owner)
        command = CancelCommand(f"c-{next(self._command_ids)}", row.run_id, reason)
        row.cancel = command
        worker.queued.append(command)
        worker.wake.set()
        return command

    def reset_thread_totals(self, thread_id: str) -> dict[WorkerKey, ResetCommand]:
        """Queue a reset of a thread's totals for every worker process, and wake them."""
        commands = {}
        for key, worker in self.workers.items():
            command = ResetCommand(f"c-{next(self._command_ids)}", thread_id)
            worker.queued.append(command)
            worker.wake.set()
            commands[key] = command
        return commands

    def acknowledged(self, worker: WorkerRow, acks: list[Ack]) -> None:
        """The worker took these commands. A worker acknowledges what it got with its next
        poll, so what is still unacknowledged then never reached it: it is sent again."""
        for ack in acks:
            command = worker.sent.pop(ack.id, None)
            if isinstance(command, ResetCommand):
                command.checkpointers = ack.checkpointers or 0
                command.taken.set()
            elif command is not None:
                command.applied, command.live = ack.applied, ack.live
                command.taken.set()
                if not ack.live and command.run_id in worker.runs:
                    self._lose(command.run_id)  # the worker does not have it: a ghost
        if worker.sent:
            worker.queued[:0] = worker.sent.values()
            worker.sent.clear()

    def take_commands(self, worker: WorkerRow) -> list[dict[str, Any]]:
        taken, worker.queued = worker.queued, []
        for command in taken:
            worker.sent[command.id] = command
        return [command.as_message() for command in taken]

    def close(self) -> None:
        """The server is stopping: every long-poll answers now, and every wait for a cancel
        to be taken ends."""
        self.closing.set()
        for worker in self.workers.values():
            worker.wake.set()

    def add_loop(self, name: str) -> BackgroundLoop:
        """One more background loop, reported with the others."""
        loop = self.loops[name] = BackgroundLoop(name, self._loop_errors)
        return loop

    def reap(self) -> None:
        """Forget workers not heard from in ``worker_timeout``; their runs are lost."""
        horizon = self.clock() - self.worker_timeout
        silent = [
            row for row in self.workers.values() if row.last_seen < horizon and not row.polling
        ]
        for worker in silent:
            for run_id in list(worker.runs):
                self._lose(run_id)
            del self.workers[worker.key]


def _move(moves: dict[Any, float], child: Any, amount: float) -> None:
    moves[child] = moves.get(child, 0.0) + amount


class _Batch:
    """``record_metrics`` over one batch of events: label values bounded, and each counter
    and gauge moved once, by what the whole batch adds up to, as each ``inc`` takes a lock."""

    def __init__(self, children: Mapping[MetricWrapperBase, _Children]) -> None:
        self._children = children
        self.moves: dict[Any, float] = {}  # counter or gauge child -> how much it moves

    def count(self, metric: Counter, *labels: str, amount: float = 1) -> None:
        _move(self.moves, self._children[metric](*labels) if labels else metric, amount)

    def observe(self, metric: Histogram, *labels: str, value: float) -> None:
        self._children[metric](*labels).observe(value)

    def move(self) -> None:
        for child, amount in self.moves.items():
            if amount:
                child.inc(amount)


def _moment(value: object) -> float | None:
    """A time from a worker, in epoch seconds; None when it is not one the API can write."""
    seconds = schema.finite(value)
    return seconds if seconds is not None and seconds < MAX_EPOCH else None


# What a worker lists of each live run: run id, graph, thread id, and then steps, tokens and
# when it started (epoch seconds), which workers of an older version leave out. Those three
# are taken as any JSON: one that is not a number >= 0 is ignored, the batch still taken.
LiveRun = tuple[str, str, str | None] | tuple[str, str, str | None, Any, Any, Any]


class Ack(BaseModel):
    id: str = Field(max_length=64)
    applied: bool  # the cancel stopped the run; the reset found totals to reset
    live: bool = True  # the worker had the run
    checkpointers: int | None = Field(default=None, ge=0)  # a reset: those that held totals
