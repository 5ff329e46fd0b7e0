"""The sidecar's HTTP API, in process: auth, policies, events, cancels, reload, no 5xx."""

from __future__ import annotations

import json
import math
import re
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.processes import RFC_3339, wait_for
from watchdog._pod.policy_source import PolicySource
from watchdog._pod.run_api import MAX_REASON
from watchdog._pod.sidecar import create_app
from watchdog._pod.table import (
    MAX_COUNT,
    MAX_LABEL_LENGTH,
    MAX_RUN_POLICIES,
    MAX_RUNS,
    MAX_SERIES,
    MAX_TABLE_TEXT,
)
from watchdog._sinks import schema as event_schema
from watchdog._sinks.metrics import Metrics, record_metrics
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
        ("POST", "/v1/commands", {"worker": "w", "wait": 0}),
        ("GET", "/v1/runs", None),
        ("GET", "/v1/runs/r-1", None),
        ("GET", "/v1/policies", None),
    ],
)
@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        ({}, False),
        ({"Authorization": TOKEN}, False),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, False),
        ({"Authorization": "Bearer "}, False),
        ({"Authorization": "Bearer wrong"}, True),
        ({"Authorization": f"Bearer {TOKEN}x"}, True),
    ],
    ids=["none", "no scheme", "basic", "empty bearer", "wrong bearer", "longer bearer"],
)
def test_every_v1_endpoint_answers_401_without_the_token_and_changes_nothing(
    client: TestClient,
    method: str,
    path: str,
    body: Any,
    *,
    headers: dict[str, str],
    refused: bool,
) -> None:
    """No bearer token is told one is required; a wrong one that it was refused (RFC 6750)."""
    before = (client.get("/metrics")).text
    answer = client.request(method, path, json=body, headers=headers)
    assert answer.status_code == 401
    if refused:
        assert answer.json() == {"detail": "the bearer token was refused"}
        assert answer.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    else:
        assert answer.json() == {"detail": "a bearer token is required"}
        assert answer.headers["www-authenticate"] == "Bearer"
    assert (client.get("/v1/runs", headers=AUTH)).json() == {"runs": []}
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
    assert (client.get("/v1/runs", headers=AUTH)).json() == {"runs": []}
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


# One event of each kind of the schema, as a worker sends it.
RUN = {"run_id": "r-1", "thread_id": "t", "graph": "agent"}
FINDING = {**RUN, "policy": "steps", "kind": "step_count", "mode": "enforce", "reason": "r"}
EVERY_KIND = [
    started("r-1"),
    {**finished("r-1", "cancelled"), "tokens": 120},
    {"event": "watchdog.violation", **FINDING, "key": "max_steps"},
    {"event": "watchdog.near_limit", **FINDING, "key": "max_steps"},
    {"event": "watchdog.run_cancelled", **FINDING, "phase": "drained", "latency_s": 0.002},
    {"event": "watchdog.drain_requested", **RUN, "reason": "r"},
    {"event": "watchdog.hard_cancel", **RUN, "reason": "r"},
    {
        "event": "watchdog.activity_after_cancel",
        **RUN,
        "activity": "tool_call",
        "activity_name": "search",
    },
    {
        "event": "watchdog.shared_budget_unavailable",
        "policy": "acme-daily",
        "error": "ConnectionError",
        "failures": 7,
    },
    {"event": "watchdog.internal_error", "error": "boom", "traceback": ""},
]


def test_every_kind_of_event_moves_the_pods_metrics_as_it_moves_a_workers(
    client: TestClient,
) -> None:
    kinds = {record["event"].removeprefix("watchdog.") for record in EVERY_KIND}
    assert kinds == {cls.name for cls in event_schema._EVENTS}
    answer = client.post("/v1/events", json={"worker": "w", "events": EVERY_KIND}, headers=AUTH)
    assert answer.status_code == 202, answer.text
    in_process = Metrics(CollectorRegistry())
    for record in EVERY_KIND:
        event = event_schema.read_event(record)
        assert event is not None
        record_metrics(in_process, event)
    expected = samples(generate_latest(in_process.registry).decode())
    pod = samples(client.get("/metrics").text)
    assert {k: v for k, v in pod.items() if k in expected and "created" not in k[0]} == {
        k: v for k, v in expected.items() if "created" not in k[0]
    }
    assert pod[("watchdog_shared_budget_errors_total", (("policy", "acme-daily"),))] == 7


def poll(
    client: TestClient, worker: str, incarnation: str, wait: float = 0, acks: Any = ()
) -> list[dict[str, Any]]:
    body = {"worker": worker, "incarnation": incarnation, "wait": wait, "acks": list(acks)}
    answer = client.post("/v1/commands", json=body, headers=AUTH)
    assert answer.status_code == 200, answer.text
    commands: list[dict[str, Any]] = answer.json()["commands"]
    return commands


def ingest(client: TestClient, worker: str, incarnation: str, *events: Any, **extra: Any) -> None:
    batch = {"worker": worker, "incarnation": incarnation, "events": list(events), **extra}
    assert client.post("/v1/events", json=batch, headers=AUTH).status_code == 202


def test_a_cancel_is_answered_once_the_owning_worker_has_taken_it(client: TestClient) -> None:
    ingest(client, "w-2", "i-1", started("r-9"))
    assert client.get("/v1/runs/r-9", headers=AUTH).json()["incarnation"] == "i-1"
    with ThreadPoolExecutor(1) as pool:
        cancelling = pool.submit(
            client.post, "/v1/runs/r-9/cancel?wait=20", json={"reason": "ops"}, headers=AUTH
        )
        [command] = poll(client, "w-2", "i-1", wait=10)
        assert command == {"id": command["id"], "type": "cancel", "run_id": "r-9", "reason": "ops"}
        cancel = client.get("/v1/runs/r-9", headers=AUTH).json()["cancel"]
        assert (cancel["delivered"], cancel["applied"]) == (False, None)
        assert not cancelling.done(), "answered before the worker took it"
        poll(client, "w-2", "i-1", acks=[{"id": command["id"], "applied": True, "live": True}])
        answer = cancelling.result(timeout=20)
    assert answer.status_code == 202
    assert answer.json() == {
        "run_id": "r-9",
        "worker": "w-2",
        "incarnation": "i-1",
        "reason": "ops",
        "delivered": True,
        "applied": True,
    }
    cancel = client.get("/v1/runs/r-9", headers=AUTH).json()["cancel"]
    assert (cancel["delivered"], cancel["applied"]) == (True, True)
    ingest(client, "w-2", "i-1", finished("r-9", "cancelled"))
    ended = client.get("/v1/runs/r-9", headers=AUTH).json()
    assert (ended["status"], ended["cancel"]["applied"]) == ("cancelled", True)
    assert client.post("/v1/runs/nope/cancel", headers=AUTH).status_code == 404
    assert client.get("/v1/runs/nope", headers=AUTH).status_code == 404


def test_a_cancel_no_worker_takes_is_a_504_and_stays_queued_for_its_worker(
    client: TestClient,
) -> None:
    ingest(client, "w-1", "old", started("r-1"))
    ingest(client, "w-1", "new", started("r-2"))
    answer = client.post("/v1/runs/r-1/cancel?wait=0.05", headers=AUTH)
    assert answer.status_code == 504
    assert "worker 'w-1' (incarnation old) did not take the cancel" in answer.json()["detail"]
    assert client.get("/v1/runs/r-1", headers=AUTH).json()["cancel"]["delivered"] is False
    assert poll(client, "w-1", "new") == [], "a worker of the same name took it"
    [command] = poll(client, "w-1", "old")
    assert command["run_id"] == "r-1"


def test_a_thread_reset_goes_to_every_worker_and_says_which_took_it(client: TestClient) -> None:
    assert client.post("/v1/threads/t/reset?wait=0", headers=AUTH).status_code == 409
    ingest(client, "w-1", "i-1")
    ingest(client, "w-2", "i-2")
    answer = client.post("/v1/threads/t/reset?wait=0.05", headers=AUTH)
    assert answer.status_code == 202  # neither worker has polled yet
    assert answer.json() == {
        "thread_id": "t",
        "checkpointers": 0,
        "workers": [
            {"worker": "w-1", "incarnation": "i-1", "taken": False, "checkpointers": None},
            {"worker": "w-2", "incarnation": "i-2", "taken": False, "checkpointers": None},
        ],
    }
    [queued] = poll(client, "w-1", "i-1")
    assert queued == {"id": queued["id"], "type": "reset_thread_totals", "thread_id": "t"}
    for worker, incarnation in (("w-1", "i-1"), ("w-2", "i-2")):  # queued for each till taken
        [command] = poll(client, worker, incarnation)
        poll(client, worker, incarnation, acks=[{"id": command["id"], "applied": False}])
    with ThreadPoolExecutor(1) as pool:
        resetting = pool.submit(client.post, "/v1/threads/t/reset?wait=20", headers=AUTH)
        for worker, incarnation, held in (("w-1", "i-1", 2), ("w-2", "i-2", 0)):
            [command] = poll(client, worker, incarnation, wait=10)
            ack = {"id": command["id"], "applied": held > 0, "checkpointers": held}
            poll(client, worker, incarnation, acks=[ack])
        answer = resetting.result(timeout=20)
    assert answer.status_code == 200
    assert answer.json()["checkpointers"] == 2
    assert [w["taken"] for w in answer.json()["workers"]] == [True, True]


def test_a_stopping_sidecar_ends_its_long_polls_and_cancel_waits_at_once(
    app: Any, client: TestClient
) -> None:
    """uvicorn's graceful stop waits for every open request: these would hold it 25 s."""
    ingest(client, "w-1", "i-1", started("r-1"))
    portal = client.portal
    assert portal is not None
    with ThreadPoolExecutor(2) as pool:
        polling = pool.submit(poll, client, "w-2", "i-1", wait=25)
        wait_for("the long-poll", lambda: client.get("/readyz").json()["polling"] == 1)
        cancelling = pool.submit(client.post, "/v1/runs/r-1/cancel?wait=25", headers=AUTH)
        wait_for("the cancel", lambda: client.get("/v1/runs/r-1", headers=AUTH).json()["cancel"])
        portal.call(app.state.sidecar.close)  # as uvicorn begins to stop
        assert polling.result(timeout=10) == []
        answer = cancelling.result(timeout=10)
        assert pool.submit(poll, client, "w-2", "i-1", wait=25).result(timeout=10) == []
    assert answer.status_code == 503
    assert answer.json()["detail"] == (
        "the sidecar is stopping, and worker 'w-1' (incarnation i-1) had not taken the cancel "
        "of run 'r-1': it may not reach the run; ask again once the sidecar is back"
    )


def test_a_command_answered_into_a_lost_poll_is_sent_again(client: TestClient) -> None:
    ingest(client, "w-1", "i-1", started("r-1"))
    client.post("/v1/runs/r-1/cancel?wait=0", headers=AUTH)
    [first] = poll(client, "w-1", "i-1")
    [again] = poll(client, "w-1", "i-1")  # no ack: the answer never reached the worker
    assert again == first
    assert poll(client, "w-1", "i-1", acks=[{"id": first["id"], "applied": True}]) == []


def test_a_cancel_of_a_run_its_worker_no_longer_has_is_a_404_and_it_leaves_the_table(
    client: TestClient,
) -> None:
    ingest(client, "w-1", "i-1", started("r-1"))
    with ThreadPoolExecutor(1) as pool:
        cancelling = pool.submit(client.post, "/v1/runs/r-1/cancel?wait=20", headers=AUTH)
        [command] = poll(client, "w-1", "i-1", wait=10)
        poll(client, "w-1", "i-1", acks=[{"id": command["id"], "applied": False, "live": False}])
        answer = cancelling.result(timeout=20)
    assert answer.status_code == 404
    assert "has no run 'r-1'" in answer.json()["detail"]
    assert client.get("/v1/runs", headers=AUTH).json() == {"runs": []}
    assert client.get("/v1/runs/r-1", headers=AUTH).json()["status"] == "lost"


def test_a_workers_list_of_live_runs_makes_its_part_of_the_table(client: TestClient) -> None:
    ingest(client, "w-1", "i-1", started("r-1"), started("r-2"))
    ingest(client, "w-2", "i-1", started("r-3"))
    # r-1's end was lost; r-4 started while its start was lost.
    ingest(client, "w-1", "i-1", live=[["r-2", "agent", "t"], ["r-4", "billing", None]])
    rows = {r["run_id"]: r for r in client.get("/v1/runs", headers=AUTH).json()["runs"]}
    assert sorted(rows) == ["r-2", "r-3", "r-4"]
    assert (rows["r-4"]["graph"], rows["r-4"]["worker"]) == ("billing", "w-1")
    values = samples(client.get("/metrics").text)
    assert values[("watchdog_active_runs", (("graph", "agent"),))] == 2
    assert values[("watchdog_active_runs", (("graph", "billing"),))] == 1
    assert values[("watchdog_sidecar_runs_lost_total", (("graph", "agent"),))] == 1
    # A run that ended after the list was made is not brought back by it.
    ingest(client, "w-1", "i-1", finished("r-4", "completed", "billing"))
    ingest(client, "w-1", "i-1", live=[["r-2", "agent", "t"], ["r-4", "billing", None]])
    left = {r["run_id"] for r in client.get("/v1/runs", headers=AUTH).json()["runs"]}
    assert left == {"r-2", "r-3"}
    values = samples(client.get("/metrics").text)
    assert values[("watchdog_active_runs", (("graph", "billing"),))] == 0


START = 1795468227.123  # 2026-11-23T21:10:27.123Z


def test_runs_show_steps_tokens_and_times_as_their_worker_lists_them(client: TestClient) -> None:
    ingest(client, "w-1", "i-1", {**started("r-1"), "timestamp": START})
    [row] = client.get("/v1/runs", headers=AUTH).json()["runs"]
    assert (row["started_at"], row["steps"], row["tokens"]) == ("2026-11-23T21:10:27.123Z", 0, 0)
    assert row["finished_at"] is None
    # The list every 2 s: r-1's progress, and r-2, whose start the table missed.
    before = time.time()
    live = [["r-1", "agent", "t", 7, 1830, START], ["r-2", "agent", None, 2, 0, before - 30]]
    ingest(client, "w-1", "i-1", live=live)
    rows = {r["run_id"]: r for r in client.get("/v1/runs", headers=AUTH).json()["runs"]}
    assert (rows["r-1"]["steps"], rows["r-1"]["tokens"]) == (7, 1830)
    assert rows["r-1"]["started_at"] == "2026-11-23T21:10:27.123Z", "kept from its start"
    assert 30 <= rows["r-2"]["elapsed_s"] <= time.time() - before + 30 + 0.001
    assert re.fullmatch(RFC_3339, rows["r-2"]["started_at"])
    # Its end says how far it got, and how long it ran.
    ingest(client, "w-1", "i-1", {**finished("r-1", "completed"), "steps": 9, "tokens": 2000})
    ended = client.get("/v1/runs/r-1", headers=AUTH).json()
    assert (ended["status"], ended["steps"], ended["tokens"]) == ("completed", 9, 2000)
    assert ended["elapsed_s"] == 1.5
    assert re.fullmatch(RFC_3339, ended["finished_at"])


@pytest.mark.parametrize(
    "odd",
    ["7", None, True, -1, 1.5e300, 10**400, [7], {"n": 7}, math.nan, math.inf],
    ids=repr,
)
def test_odd_numbers_in_a_live_list_are_ignored_and_the_batch_taken(
    client: TestClient, odd: Any
) -> None:
    """Workers are trusted with the token, not with their numbers: a value that is not a
    count or a time leaves what the table knew, and nothing fails."""
    ingest(client, "w-1", "i-1", started("r-1"), live=[["r-1", "agent", "t", 3, 40, START]])
    body = {"worker": "w-1", "incarnation": "i-1", "events": [], "live": [
        ["r-1", "agent", "t", odd, odd, odd], ["r-2", "agent", "t", odd, odd, odd],
    ]}  # fmt: skip
    assert post_raw(client, json.dumps(body).encode()).status_code == 202
    rows = {r["run_id"]: r for r in client.get("/v1/runs", headers=AUTH).json()["runs"]}
    if odd == 1.5e300:  # a number, too large to be a count or a time: the most there is
        assert (rows["r-1"]["steps"], rows["r-2"]["started_at"]) == (MAX_COUNT, None)
    else:
        assert (rows["r-1"]["steps"], rows["r-1"]["tokens"]) == (3, 40)
        assert (rows["r-2"]["steps"], rows["r-2"]["started_at"]) == (0, None)
    assert rows["r-2"]["elapsed_s"] is None
    end = {**finished("r-1", "completed"), "steps": odd, "elapsed_s": odd}
    batch = {"worker": "w-1", "incarnation": "i-1", "events": [end]}
    assert post_raw(client, json.dumps(batch).encode()).status_code == 202
    assert client.get("/v1/runs/r-1", headers=AUTH).json()["status"] == "completed"


def test_a_workers_end_of_a_run_is_kept_bounded(client: TestClient) -> None:
    ingest(client, "w-1", "i-1", started("r-1"), {**finished("r-1", "x" * 100_000)})
    assert client.get("/v1/runs/r-1", headers=AUTH).json()["status"] == "x" * MAX_TABLE_TEXT


def test_the_api_description_shows_what_a_run_holds(client: TestClient) -> None:
    ingest(client, "w-1", "i-1", started("r-1"))
    client.post("/v1/runs/r-1/cancel?wait=0", headers=AUTH)
    served = client.get("/v1/runs/r-1", headers=AUTH).json()
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert set(schemas["RunState"]["properties"]) == set(served)
    assert set(schemas["CancelState"]["properties"]) == set(served["cancel"])
    for time_of in (
        schemas["RunState"]["properties"][key] for key in ("started_at", "finished_at")
    ):
        assert time_of["anyOf"][0]["format"] == "date-time"
    assert schemas["CancelState"]["properties"]["requested_at"]["format"] == "date-time"
    assert re.fullmatch(RFC_3339, served["cancel"]["requested_at"])
    paths = client.get("/openapi.json").json()["paths"]
    listed = paths["/v1/runs"]["get"]["responses"]["200"]["content"]["application/json"]
    assert listed["schema"] == {"$ref": "#/components/schemas/RunList"}
    body = paths["/v1/runs/{run_id}/cancel"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["properties"]["reason"]["maxLength"] == (
        MAX_REASON
    )


@pytest.mark.parametrize(
    ("content_type", "body", "reason"),
    [
        ("application/x-www-form-urlencoded", b'{"reason":"x"}', "x"),  # what curl -d sends
        ("text/plain", b'{"reason": "x"}', "x"),
        (None, b'{"reason": "x"}', "x"),
        ("application/json", b"", "cancelled through the sidecar"),
        ("application/json", b"{}", "cancelled through the sidecar"),
        ("application/json", b'{"reason": "\\udc80 x"}', "? x"),
    ],
    ids=["form", "text", "none", "empty", "no reason", "lone surrogate"],
)
def test_a_cancels_body_is_json_whatever_its_content_type(
    client: TestClient, content_type: str | None, body: bytes, reason: str
) -> None:
    ingest(client, "w-1", "i-1", started("r-1"))
    headers = {**AUTH, **({"Content-Type": content_type} if content_type else {})}
    answer = client.post("/v1/runs/r-1/cancel?wait=0", content=body, headers=headers)
    assert answer.status_code == 504, answer.text  # taken as asked; no worker is polling
    assert client.get("/v1/runs/r-1", headers=AUTH).json()["cancel"]["reason"] == reason


@pytest.mark.parametrize(
    ("body", "loc", "message"),
    [
        (b"reason=x", ["body"], "got 'reason=x', which is not JSON"),
        (b"[1]", ["body"], "got [1]"),
        (b'"stop"', ["body"], "got 'stop'"),
        (b"null", ["body"], "got None"),
        (b'{"reason": 5}', ["body", "reason"], "reason: expected a string"),
        (json.dumps({"reason": "x" * 1001}).encode(), ["body", "reason"], "at most 1000"),
        (b'{"reson": "x"}', ["body", "reson"], "reson: unknown key 'reson'; expected only"),
    ],
    ids=["form", "list", "string", "null", "number reason", "long reason", "misspelt key"],
)
def test_a_cancels_body_that_is_not_a_json_object_says_what_is_expected(
    client: TestClient, body: bytes, loc: list[str], message: str
) -> None:
    ingest(client, "w-1", "i-1", started("r-1"))
    answer = client.post("/v1/runs/r-1/cancel?wait=0", content=body, headers=AUTH)
    assert answer.status_code == 422
    [problem] = answer.json()["detail"]
    assert problem["loc"] == loc
    assert message in problem["msg"]
    if loc == ["body"]:
        assert problem["msg"].startswith('the body must be a JSON object like {"reason": "..."}')
    assert client.get("/v1/runs/r-1", headers=AUTH).json()["cancel"] is None


def test_policies_are_served_with_an_etag(client: TestClient) -> None:
    answer = client.get("/v1/policies", headers=AUTH)
    assert answer.json()["files"] == {"policies.yaml": GOOD}
    again = client.get("/v1/policies", headers={**AUTH, "If-None-Match": answer.headers["etag"]})
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
    assert (client.get("/v1/policies", headers=AUTH)).json()["files"] == {"policies.yaml": GOOD}
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


def post_raw(client: TestClient, body: bytes, headers: dict[str, str] = AUTH) -> Any:
    return client.post(
        "/v1/events", content=body, headers={**headers, "Content-Type": "application/json"}
    )


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"", ("json_invalid", ["body"])),
        (b'{"worker": "w", "events": [', ("json_invalid", ["body"])),
        (b"[]", ("model_type", ["body"])),
        (b'{"events": []}', ("missing", ["body", "worker"])),
        (b'{"worker": "", "events": []}', ("string_too_short", ["body", "worker"])),
        (b'{"worker": "w", "events": {}}', ("list_type", ["body", "events"])),
        (b'{"worker": "w", "events": [{}, 5]}', ("dict_type", ["body", "events", 1])),
        (json.dumps({"worker": "w", "events": [{}] * 10_001}).encode(), ("too_long", None)),
        (b'{"worker": "w", "events": [' + b"[" * 100_000, ("json_invalid", ["body"])),
        (b'{"worker": "\\udc80", "events": [5]}', ("dict_type", ["body", "events", 0])),
    ],
    ids=[
        "empty",
        "cut short",
        "not an object",
        "no worker",
        "empty worker",
        "events not a list",
        "an event not an object",
        "too many events",
        "nested too deep",
        "bad event after a lone surrogate",
    ],
)
def test_a_malformed_batch_is_a_422_that_names_the_problem_and_changes_nothing(
    client: TestClient, body: bytes, problem: tuple[str, list[Any] | None]
) -> None:
    answer = post_raw(client, body)
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    kind, loc = problem
    assert detail[0]["type"] == kind
    assert detail[0]["loc"] == (loc or ["body", "events"])
    assert len(answer.content) < 10_000 or kind == "too_long"  # the body is not sent back
    assert samples(client.get("/metrics").text)[("watchdog_sidecar_events_total", ())] == 0


def test_a_batch_is_read_only_once_the_token_is_checked(client: TestClient) -> None:
    assert post_raw(client, b"{not json", headers={}).status_code == 401


def test_a_lone_surrogate_reads_as_a_question_mark_and_breaks_no_endpoint(
    client: TestClient,
) -> None:
    # What json.dumps writes for a string decoded with surrogateescape, a path say.
    event = {**started("r-\udc80", "g-\udc80"), "thread_id": "t-\udc80"}
    assert post_raw(client, json.dumps({"worker": "w", "events": [event]}).encode()).json() == {
        "accepted": 1
    }
    assert [
        (r["run_id"], r["graph"]) for r in client.get("/v1/runs", headers=AUTH).json()["runs"]
    ] == [("r-?", "g-?")]
    values = samples(client.get("/metrics").text)
    assert values[("watchdog_runs_started_total", (("graph", "g-?"),))] == 1


def test_odd_numbers_in_events_never_poison_a_metric(client: TestClient) -> None:
    odd = {"elapsed_s": math.nan, "steps": 10**400, "input_tokens": -5, "output_tokens": True}
    batch = {"worker": "w", "events": [started("r-1"), {**finished("r-1", "completed"), **odd}]}
    assert post_raw(client, json.dumps(batch).encode()).status_code == 202
    values = samples(client.get("/metrics").text)
    outcome = (("graph", "agent"), ("outcome", "completed"))
    assert values[("watchdog_run_duration_seconds_sum", outcome)] == 0
    assert values[("watchdog_run_steps_sum", outcome)] == 0
    assert ("watchdog_tokens_total", (("graph", "agent"), ("type", "input"))) not in values
    assert values[("watchdog_active_runs", (("graph", "agent"),))] == 0


EVENT_NAMES = [
    f"watchdog.{name}"
    for name in ("run_started", "run_finished", "run_cancelled", "violation", "drain_requested")
] + ["internal_error", "something_new"]
EVENT_FIELDS = [
    "run_id", "thread_id", "graph", "policies", "timestamp", "outcome", "elapsed_s", "steps",
    "input_tokens", "output_tokens", "policy", "kind", "mode", "phase", "latency_s",
]  # fmt: skip
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(st.characters(codec="utf-8") | st.sampled_from(["\ud800", "\udc80"]), max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)
events = st.fixed_dictionaries(
    {"event": st.sampled_from(EVENT_NAMES)},
    optional=dict.fromkeys(EVENT_FIELDS, json_values),
)


@given(batch=st.lists(events, min_size=1, max_size=8))
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_any_values_in_an_event_are_taken_and_every_endpoint_still_answers(
    client: TestClient, batch: list[dict[str, Any]]
) -> None:
    # Workers write their batches with json.dumps: NaN and lone surrogates included.
    body = json.dumps({"worker": "w", "events": batch}).encode()
    assert post_raw(client, body).json() == {"accepted": len(batch)}
    for path in ("/metrics", "/v1/runs", "/readyz"):
        assert client.get(path, headers=AUTH).status_code == 200, path


def _app_for_the_schema() -> Any:
    directory = Path(tempfile.mkdtemp(prefix="watchdog-sidecar-schema-"))
    (directory / "policies.yaml").write_text(GOOD)
    source = PolicySource(str(directory), Metrics(CollectorRegistry()))
    return create_app(source, token=TOKEN, poll_interval=3600, worker_timeout=60)


schema = schemathesis.openapi.from_asgi("/openapi.json", _app_for_the_schema())


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_makes_the_sidecar_fail(case: Any) -> None:
    if case.path == "/v1/commands" and isinstance(case.body, dict):
        case.body["wait"] = 0  # a long-poll would hold the test for its whole wait
    cancel = case.path == "/v1/runs/{run_id}/cancel"
    if cancel:  # of a run its events made up: no worker is there to take it
        case.query = {**(case.query or {}), "wait": 0}
    if case.path == "/v1/threads/{thread_id}/reset":
        case.query = {**(case.query or {}), "wait": 0}  # no worker of the test acknowledges
    for headers in ({}, AUTH):
        response = case.call(headers=headers)
        untaken = cancel and response.status_code == 504  # as documented
        assert response.status_code < 500 or untaken, response.text


class FailingSource(PolicySource):
    """Policies whose next ``failing`` checks raise, as a bug in a round would."""

    failing = 0

    def check(self, *, force: bool = False) -> bool:
        if self.failing:
            self.failing -= 1
            raise RuntimeError("a bug in this round")
        return super().check(force=force)


def test_a_background_loop_survives_any_error_reports_it_and_goes_on(policy_file: Path) -> None:
    source = FailingSource(str(policy_file), Metrics(CollectorRegistry()))
    source.failing = 3
    app = create_app(source, token=TOKEN, poll_interval=0.01, worker_timeout=60)
    with capture_events() as events, TestClient(app) as client:
        wait_for("three failed rounds", lambda: source.failing == 0)
        loop = client.get("/readyz").json()["loops"]["policy_watch"]
        assert (loop["errors"], loop["last_error"]) == (3, "RuntimeError: a bug in this round")
        before = client.get("/readyz").json()["policies"]["hash"]
        policy_file.write_text(GOOD.replace("max_steps: 10", "max_steps: 5"))
        wait_for(
            "the next edit to load",
            lambda: client.get("/readyz").json()["policies"]["hash"] != before,
        )
        assert not client.get("/readyz").json()["loops"]["policy_watch"]["failing"]
        values = samples(client.get("/metrics").text)
    assert values[("watchdog_sidecar_loop_errors_total", (("loop", "policy_watch"),))] == 3
    failed = [e for e in events if e["event"] == "watchdog.sidecar_loop_failed"]
    assert [(e["loop"], e["error"], e["failures"]) for e in failed] == [
        ("policy_watch", "RuntimeError: a bug in this round", 1)
    ], "one report for a run of the same error"
    assert "a bug in this round" in failed[0]["traceback"]


def test_label_sets_past_a_metrics_cap_are_collapsed_and_counted(app: Any) -> None:
    state = app.state.sidecar
    cancels = [
        {
            "event": "watchdog.run_cancelled",
            "graph": f"g-{i % 90}",
            "policy": f"p-{i // 90}",
            "kind": "loop",
            "phase": "drained",
        }
        for i in range(90 * 30)
    ]
    state.ingest("w-1", cancels)
    registry = state.registry
    series = [
        s
        for family in registry.collect()
        if family.name == "watchdog_cancellations"
        for s in family.samples
        if s.name == "watchdog_cancellations_total"
    ]
    assert len(series) == MAX_SERIES + 1  # and the one all of __overflow__
    assert sum(s.value for s in series) == 90 * 30
    overflow = {"metric": "watchdog_cancellations", "label": "*"}
    assert registry.get_sample_value("watchdog_sidecar_label_overflow_total", overflow) == (
        90 * 30 - MAX_SERIES
    )


def test_the_run_table_keeps_bounded_text_and_a_bounded_number_of_runs(app: Any) -> None:
    state = app.state.sidecar
    huge = "x" * 100_000
    state.ingest(
        "w-1",
        [{**started("r-1", graph=huge), "thread_id": huge, "policies": [huge] * 1000}],
    )
    row = state.runs["r-1"]
    assert (len(row.graph), len(row.thread_id)) == (MAX_TABLE_TEXT, MAX_TABLE_TEXT)
    assert len(row.policies) == MAX_RUN_POLICIES
    assert {len(p) for p in row.policies} == {MAX_LABEL_LENGTH}
    state.ingest("w-1", [started(f"r-{i}") for i in range(2, MAX_RUNS + 11)])
    assert len(state.runs) == MAX_RUNS
    assert state.registry.get_sample_value("watchdog_sidecar_runs_untracked_total") == 10
