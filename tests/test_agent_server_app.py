"""``watchdog.agent_server``: the server process's supervisor and its run API, in process."""

from __future__ import annotations

import gc
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from starlette.testclient import TestClient

from tests.graphs import Bodies, endless, hanging
from tests.processes import RFC_3339
from watchdog import RunCancelled, agent_server

POLICIES = """\
version: 1
defaults: {grace_seconds: 0.05}
policies:
  - {name: steps, step_count: {max_steps: 5}}
"""
TOKEN = "app-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def policy_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "policies.yaml"
    path.write_text(POLICIES)
    monkeypatch.setenv("WATCHDOG_POLICIES", str(path))
    monkeypatch.setenv("WATCHDOG_POLL_INTERVAL", "3600")  # reloads come by request here
    monkeypatch.setenv("WATCHDOG_TOKEN", TOKEN)
    return path


@pytest.fixture
def client(policy_file: Path) -> Iterator[TestClient]:
    with TestClient(agent_server.app) as client:  # the lifespan closes the supervisor
        yield client


def test_the_supervisor_needs_watchdog_policies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_POLICIES", raising=False)
    with pytest.raises(RuntimeError, match="WATCHDOG_POLICIES is not set"):
        agent_server.supervisor()


def test_the_supervisor_is_one_per_process_and_lends_checkpointers(client: TestClient) -> None:
    supervisor = agent_server.supervisor()
    assert supervisor is agent_server.supervisor()
    assert supervisor.lends_checkpointer
    assert [p.name for p in supervisor.policies.policies] == ["steps"]


def test_the_run_api_needs_the_token(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = client.get("/watchdog/v1/runs")
    assert (missing.status_code, missing.json()) == (401, {"detail": "a bearer token is required"})
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = client.get("/watchdog/v1/runs", headers={"Authorization": "Bearer nope"})
    assert (wrong.status_code, wrong.json()) == (401, {"detail": "the bearer token was refused"})
    assert wrong.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert client.get("/watchdog/v1/runs", headers=AUTH).json() == {"runs": []}
    monkeypatch.delenv("WATCHDOG_TOKEN")
    off = client.get("/watchdog/v1/runs", headers=AUTH)
    assert off.status_code == 503
    assert "WATCHDOG_TOKEN" in off.json()["detail"]
    assert client.get("/watchdog/metrics").status_code == 200  # metrics stay open


def test_a_live_run_is_listed_and_cancelled(client: TestClient) -> None:
    app = agent_server.supervisor().attach(hanging(), name="hung")
    portal = client.portal  # the app's event loop, in a thread of the test client
    assert portal is not None
    future = portal.start_task_soon(app.ainvoke, {"count": 0})
    while not (runs := client.get("/watchdog/v1/runs", headers=AUTH).json()["runs"]):
        assert not future.done(), future.result()
    try:
        [run] = runs
        assert sorted(run) == [
            "elapsed_s", "graph", "run_id", "started_at", "status", "steps", "thread_id", "tokens",
        ]  # fmt: skip
        assert re.fullmatch(RFC_3339, run["started_at"])
        assert (run["status"], run["steps"], run["tokens"]) == ("running", 1, 0)
        one = client.get(f"/watchdog/v1/runs/{run['run_id']}", headers=AUTH).json()
        assert one["elapsed_s"] >= run["elapsed_s"] >= 0
        assert {**one, "elapsed_s": None} == {**run, "elapsed_s": None}
        path = f"/watchdog/v1/runs/{run['run_id']}/cancel"
        for bad in (b"[1]", b"{", b"reason=stop", b'{"reason": 5}'):
            refused = client.post(path, content=bad, headers=AUTH)
            assert refused.status_code == 422
            detail = refused.json()["detail"]
            assert detail.startswith(('the body must be a JSON object like {"reason"', "reason: "))
        # What `curl -d` sends: JSON, under a form's content type.
        form = {**AUTH, "Content-Type": "application/x-www-form-urlencoded"}
        assert client.post(path, content=b'{"reason": "stop"}', headers=form).status_code == 202
        with pytest.raises(RunCancelled, match=r"cancelled \(manual\): stop"):
            future.result(timeout=30)
        assert client.post(path, json={"reason": "stop"}, headers=AUTH).status_code == 404
    finally:
        for live in agent_server.supervisor().runs():
            agent_server.supervisor().cancel(live.run_id, "the test is over")


def test_an_invalid_edit_keeps_the_policies_in_force(client: TestClient, policy_file: Path) -> None:
    policy_file.write_text(POLICIES.replace("max_steps: 5", "max_steps: -1"))
    answer = client.post("/watchdog/v1/policies/reload", headers=AUTH)
    assert answer.status_code == 422
    assert "max_steps" in answer.json()["error"]
    assert agent_server.supervisor().policies.policies[0].kind.max_steps == 5  # type: ignore[attr-defined]
    policy_file.write_text(POLICIES.replace("max_steps: 5", "max_steps: 7"))
    answer = client.post("/watchdog/v1/policies/reload", headers=AUTH)
    assert (answer.status_code, answer.json()["reloaded"]) == (200, True)
    assert agent_server.supervisor().policies.policies[0].kind.max_steps == 7  # type: ignore[attr-defined]


def lent_saver(store: InMemorySaver) -> InMemorySaver:
    """A fresh checkpointer over ``store``'s storage, as the server lends one to each run."""
    saver = InMemorySaver()
    saver.storage, saver.writes, saver.blobs = store.storage, store.writes, store.blobs
    return saver


def test_a_threads_totals_are_reset_in_the_store_the_server_lends_its_runs(
    client: TestClient, policy_file: Path
) -> None:
    policy_file.write_text(POLICIES.replace("max_steps: 5}", "max_steps: 3, scope: thread}"))
    assert client.post("/watchdog/v1/policies/reload", headers=AUTH).status_code == 200
    bodies, store = Bodies(), InMemorySaver()
    graph = agent_server.supervisor().attach(
        endless(bodies, is_async=True, checkpointer=False), name="chat"
    )
    config = {"configurable": {"thread_id": "t"}}
    portal = client.portal
    assert portal is not None

    def run_on_a_lent_saver(graph_input: Any) -> int:
        served = graph.copy(update={"checkpointer": lent_saver(store)})
        with pytest.raises(RunCancelled, match="thread"):
            portal.call(served.ainvoke, graph_input, config)
        return bodies.ran

    assert run_on_a_lent_saver({"count": 0}) == 3
    assert run_on_a_lent_saver(None) == 3  # blocked: the thread reached its limit
    gc.collect()  # the runs' savers are gone; the store stays
    path = "/watchdog/v1/threads/t/reset"
    assert client.post(path).status_code == 401
    answer = client.post(path, headers=AUTH)
    assert (answer.status_code, answer.json()) == (200, {"thread_id": "t", "checkpointers": 1})
    assert run_on_a_lent_saver(None) == 6  # three fresh steps


def test_a_cancel_body_over_the_cap_is_refused(client: TestClient) -> None:
    def body() -> Iterator[bytes]:  # streamed: no Content-Length tells the size up front
        for _ in range(1000):
            yield b" " * 1024

    answer = client.post("/watchdog/v1/runs/r-1/cancel", content=body(), headers=AUTH)
    assert answer.status_code == 413
    assert "larger than this endpoint takes (65536 bytes)" in answer.json()["detail"]
