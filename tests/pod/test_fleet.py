"""The fleet's registry of live runs in a real Redis: heartbeats keep a pod listed, a pod
that stops leaves, one that dies expires; and what the sidecar's API answers around it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from tests.processes import RedisServer, free_port, wait_for
from watchdog._pod.fleet import FleetRegistry
from watchdog._pod.policy_source import PolicySource
from watchdog._pod.sidecar import create_app
from watchdog._sinks.metrics import Metrics

RUN = {"run_id": "r1", "worker": "w1", "status": "running"}
TOKEN = "fleet-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def registries(redis_server: RedisServer) -> Iterator[list[FleetRegistry]]:
    made: list[FleetRegistry] = []
    yield made
    for registry in made:
        registry.stop()


def registry(made: list[FleetRegistry], url: str, pod: str, ttl: float = 60) -> FleetRegistry:
    made.append(FleetRegistry(url, pod, ttl=ttl))
    return made[-1]


def pods(registry: FleetRegistry) -> list[tuple[str, list[dict[str, Any]]]]:
    return [(entry["pod"], entry["runs"]) for entry in registry.read()]


def test_a_pod_counts_all_its_runs_and_lists_what_it_is_given(
    redis_server: RedisServer, registries: list[FleetRegistry]
) -> None:
    busy = registry(registries, redis_server.url, "busy")
    busy.beat([RUN], 5000)
    wait_for("the pod to be listed", lambda: bool(busy.read()))
    (entry,) = busy.read()
    assert (entry["runs"], entry["total"]) == ([RUN], 5000)


def test_each_pod_lists_its_runs_and_every_pod_reads_them_all(
    redis_server: RedisServer, registries: list[FleetRegistry]
) -> None:
    first = registry(registries, redis_server.url, "pod-a")
    second = registry(registries, redis_server.url, "pod-b")
    first.beat([RUN], 1)
    second.beat([], 0)
    expected = [("pod-a", [RUN]), ("pod-b", [])]
    wait_for("both pods to be listed", lambda: pods(second) == expected)
    assert pods(first) == expected
    first.stop()  # a pod that stops leaves at once
    assert pods(second) == [("pod-b", [])]


def test_a_pod_whose_heartbeats_stop_drops_out_when_its_entry_expires(
    redis_server: RedisServer, registries: list[FleetRegistry]
) -> None:
    dying = registry(registries, redis_server.url, "dying", ttl=0.2)
    reader = registry(registries, redis_server.url, "reader")

    def beating_and_listed() -> bool:
        dying.beat([RUN], 1)
        return pods(reader) == [("dying", [RUN])]

    wait_for("the pod to be listed", beating_and_listed)
    # No more beats: on Redis's clock, the entry and the pod's place in the set expire.
    wait_for("the pod to drop out", lambda: pods(reader) == [])


def test_a_heartbeat_redis_did_not_take_is_raised_by_the_next(
    redis_server: RedisServer, registries: list[FleetRegistry]
) -> None:
    beating = registry(registries, redis_server.url, "pod-a")
    redis_server.kill()
    beating.beat([RUN], 1)

    def raises() -> bool:
        try:
            beating.beat([RUN], 1)
        except Exception as error:
            return "Connection" in type(error).__name__
        return False

    wait_for("a beat to raise the writer's error", raises)


def sidecar(tmp_path: Path, redis_url: str | None) -> Any:
    policies = tmp_path / "policies.yaml"
    policies.write_text("version: 1\npolicies: []\n")
    source = PolicySource(str(policies), Metrics(CollectorRegistry()))
    return create_app(
        source, token=TOKEN, poll_interval=3600, redis_url=redis_url, pod="here", heartbeat=0.05
    )


def test_the_fleet_listing_needs_redis_and_says_so(tmp_path: Path) -> None:
    with TestClient(sidecar(tmp_path, None)) as client:
        answer = client.get("/v1/runs", params={"fleet": "true"}, headers=AUTH)
        assert answer.status_code == 409
        assert answer.json()["detail"] == (
            "this sidecar has no Redis (WATCHDOG_REDIS_URL) to list the fleet's runs from; "
            "without fleet=true it lists its own pod's"
        )
        assert client.get("/v1/runs", headers=AUTH).json() == {"runs": []}


def test_a_sidecar_starts_without_redis_and_a_fleet_listing_then_is_a_503(
    tmp_path: Path,
) -> None:
    with TestClient(sidecar(tmp_path, f"redis://127.0.0.1:{free_port()}/0")) as client:
        answer = client.get("/v1/runs", params={"fleet": "true"}, headers=AUTH)
        assert answer.status_code == 503
        assert answer.json()["detail"].startswith("the fleet's registry in Redis did not answer")
        assert client.get("/v1/runs", headers=AUTH).json() == {"runs": []}
        cancel = client.post("/v1/runs/elsewhere/cancel", headers=AUTH)
        assert cancel.status_code == 503
        assert cancel.json()["detail"].startswith(
            "no live run 'elsewhere' in this pod, and Redis, which reaches the other pods, did "
            "not answer (ConnectionError: "
        )

        def heartbeat_failing() -> bool:
            return bool(client.get("/readyz").json()["loops"]["fleet_heartbeat"]["failing"])

        wait_for("the heartbeat loop to report Redis's silence", heartbeat_failing)


def test_a_sidecar_lists_itself_in_the_fleet(tmp_path: Path, redis_server: RedisServer) -> None:
    with TestClient(sidecar(tmp_path, redis_server.url)) as client:
        listing = client.get("/v1/runs", params={"fleet": "true"}, headers=AUTH).json()
        (pod,) = listing["pods"]
        assert (listing["runs"], pod["pod"], pod["runs"]) == ([], "here", 0)
