"""Prometheus metrics. Names and labels are a contract; labels are bounded (no run ids).

``record_metrics`` is the one mapping from events to metrics: the supervisor applies it to
each event it logs, the sidecar to each event its workers send. ``watchdog_active_runs`` is
not in it: it is the size of a table of live runs, the supervisor's or the sidecar's.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, ClassVar, Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from . import schema

__all__ = ["Direct", "Metrics", "Tally", "record_metrics"]

DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
STEP_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """The watchdog's metrics on one registry.

    A registry refuses a second metric of the same name, so every supervisor on the same
    registry shares one ``Metrics``: use ``Metrics.on(registry)``.
    """

    # _lock guards _by_registry: two supervisors made at once must not register twice.
    _by_registry: ClassVar[weakref.WeakKeyDictionary[CollectorRegistry, Metrics]] = (
        weakref.WeakKeyDictionary()
    )
    _lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def on(cls, registry: CollectorRegistry | None = None) -> Metrics:
        registry = REGISTRY if registry is None else registry
        with cls._lock:
            metrics = cls._by_registry.get(registry)
            if metrics is None:
                metrics = cls._by_registry[registry] = cls(registry)
        return metrics

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.direct = Direct()
        self.runs_started = Counter(
            "watchdog_runs_started", "Supervised runs started.", ["graph"], registry=registry
        )
        self.runs_finished = Counter(
            "watchdog_runs_finished",
            "Supervised runs finished, by outcome: completed, cancelled or failed.",
            ["graph", "outcome"],
            registry=registry,
        )
        self.cancellations = Counter(
            "watchdog_cancellations",
            "Runs cancelled, by the policy and kind that cancelled them and the phase reached: "
            "drained (at a step boundary) or hard (task cancelled).",
            ["graph", "policy", "kind", "phase"],
            registry=registry,
        )
        self.violations = Counter(
            "watchdog_violations",
            "Policy violations, in enforce mode and in audit mode (would cancel).",
            ["graph", "policy", "kind", "mode"],
            registry=registry,
        )
        self.active_runs = Gauge(
            "watchdog_active_runs", "Supervised runs in progress.", ["graph"], registry=registry
        )
        self.run_duration = Histogram(
            "watchdog_run_duration_seconds",
            "Wall time of supervised runs.",
            ["graph", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.run_steps = Histogram(
            "watchdog_run_steps",
            "Supersteps per supervised run, subgraphs included.",
            ["graph", "outcome"],
            buckets=STEP_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "watchdog_tokens",
            "Tokens reported by chat models in supervised runs, by type: input or output.",
            ["graph", "type"],
            registry=registry,
        )
        self.cancel_latency = Histogram(
            "watchdog_cancel_latency_seconds",
            "Time from a violation being found to the run being stopped.",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.policy_reloads = Counter(
            "watchdog_policy_reloads",
            "Policy reloads, by result: ok or failed.",
            ["result"],
            registry=registry,
        )
        self.policy_files_valid = Gauge(
            "watchdog_policy_files_valid",
            "1 when the policy files as they are now load; 0 when they do not (an invalid "
            "edit, or files that cannot be read), while the last good set stays in force.",
            registry=registry,
        )
        self.policy_files_valid.set(1)  # nothing fails to load until a watch says so
        self.events_dropped = Counter(
            "watchdog_sidecar_events_dropped",
            "Events a worker dropped: its buffer was full while the sidecar was away, or the "
            "sidecar refused their batch.",
            registry=registry,
        )
        self.activity_after_cancel = Counter(
            "watchdog_activity_after_cancel",
            "Nodes, LLM calls and tool calls that started under a run already recorded "
            "cancelled, by activity: each was refused; any at all is a cancel that did not "
            "hold (an orphaned thread, a task the run spawned).",
            ["graph", "activity"],
            registry=registry,
        )
        self.shared_budget_errors = Counter(
            "watchdog_shared_budget_errors",
            "Shared-budget operations done without Redis, by policy (it did not answer, or "
            "failed within the last second): a reservation (decided on the worker's local "
            "share) or a settlement (kept, and sent once Redis answers).",
            ["policy"],
            registry=registry,
        )
        self.internal_errors = Counter(
            "watchdog_internal_errors",
            "Errors inside the watchdog itself; each was logged and the run went on.",
            registry=registry,
        )


class Tally(Protocol):
    """How ``record_metrics`` moves a metric: at once, or summed over a batch (the sidecar)."""

    def count(self, metric: Counter, *labels: str, amount: float = 1) -> None: ...

    def observe(self, metric: Histogram, *labels: str, value: float) -> None: ...


class Direct:
    """Moves each metric at once, through a cache of its children: ``labels()`` takes a lock
    and checks its arguments on every call, and a run's start and end moved six of them.

    The children are bounded as the labels are (graph names, outcomes, policies, kinds).
    No lock: two threads that miss at once both ask ``labels()``, which gives them the same
    child.
    """

    def __init__(self) -> None:
        self._children: dict[tuple[object, tuple[str, ...]], Any] = {}

    def child(self, metric: MetricWrapperBase, *labels: str) -> Any:
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def count(self, metric: Counter, *labels: str, amount: float = 1) -> None:
        (self.child(metric, *labels) if labels else metric).inc(amount)

    def observe(self, metric: Histogram, *labels: str, value: float) -> None:
        self.child(metric, *labels).observe(value)


def record_metrics(metrics: Metrics, event: schema.Event, tally: Tally | None = None) -> None:
    """Move the metrics ``event`` moves, at once unless a ``tally`` sums them (the sidecar's
    batches). A number a worker left out counts as 0."""
    if tally is None:
        tally = metrics.direct
    match event:
        case schema.RunStarted():
            tally.count(metrics.runs_started, event.graph)
        case schema.Violation():
            labels = (event.graph, event.policy or "", event.kind, event.mode)
            tally.count(metrics.violations, *labels)
        case schema.RunCancelled():
            labels = (event.graph, event.policy or "", event.kind, event.phase)
            tally.count(metrics.cancellations, *labels)
            tally.observe(metrics.cancel_latency, event.kind, value=event.latency_s or 0.0)
        case schema.RunFinished():
            graph, outcome = event.graph, event.outcome
            tally.count(metrics.runs_finished, graph, outcome)
            tally.observe(metrics.run_duration, graph, outcome, value=event.elapsed_s or 0.0)
            tally.observe(metrics.run_steps, graph, outcome, value=event.steps or 0)
            if event.input_tokens:
                tally.count(metrics.tokens, graph, "input", amount=event.input_tokens)
            if event.output_tokens:
                tally.count(metrics.tokens, graph, "output", amount=event.output_tokens)
        case schema.ActivityAfterCancel():
            tally.count(metrics.activity_after_cancel, event.graph, event.activity)
        case schema.SharedBudgetUnavailable():
            tally.count(metrics.shared_budget_errors, event.policy, amount=event.failures or 0)
        case schema.InternalError():
            tally.count(metrics.internal_errors)
