"""Two pods, each a sidecar with two worker processes, share one tenant's token budget
through a real Redis."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.processes import POLICIES, Pod, RedisServer

LIMIT = 6000
SHARED = f"""\
version: 1
policies:
  - name: acme-daily
    token_budget:
      max_total_tokens: {LIMIT}
      scope: metadata.tenant
      window: 1d
      estimate_tokens: 120
"""
RUNS_PER_WORKER = 3


def pod_sum(pod: Pod, name: str, **labels: str) -> float:
    """The sum of a metric's samples with these labels, as the pod's sidecar exports it."""
    families = text_string_to_metric_families(pod.get("/metrics"))
    return sum(
        sample.value
        for family in families
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def pod_tokens(pod: Pod) -> float:
    """The tokens the pod's workers reported for their runs, as its sidecar counts them."""
    return pod_sum(pod, "watchdog_tokens_total", graph="spend")


def used_in_redis(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        keys = client.scan_iter("watchdog:{acme-daily|metadata.tenant=acme|*}:budget")
        return sum(int(client.hget(key, "used") or 0) for key in keys)
    finally:
        client.close()


@contextlib.contextmanager
def two_pods(tmp_path: Path, redis_server: RedisServer, policies: str) -> Iterator[list[Pod]]:
    """Two pods, each a sidecar (its workers to start) sharing ``redis_server``."""
    pods: list[Pod] = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            pod = Pod(tmp_path / name, policies)
            pod.env["WATCHDOG_REDIS_URL"] = redis_server.url
            pod.env["WATCHDOG_POD_NAME"] = name
            # A pod whose listing of its runs is five heartbeats (1 s) old has gone.
            pod.start_sidecar(0.2, "--heartbeat", "0.2")
            pods.append(pod)
        yield pods
    finally:
        for pod in pods:
            pod.stop()


def test_the_runs_of_two_pods_stop_at_one_shared_budget_and_redis_holds_their_sum(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    with two_pods(tmp_path, redis_server, SHARED) as pods:
        plan: dict[str, Any] = {"spend": {"tenant": "acme", "runs": RUNS_PER_WORKER}}
        workers = [
            worker
            for pod in pods
            for worker in pod.start_workers({f"{pod.port}-1": plan, f"{pod.port}-2": plan}).values()
        ]
        ended = [worker.expect("run_id", timeout=120) for worker in workers for _ in range(3)]
        for worker in workers:
            worker.expect("done", timeout=120)
        assert {(run["outcome"], run["policy"]) for run in ended} == {("cancelled", "acme-daily")}
        used = used_in_redis(redis_server.url)
        # Every call reserved what it used: the budget is never passed, and the calls
        # refused at the end leave at most one call's worth per run in flight unspent.
        assert LIMIT - 120 * len(ended) < used <= LIMIT
        # What the four workers reported through their sidecars is exactly Redis's total.
        assert sum(pod_tokens(pod) for pod in pods) == used


def test_a_cancel_posted_to_one_pod_ends_a_run_of_a_worker_of_another(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    with two_pods(tmp_path, redis_server, POLICIES) as (first, second):
        run_id = str(uuid.uuid4())
        worker = second.worker("b-1", {"hang": [run_id]})
        second.wait_for("the hung run", lambda: len(second.get("/v1/runs")["runs"]) == 1)
        assert first.get("/v1/runs")["runs"] == []  # pod A does not have it
        posted = time.time()
        status, answer = first.call("POST", f"/v1/runs/{run_id}/cancel", {"reason": "ops, pod A"})
        ended = worker.expect("run_id")
        latency = ended["at"] - posted
        print(f"cancel posted to pod A, run ended in pod B's worker: {1000 * latency:.1f} ms")
        assert (status, answer["worker"], answer["relayed"], answer["delivered"]) == (
            202,
            "b-1",
            True,
            True,
        )
        assert (ended["run_id"], ended["outcome"], ended["reason"]) == (
            run_id,
            "cancelled",
            "ops, pod A",
        )
        missing = str(uuid.uuid4())
        asked = time.monotonic()
        status, answer = first.call("POST", f"/v1/runs/{missing}/cancel", {"reason": "x"})
        assert (status, answer["detail"]) == (404, f"no live run {missing!r} in any pod")
        assert time.monotonic() - asked < 5  # every pod said so: no waiting out the wait
        worker.expect("done")


def test_any_pod_lists_the_live_runs_of_the_whole_fleet_and_a_dead_pod_drops_out(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    with two_pods(tmp_path, redis_server, POLICIES) as (first, second):
        run_a, run_b = str(uuid.uuid4()), str(uuid.uuid4())
        first.worker("a-1", {"hang": [run_a]})
        second.worker("b-1", {"hang": [run_b]})

        def fleet(pod: Pod) -> Any:
            return pod.get("/v1/runs?fleet=true")

        def listed(pod: Pod) -> set[tuple[str, str, str]]:
            return {(run["run_id"], run["pod"], run["worker"]) for run in fleet(pod)["runs"]}

        both = {(run_a, "a", "a-1"), (run_b, "b", "b-1")}
        first.wait_for("pod A to list both pods' runs", lambda: listed(first) == both)
        second.wait_for("pod B to list both pods' runs", lambda: listed(second) == both)
        assert sorted((pod["pod"], pod["runs"]) for pod in fleet(first)["pods"]) == [
            ("a", 1),
            ("b", 1),
        ]
        # Without fleet=true a sidecar lists its own pod's runs, as it always did.
        (own,) = first.get("/v1/runs")["runs"]
        assert (own["run_id"], "pod" in own) == (run_a, False)
        assert second.sidecar is not None
        second.sidecar.popen.kill()  # no goodbye: its entry expires
        first.wait_for("pod B to drop out", lambda: listed(first) == {(run_a, "a", "a-1")})


def test_redis_killed_under_load_blocks_no_step_and_back_settles_every_call_once(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    unreachable = SHARED.replace(f"max_total_tokens: {LIMIT}", "max_total_tokens: 1000000000")
    with two_pods(tmp_path, redis_server, unreachable) as pods:
        plan = {"steady": None, "tenant": "acme"}  # runs of two calls, until stdin ends
        workers = [
            worker
            for pod in pods
            for worker in pod.start_workers({f"{pod.port}-1": plan, f"{pod.port}-2": plan}).values()
        ]

        def finished(**outcome: str) -> float:
            return sum(
                pod_sum(pod, "watchdog_runs_finished_total", graph="spend", **outcome)
                for pod in pods
            )

        def failures() -> float:
            return sum(
                pod_sum(pod, "watchdog_shared_budget_errors_total", policy="acme-daily")
                for pod in pods
            )

        pods[0].wait_for("usage in Redis", lambda: used_in_redis(redis_server.url) > 0)
        redis_server.kill()
        before = finished()
        # Runs go on without Redis, on the workers' local shares: no step waits for it.
        pods[0].wait_for("forty more runs without Redis", lambda: finished() >= before + 40)
        pods[0].wait_for("the failures counted by the sidecars", lambda: failures() > 0)
        redis_server.start()
        back = used_in_redis(redis_server.url)
        pods[0].wait_for("usage counted again", lambda: used_in_redis(redis_server.url) > back)
        for worker in workers:
            worker.close_stdin()
        for worker in workers:
            worker.expect("done", timeout=120)
        assert finished() == finished(outcome="completed") > before + 40
        # Every call, reserved in Redis or on a local share, settled with Redis once.
        assert sum(pod_tokens(pod) for pod in pods) == used_in_redis(redis_server.url)
