"""The sidecar's HTTP API, in process: auth, policies, events, cancels, reload, no 5xx."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from watchdog._metrics import Metrics
from watchdog._sidecar import PolicySource, create_app
from watchdog.testing import capture_events

TOKEN = "s3cret-token"
GOOD = "version: 1\npolicies:\n- {name: steps, step_count: {max_steps: 10}}\n"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policies.yaml"
    path.write_text(GOOD)
    return path


@pytest.fixture
def app(policy_file: Path) -> Any:
    source = PolicySource(str(policy_file), Metrics(CollectorRegistry()))
    return create_app(source, token=TOKEN, poll_interval=3600, worker_timeout=60)


@pytest.fixture
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


def started(run_id: str, graph: str = "agent") -> dict[str, Any]:
    return {"event": "watchdog.run_started", "run_id": run_id, "graph": graph, "thread_id": "t"}


def finished(run_id: str, outcome: str, graph: str = "agent") -> dict[str, Any]:
    return {
        "event": "watchdog.run_finished",
        "run_id": run_id,
        "graph": graph,
        "outcome": outcome,
        "elapsed_s": 1.5,
        "steps": 4,
        "input_tokens": 100,
        "output_tokens": 20,
    }


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/policies/reload", None),
        ("POST", "/v1/events", {"worker": "w", "events": [started("r-1")]}),
        ("POST", "/v1/runs/r-1/cancel", {"reason": "stop"}),
        ("GET", "/v1/commands?worker=w&wait=0", None),
    ],
)
@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}]
)
def test_mutating_endpoints_answer_401_without_the_token_and_change_nothing(
    client: TestClient, method: str, path: str, body: Any, headers: dict[str, str]
) -> None:
    before = (client.get("/metrics")).text
    answer = client.request(method, path, json=body, headers=headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert (client.get("/v1/runs")).json() == {"runs": []}
    after = samples((client.get("/metrics")).text)
    assert {k: v for k, v in after.items() if "created" not in k[0]} == {
        k: v for k, v in samples(before).items() if "created" not in k[0]
    }


def test_events_build_the_live_run_table_and_the_pods_metrics(
    client: TestClient,
) -> None:
    batch = [started("r-1"), started("r-2", "billing"), finished("r-2", "completed", "billing")]
    answer = client.post("/v1/events", json={"worker": "w-1", "events": batch}, headers=AUTH)
    assert answer.json() == {"accepted": 3}
    cancel = {
        "event": "watchdog.run_cancelled",
        "run_id": "r-1",
        "graph": "agent",
        "policy": "steps",
        "kind": "step_count",
        "phase": "drained",
        "latency_s": 0.002,
    }
    client.post(
        "/v1/events",
        json={"worker": "w-1", "events": [cancel, finished("r-1", "cancelled")]},
        headers=AUTH,
    )
    assert (client.get("/v1/runs")).json() == {"runs": []}
    values = samples((client.get("/metrics")).text)
    assert values[("watchdog_runs_started_total", (("graph", "agent"),))] == 1
    assert (
        values[("watchdog_runs_finished_total", (("graph", "billing"), ("outcome", "completed")))]
        == 1
    )
    key = (("graph", "agent"), ("kind", "step_count"), ("phase", "drained"), ("policy", "steps"))
    assert values[("watchdog_cancellations_total", key)] == 1
    assert values[("watchdog_tokens_total", (("graph", "agent"), ("type", "input")))] == 100
    assert values[("watchdog_active_runs", (("graph", "agent"),))] == 0
    assert values[("watchdog_sidecar_events_total", ())] == 5


def test_a_cancel_is_delivered_to_the_worker_that_owns_the_run(
    client: TestClient,
) -> None:
    client.post("/v1/events", json={"worker": "w-2", "events": [started("r-9")]}, headers=AUTH)
    assert (client.get("/v1/runs/r-9")).json()["worker"] == "w-2"
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(client.get, "/v1/commands?worker=w-2&wait=5", headers=AUTH)
        answer = client.post("/v1/runs/r-9/cancel", json={"reason": "ops said so"}, headers=AUTH)
        commands = waiting.result(timeout=10).json()
    assert answer.status_code == 202
    assert commands == {"commands": [{"type": "cancel", "run_id": "r-9", "reason": "ops said so"}]}
    assert (client.post("/v1/runs/nope/cancel", headers=AUTH)).status_code == 404
    assert (client.get("/v1/runs/nope")).status_code == 404


def test_policies_are_served_with_an_etag(client: TestClient) -> None:
    answer = client.get("/v1/policies")
    assert answer.json()["files"] == {"policies.yaml": GOOD}
    again = client.get("/v1/policies", headers={"If-None-Match": answer.headers["etag"]})
    assert again.status_code == 304


def test_a_broken_edit_is_refused_reported_and_the_last_good_set_kept(
    client: TestClient, policy_file: Path
) -> None:
    good_hash = (client.get("/readyz")).json()["policies"]["hash"]
    policy_file.write_text(GOOD.replace("max_steps: 10", "max_steps: -1"))
    with capture_events() as events:
        answer = client.post("/v1/policies/reload", headers=AUTH)
    assert answer.json()["hash"] == good_hash
    assert (
        "max_steps: expected a whole number greater than 0, got -1" in answer.json()["reload_error"]
    )
    ready = (client.get("/readyz")).json()
    assert ready["policies"]["reload_error"] == answer.json()["reload_error"]
    assert [e["event"] for e in events] == ["watchdog.policy_reload_failed"]
    assert (client.get("/v1/policies")).json()["files"] == {"policies.yaml": GOOD}
    values = samples((client.get("/metrics")).text)
    assert values[("watchdog_policy_reloads_total", (("result", "failed"),))] == 1
    policy_file.write_text(GOOD.replace("10", "5"))
    answer = client.post("/v1/policies/reload", headers=AUTH)
    assert (answer.json()["reload_error"], answer.json()["hash"] != good_hash) == (None, True)


def test_a_workers_runs_leave_the_table_after_its_timeout_and_count_as_lost(app: Any) -> None:
    state = app.state.sidecar
    now = [100.0]
    state.clock = lambda: now[0]
    state.ingest("w-3", [started("r-1"), started("r-2", "billing")])
    state.ingest("w-4", [started("r-3")])
    now[0] += 30
    state.worker("w-4")  # w-4 polled for commands; w-3 went silent
    now[0] += 40
    state.reap()
    assert sorted(state.runs) == ["r-3"]
    assert (
        state.registry.get_sample_value("watchdog_sidecar_runs_lost_total", {"graph": "billing"})
        == 1
    )


def _app_for_the_schema() -> Any:
    directory = Path(tempfile.mkdtemp(prefix="watchdog-sidecar-schema-"))
    (directory / "policies.yaml").write_text(GOOD)
    source = PolicySource(str(directory), Metrics(CollectorRegistry()))
    return create_app(source, token=TOKEN, poll_interval=3600, worker_timeout=60)


schema = schemathesis.openapi.from_asgi("/openapi.json", _app_for_the_schema())


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_makes_the_sidecar_fail(case: Any) -> None:
    if case.path == "/v1/commands" and isinstance(case.query, dict):
        case.query["wait"] = 0  # a long-poll would hold the test for its whole wait
    for headers in ({}, AUTH):
        response = case.call(headers=headers)
        assert response.status_code < 500, response.text
