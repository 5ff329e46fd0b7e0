"""A budget shared in Redis: reservations before calls, settlements after, on a real server."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis

from tests.processes import RedisServer, wait_for
from watchdog._shared.budget import Grant, SharedBudget


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_server.url)
    yield connection
    connection.close()


def test_a_call_is_granted_only_while_usage_and_calls_in_flight_leave_room(
    client: redis.Redis,
) -> None:
    budget = SharedBudget(client, "tokens:tenant=acme:2026-12-05", 1000)
    assert budget.reserve("c1", 400) == Grant(granted=True, used=0, reserved=400)
    assert budget.reserve("c2", 400) == Grant(granted=True, used=0, reserved=800)
    assert budget.reserve("c3", 400) == Grant(granted=False, used=0, reserved=800)
    assert budget.settle("c1", 300)
    assert budget.totals() == (300, 400)
    assert not budget.reserve("c3", 400).granted  # 300 used + 400 in flight + 400
    assert budget.settle("c2", 200)
    assert budget.reserve("c3", 400) == Grant(granted=True, used=500, reserved=400)


def test_a_retried_call_holds_and_counts_once(client: redis.Redis) -> None:
    budget = SharedBudget(client, "b", 1000)
    assert budget.reserve("call", 300).granted
    assert budget.reserve("call", 300) == Grant(granted=True, used=0, reserved=300)
    assert budget.settle("call", 250)
    assert not budget.settle("call", 250)
    assert budget.reserve("call", 300) == Grant(granted=True, used=250, reserved=0)
    assert budget.totals() == (250, 0)


def test_a_reservation_whose_worker_died_stops_holding_the_budget(
    client: redis.Redis,
) -> None:
    budget = SharedBudget(client, "b", 1000, reservation_ttl=0.05)
    assert budget.reserve("dead-worker", 900).granted
    assert not budget.reserve("live", 900).granted
    # Waits for the condition, not a window: the reservation expires on Redis's clock.
    wait_for("the reservation to expire", lambda: budget.reserve("live", 900).granted)
    assert budget.totals() == (0, 900)
    # The dead worker's call, settled late after all, still counts what it used.
    assert budget.settle("dead-worker", 100)
    assert budget.totals() == (100, 900)


def test_budgets_are_apart_and_each_keeps_its_keys_in_one_cluster_slot(
    client: redis.Redis,
) -> None:
    acme = SharedBudget(client, "tokens:tenant=acme", 100)
    other = SharedBudget(client, "tokens:tenant=other", 100)
    assert acme.reserve("c", 100).granted
    assert other.reserve("c", 100).granted
    acme.settle("c", 60)
    assert (acme.totals(), other.totals()) == ((60, 0), (0, 100))
    keys = sorted(k.decode() for k in client.scan_iter("watchdog:*acme*"))
    assert {key.split("}")[0] for key in keys} == {"watchdog:{tokens:tenant=acme"}


def test_workers_at_once_never_pass_the_limit_and_the_total_is_exact(
    redis_server: RedisServer,
) -> None:
    limit, workers, calls = 1000, 4, 60
    granted = [0] * workers

    def work(worker: int) -> None:
        connection = redis.Redis.from_url(redis_server.url)
        budget = SharedBudget(connection, "shared", limit)
        for call in range(calls):
            call_id = f"w{worker}-c{call}"
            if budget.reserve(call_id, 10).granted:
                granted[worker] += 1
                budget.settle(call_id, 10)
        connection.close()

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    connection = redis.Redis.from_url(redis_server.url)
    used, reserved = SharedBudget(connection, "shared", limit).totals()
    connection.close()
    assert (sum(granted), used, reserved) == (100, 1000, 0)


def test_a_rate_counts_calls_at_once_and_forgets_them_as_they_leave_its_span(
    client: redis.Redis,
) -> None:
    rate = SharedBudget(client, "llm_calls:global", 2, rolling=0.1)
    assert rate.reserve("c1", 1, count=True) == Grant(granted=True, used=0, reserved=0)
    assert rate.reserve("c2", 1, count=True) == Grant(granted=True, used=1, reserved=0)
    assert rate.reserve("c1", 1, count=True).granted  # a retry: counted once
    assert rate.totals() == (2, 0)
    assert not rate.reserve("c3", 1, count=True).granted
    # The span runs on Redis's clock: wait until the first two calls have left it.
    wait_for("the calls to leave the span", lambda: rate.reserve("c3", 1, count=True).granted)
    assert rate.totals() == (1, 0)


def test_a_rate_of_tokens_forgets_settled_usage_after_its_span(client: redis.Redis) -> None:
    rate = SharedBudget(client, "tokens:global", 1000, rolling=0.1)
    assert rate.reserve("c1", 500).granted
    assert rate.settle("c1", 700)
    assert not rate.reserve("c2", 500).granted
    wait_for("the usage to leave the span", lambda: rate.reserve("c2", 500).granted)
    assert rate.totals() == (0, 500)
