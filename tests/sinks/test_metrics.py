"""Metrics scraped over real HTTP and parsed with prometheus_client's own parser."""

from __future__ import annotations

import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.graphs import (
    Bodies,
    cancelled_and_completed,
    endless,
    policies,
    react_agent,
    scripted,
    tool_call,
)
from watchdog import RunCancelled, Supervisor
from watchdog._pod.policy_source import PolicySource
from watchdog._pod.table import SidecarState
from watchdog._sinks.metrics import Metrics
from watchdog.testing import FakeClock

LABELS = {
    "watchdog_runs_started": {("graph",)},
    "watchdog_runs_finished": {("graph", "outcome")},
    "watchdog_cancellations": {("graph", "kind", "phase", "policy")},
    "watchdog_violations": {("graph", "kind", "mode", "policy")},
    "watchdog_active_runs": {("graph",)},
    "watchdog_run_duration_seconds": {("graph", "outcome"), ("graph", "le", "outcome")},
    "watchdog_run_steps": {("graph", "outcome"), ("graph", "le", "outcome")},
    "watchdog_tokens": {("graph", "type")},
    "watchdog_cancel_latency_seconds": {("kind",), ("kind", "le")},
    "watchdog_policy_reloads": {("result",)},
    "watchdog_policy_files_valid": {()},
    "watchdog_internal_errors": {()},
    "watchdog_sidecar_events_dropped": {()},
    "watchdog_activity_after_cancel": set(),  # no run here leaves work behind
    "watchdog_shared_budget_errors": set(),  # no budget here is shared
}


@pytest.fixture
def supervisor(registry: CollectorRegistry, clock: FakeClock) -> Iterator[Supervisor]:
    supervisor = Supervisor(
        policies(
            """\
            - {name: steps, step_count: {max_steps: 4}}
            - {name: audit-tokens, mode: audit, token_budget: {max_total_tokens: 100}}
            """
        ),
        registry=registry,
        clock=clock,
    )
    supervisor.reload(supervisor.policies, "test.yaml")
    yield supervisor
    supervisor.close()


def scrape(supervisor: Supervisor) -> dict[str, list[Sample]]:
    server = supervisor.serve_metrics(port=0)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    return {
        family.name: family.samples
        for family in text_string_to_metric_families(text)
        # prometheus_client adds a *_created gauge beside each counter and histogram
        if family.name.startswith("watchdog_") and not family.name.endswith("_created")
    }


def test_metrics_over_http_have_the_contracted_names_labels_and_values(
    supervisor: Supervisor,
) -> None:
    run_ids = [uuid.uuid4() for _ in range(3)]
    looping = supervisor.attach(endless(Bodies(), is_async=False), name="looper")
    with pytest.raises(RunCancelled):
        looping.invoke(
            {"count": 0}, {"run_id": run_ids[0], "configurable": {"thread_id": "thread-1"}}
        )
    agent = supervisor.attach(
        react_agent(scripted(tool_call("one"), AIMessage("done"))), name="agent"
    )
    agent.invoke({"messages": [("user", "hi")]}, {"run_id": run_ids[1]})
    broken = supervisor.attach(
        endless(Bodies(), is_async=False, checkpointer=False).with_config(recursion_limit=2),
        name="broken",
    )
    with pytest.raises(Exception, match="Recursion limit"):
        broken.invoke({"count": 0}, {"run_id": run_ids[2]})

    metrics = scrape(supervisor)

    assert {
        name: {tuple(sorted(sample.labels)) for sample in samples}
        for name, samples in metrics.items()
    } == LABELS
    values = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for samples in metrics.values()
        for sample in samples
    }
    assert values[("watchdog_runs_started_total", (("graph", "looper"),))] == 1
    assert (
        values[
            (
                "watchdog_cancellations_total",
                (
                    ("graph", "looper"),
                    ("kind", "step_count"),
                    ("phase", "drained"),
                    ("policy", "steps"),
                ),
            )
        ]
        == 1
    )
    for graph, outcome in (("looper", "cancelled"), ("agent", "completed"), ("broken", "failed")):
        key = ("watchdog_runs_finished_total", (("graph", graph), ("outcome", outcome)))
        assert values[key] == 1
    assert values[("watchdog_tokens_total", (("graph", "agent"), ("type", "input")))] == 200
    assert values[("watchdog_tokens_total", (("graph", "agent"), ("type", "output")))] == 40
    assert (
        values[
            (
                "watchdog_violations_total",
                (
                    ("graph", "agent"),
                    ("kind", "token_budget"),
                    ("mode", "audit"),
                    ("policy", "audit-tokens"),
                ),
            )
        ]
        == 1
    )
    assert values[("watchdog_active_runs", (("graph", "looper"),))] == 0
    assert values[("watchdog_policy_reloads_total", (("result", "ok"),))] == 1
    assert (
        values[("watchdog_run_steps_count", (("graph", "looper"), ("outcome", "cancelled")))] == 1
    )
    assert values[("watchdog_run_steps_sum", (("graph", "looper"), ("outcome", "cancelled")))] == 5

    label_values = {
        value
        for samples in metrics.values()
        for sample in samples
        for value in sample.labels.values()
    }
    assert not label_values & ({str(r) for r in run_ids} | {"thread-1"}), "ids in labels"


RUN_METRICS = {
    "watchdog_runs_started",
    "watchdog_runs_finished",
    "watchdog_active_runs",
    "watchdog_run_duration_seconds",
    "watchdog_run_steps",
    "watchdog_tokens",
    "watchdog_cancellations",
    "watchdog_violations",
    "watchdog_cancel_latency_seconds",
    "watchdog_activity_after_cancel",
    "watchdog_internal_errors",
}


def run_metrics(
    registry: CollectorRegistry,
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The values of the metrics that runs move."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        if family.name in RUN_METRICS
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def test_a_sidecar_moves_the_same_metrics_from_a_workers_events_as_the_worker(
    supervisor: Supervisor, registry: CollectorRegistry, tmp_path: Path
) -> None:
    events = cancelled_and_completed(supervisor)
    (tmp_path / "policies.yaml").write_text("version: 1\npolicies: []\n")
    pod = CollectorRegistry()
    sidecar = SidecarState(PolicySource(str(tmp_path), Metrics(pod)), pod)

    sidecar.ingest("worker", events)

    embedded = run_metrics(registry)
    assert (
        embedded[("watchdog_runs_finished_total", (("graph", "agent"), ("outcome", "completed")))]
        == 1
    )
    assert embedded[("watchdog_tokens_total", (("graph", "agent"), ("type", "input")))] == 200
    assert run_metrics(pod) == embedded
