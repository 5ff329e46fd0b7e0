"""Token budgets shared across workers through a real Redis: one tenant's budget, spent by
runs of two supervisors (two workers), stops them all at its limit, and Redis's total is
exactly what their runs used."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import pytest
import redis
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.types import Command
from prometheus_client import CollectorRegistry

from tests.graphs import Chat, policies, react_agent, scripted, search, tool_call
from tests.processes import RedisServer
from watchdog import PolicyError, RunCancelled, Supervisor, load_policy_text
from watchdog.testing import FakeClock, capture_events

# Each model call reports 100 input and 20 output tokens; a call reserves 120 before it runs.
ACME_DAILY = """
- name: acme-daily
  token_budget:
    max_total_tokens: 1000
    scope: metadata.tenant
    window: 1d
    estimate_tokens: 120
"""


def searching_forever() -> Any:
    """A ReAct agent that calls a tool every turn, for ever: only a budget stops it."""
    return react_agent(scripted(*(tool_call(f"q{i}", f"c{i}") for i in range(50))))


def with_keys(**extra: object) -> str:
    """ACME_DAILY with more keys of its token budget."""
    keys = "".join(f"\n    {key}: {str(value).lower()}" for key, value in extra.items())
    return ACME_DAILY.replace("estimate_tokens: 120", "estimate_tokens: 120" + keys)


def worker(
    redis_server: RedisServer, registry: CollectorRegistry | None = None, text: str = ACME_DAILY
) -> Any:
    supervisor = Supervisor(policies(text), redis_url=redis_server.url, registry=registry)
    return supervisor.attach(searching_forever(), name="agent")


def tenant(name: str) -> dict[str, Any]:
    return {"metadata": {"tenant": name}}


def used_in_redis(redis_server: RedisServer, tenant: str) -> int:
    client = redis.Redis.from_url(redis_server.url)
    try:
        total = 0
        for key in client.scan_iter(f"watchdog:{{acme-daily|metadata.tenant={tenant}|*}}:budget"):
            total += int(client.hget(key, "used") or 0)
        return total
    finally:
        client.close()


def run_tokens(events: list[dict[str, Any]], tenant_runs: set[str]) -> int:
    return sum(
        e["tokens"]
        for e in events
        if e["event"] == "watchdog.run_finished" and e["run_id"] in tenant_runs
    )


def test_one_tenants_budget_stops_the_runs_of_two_workers_and_spares_another_tenant(
    redis_server: RedisServer,
) -> None:
    first, second = worker(redis_server), worker(redis_server)
    with capture_events() as events:
        with pytest.raises(RunCancelled) as spent:
            first.invoke({"messages": [("user", "go")]}, tenant("acme"))
        with pytest.raises(RunCancelled) as refused:
            second.invoke({"messages": [("user", "go")]}, tenant("acme"))
        with pytest.raises(RunCancelled) as other:
            second.invoke({"messages": [("user", "go")]}, tenant("globex"))
    # Eight calls of 120 fit in 1,000; the ninth, and the other worker's first, do not.
    assert (spent.value.policy, spent.value.kind) == ("acme-daily", "token_budget")
    assert spent.value.reason.startswith("The budget of tenant 'acme' for ")
    assert used_in_redis(redis_server, "acme") == 960
    assert refused.value.policy == "acme-daily"
    assert used_in_redis(redis_server, "globex") == 960  # a budget of its own
    acme_runs = {spent.value.run_id, refused.value.run_id}
    assert run_tokens(events, acme_runs) == 960
    assert other.value.policy == "acme-daily"


def test_workers_at_once_stop_at_the_limit_and_redis_counts_exactly_what_they_used(
    redis_server: RedisServer,
) -> None:
    apps = [worker(redis_server) for _ in range(2)]
    outcomes: list[str] = []

    def keep_running(app: Any) -> None:
        for _ in range(3):
            try:
                app.invoke({"messages": [("user", "go")]}, tenant("acme"))
                outcomes.append("completed")
            except RunCancelled as cancelled:
                outcomes.append(cancelled.kind)

    with capture_events() as events:
        threads = [threading.Thread(target=keep_running, args=(a,)) for a in apps for _ in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert outcomes == ["token_budget"] * 12
    finished = {e["run_id"] for e in events if e["event"] == "watchdog.run_finished"}
    used = used_in_redis(redis_server, "acme")
    # The estimate is the real usage: the budget is never passed, and nothing is lost.
    assert used == run_tokens(events, finished)
    assert 1000 - 120 < used <= 1000


def test_with_redis_down_calls_go_on_counted_on_the_workers_local_share(
    redis_server: RedisServer,
) -> None:
    registry = CollectorRegistry()
    app = worker(redis_server, registry, with_keys(local_share=0.5))
    redis_server.stop()
    answer = react_agent(scripted(tool_call("q", "c1"), AIMessage("done")))
    supervisor = app._watchdog.supervisor
    agent = supervisor.attach(answer, name="agent")
    with capture_events() as events:
        final = agent.invoke({"messages": [("user", "go")]}, tenant("acme"))
    assert final["messages"][-1].content == "done"
    errors = registry.get_sample_value(
        "watchdog_shared_budget_errors_total", {"policy": "acme-daily"}
    )
    assert errors == 4  # two model calls, each reserved and settled without Redis
    assert [e["policy"] for e in events if e["event"] == "watchdog.shared_budget_unavailable"] == [
        "acme-daily"
    ]


def test_attach_needs_redis_for_a_shared_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_REDIS_URL", raising=False)
    with pytest.raises(PolicyError, match="is kept in Redis; expected WATCHDOG_REDIS_URL"):
        Supervisor(policies(ACME_DAILY)).attach(searching_forever(), name="agent")


def test_the_policy_files_defaults_can_say_where_redis_is(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WATCHDOG_REDIS_URL", raising=False)
    text = f"version: 1\ndefaults:\n  redis_url: {redis_server.url}\npolicies:{ACME_DAILY}"
    supervisor = Supervisor(load_policy_text(text, "policies.yaml"))
    app = supervisor.attach(searching_forever(), name="agent")
    with pytest.raises(RunCancelled):
        app.invoke({"messages": [("user", "go")]}, tenant("acme"))
    assert used_in_redis(redis_server, "acme") == 960
    # A reload that drops the URL leaves the shared limit without Redis: said, not fatal.
    with capture_events() as events:
        supervisor.reload(policies(ACME_DAILY))
    assert supervisor.shared.url is None
    assert [e["error"] for e in events if e["event"] == "watchdog.shared_budget_unavailable"] == [
        "no Redis to keep it in: set WATCHDOG_REDIS_URL or defaults.redis_url"
    ]


def test_a_call_reserves_its_max_tokens_when_that_is_more_than_the_estimate(
    redis_server: RedisServer,
) -> None:
    model = scripted(*(tool_call(f"q{i}", f"c{i}") for i in range(10)))
    bounded: Any = model.bind(max_tokens=900)  # may answer with up to 900 tokens
    supervisor = Supervisor(policies(ACME_DAILY), redis_url=redis_server.url)
    app = supervisor.attach(react_agent(bounded), name="agent")
    with pytest.raises(RunCancelled) as raised:
        app.invoke({"messages": [("user", "go")]}, tenant("acme"))
    # The first call held 900 and used 120; the second, 120 + 900 held, would pass 1,000.
    assert "a call of 900 tokens more would pass the 1,000 tokens" in raised.value.reason
    assert used_in_redis(redis_server, "acme") == 120


def test_redis_killed_mid_run_then_back_counts_each_call_once(
    redis_server: RedisServer, clock: FakeClock
) -> None:
    @tool
    def look_up(query: str) -> str:
        """Look something up (and, the first time, lose Redis)."""
        if redis_server.popen.poll() is None:
            redis_server.kill()
        return f"found {query}"

    model = scripted(
        AIMessage("", tool_calls=[{"name": "look_up", "args": {"query": "q"}, "id": "c1"}]),
        AIMessage("done"),
    )
    registry = CollectorRegistry()
    supervisor = Supervisor(
        policies(with_keys(local_share=0.5)),
        redis_url=redis_server.url,
        registry=registry,
        clock=clock,
    )
    builder = StateGraph(Chat)
    builder.add_node("agent", lambda state: {"messages": [model.invoke(state["messages"])]})
    builder.add_node("tools", ToolNode([look_up]))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    app = supervisor.attach(builder.compile(), name="agent")
    # The first call is reserved and settled; Redis dies in the tool; the second call goes
    # on without its reservation, and its settlement is kept.
    final = app.invoke({"messages": [("user", "go")]}, tenant("acme"))
    assert final["messages"][-1].content == "done"
    errors = registry.get_sample_value(
        "watchdog_shared_budget_errors_total", {"policy": "acme-daily"}
    )
    assert errors == 2
    redis_server.start()  # back, with its data
    assert used_in_redis(redis_server, "acme") == 120
    clock.advance(1)  # Redis is tried again a second after it failed
    # The next call Redis answers sends the kept settlement first: each call counted once.
    again = react_agent(scripted(AIMessage("hello")))
    supervisor.attach(again, name="agent").invoke({"messages": [("user", "hi")]}, tenant("acme"))
    assert used_in_redis(redis_server, "acme") == 360


def test_a_budget_that_fails_closed_stops_calls_while_redis_is_away(
    redis_server: RedisServer,
) -> None:
    supervisor = Supervisor(policies(with_keys(fail_closed=True)), redis_url=redis_server.url)
    app = supervisor.attach(searching_forever(), name="agent")
    redis_server.kill()
    with pytest.raises(RunCancelled) as raised:
        app.invoke({"messages": [("user", "go")]}, tenant("acme"))
    reason = raised.value.reason
    assert reason.startswith("The budget of tenant 'acme' for ")
    assert reason.endswith(
        "could not be checked (Redis did not answer), and policy 'acme-daily' stops calls "
        "until it can be."
    )
    assert raised.value.step == 1  # the first call never started


def test_with_redis_down_a_worker_stops_at_its_local_share(redis_server: RedisServer) -> None:
    app = worker(redis_server, text=with_keys(local_share=0.5))
    redis_server.kill()
    with pytest.raises(RunCancelled) as raised:
        app.invoke({"messages": [("user", "go")]}, tenant("acme"))
    # Four calls of 120 fit in the worker's share of 500; the fifth does not.
    assert raised.value.reason == (
        "Redis did not answer, and this worker has spent 480 tokens of its local share of "
        f"500 tokens of the budget of tenant 'acme' for {_window(raised.value.reason)}, so a "
        "call of 120 tokens more would pass it (policy 'acme-daily')."
    )
    assert (raised.value.observed, raised.value.limit) == (600, 500)


def with_whole_share(
    redis_server: RedisServer, registry: CollectorRegistry, clock: FakeClock
) -> Supervisor:
    """A supervisor whose worker may spend the whole budget alone while Redis is away."""
    return Supervisor(
        policies(with_keys(local_share=1.0)),
        redis_url=redis_server.url,
        registry=registry,
        clock=clock,
    )


def _window(reason: str) -> str:
    return reason.split(" for ", 1)[1].split(" ", 1)[0].rstrip(",")


def test_a_redis_that_hangs_costs_a_worker_one_timeout_not_one_a_call(
    redis_server: RedisServer, clock: FakeClock
) -> None:
    registry = CollectorRegistry()
    # The clock stands still: no second passes, so Redis is not tried again in the run.
    supervisor = with_whole_share(redis_server, registry, clock)
    model = scripted(*(tool_call(f"q{i}", f"c{i}") for i in range(5)), AIMessage("done"))
    app = supervisor.attach(react_agent(model), name="agent")
    redis_server.popen.send_signal(signal.SIGSTOP)  # it takes connections, answers nothing
    try:
        started = time.monotonic()
        final = app.invoke({"messages": [("user", "go")]}, tenant("acme"))
        elapsed = time.monotonic() - started
    finally:
        redis_server.popen.send_signal(signal.SIGCONT)
    assert final["messages"][-1].content == "done"
    # Six calls, twelve operations without Redis; one of them waited for its timeout (0.25 s).
    errors = registry.get_sample_value(
        "watchdog_shared_budget_errors_total", {"policy": "acme-daily"}
    )
    assert errors == 12
    assert elapsed < 3  # twelve timeouts would take 3 s


# -- dollars, and rates shared across pods ------------------------------------------------

# Each call costs 100 x $10 + 20 x $50 per million tokens: $0.002; it reserves its estimate
# of 120 tokens at the dearer price: $0.006.
ACME_DOLLARS = """
- name: acme-dollars
  token_budget:
    max_cost_usd: 0.02
    prices: {default: {input_per_mtok: 10, output_per_mtok: 50}}
    scope: metadata.tenant
    window: 1d
    estimate_tokens: 120
"""


def test_a_budget_in_dollars_is_shared_in_millionths_of_a_dollar(
    redis_server: RedisServer,
) -> None:
    first, second = (worker(redis_server, text=ACME_DOLLARS) for _ in range(2))
    with pytest.raises(RunCancelled) as spent:
        first.invoke({"messages": [("user", "go")]}, tenant("acme"))
    with pytest.raises(RunCancelled) as refused:
        second.invoke({"messages": [("user", "go")]}, tenant("acme"))
    # Eight calls spend $0.016; a ninth, held at $0.006, would pass $0.02.
    assert spent.value.reason == (
        f"The budget of tenant 'acme' for {_window(spent.value.reason)} has $0.0160 used and "
        "$0.0000 held by calls in flight, so a call of $0.0060 more would pass the $0.0200 "
        "that policy 'acme-dollars' allows."
    )
    assert (spent.value.observed, spent.value.limit) == (0.022, 0.02)
    assert refused.value.step == 1  # the other worker's first call does not start
    client = redis.Redis.from_url(redis_server.url)
    try:
        (key,) = client.scan_iter("watchdog:{acme-dollars|metadata.tenant=acme|*|usd}:budget")
        assert client.hgetall(key) == {b"used": b"16000", b"reserved": b"0"}
    finally:
        client.close()


def rate_of(of: str, most: int, scope: str = "global") -> str:
    return f"""
- name: fleet-{of}
  rate: {{max_events: {most}, per_seconds: 60, of: {of}, scope: {scope}}}
"""


def test_a_rate_of_model_calls_holds_across_workers(redis_server: RedisServer) -> None:
    first, second = (worker(redis_server, text=rate_of("llm_calls", 3)) for _ in range(2))
    with pytest.raises(RunCancelled) as fourth:
        first.invoke({"messages": [("user", "go")]}, tenant("acme"))
    with pytest.raises(RunCancelled) as refused:
        second.invoke({"messages": [("user", "go")]}, tenant("globex"))
    # Three model calls (steps 1, 3 and 5); the fourth, at step 7, does not start.
    assert (fourth.value.kind, fourth.value.step) == ("rate", 7)
    assert fourth.value.reason == (
        "Within any 60 s, all runs may make at most 3 model calls (policy 'fleet-llm_calls'), "
        "and 3 model calls were made: one more would pass it."
    )
    assert (refused.value.kind, refused.value.step) == ("rate", 1)


def test_a_rate_of_tool_calls_per_tenant_stops_the_call_before_it_runs(
    redis_server: RedisServer,
) -> None:
    app = worker(redis_server, text=rate_of("tool_calls", 2, "metadata.tenant"))
    with capture_events() as events, pytest.raises(RunCancelled) as raised:
        app.invoke({"messages": [("user", "go")]}, tenant("acme"))
    assert (raised.value.kind, raised.value.observed, raised.value.limit) == ("rate", 3, 2)
    assert raised.value.reason.startswith("Within any 60 s, tenant 'acme' may make at most 2")
    (finished,) = [e for e in events if e["event"] == "watchdog.run_finished"]
    assert finished["steps"] == 6  # the third tool step started; its tool call did not run


def test_a_rate_of_tokens_reserves_and_settles_like_a_budget(redis_server: RedisServer) -> None:
    text = rate_of("tokens", 500).replace("of: tokens", "of: tokens, estimate_tokens: 120")
    app = worker(redis_server, text=text)
    with pytest.raises(RunCancelled) as raised:
        app.invoke({"messages": [("user", "go")]}, tenant("acme"))
    assert raised.value.reason == (
        "The rate of all runs within any 60 s has 480 tokens used and 0 tokens held by calls "
        "in flight, so a call of 120 tokens more would pass the 500 tokens that policy "
        "'fleet-tokens' allows."
    )


def test_an_outage_is_logged_as_it_starts_then_every_ten_seconds_and_all_of_it_when_over(
    redis_server: RedisServer, clock: FakeClock
) -> None:
    registry = CollectorRegistry()
    supervisor = with_whole_share(redis_server, registry, clock)

    def answer() -> None:
        app = supervisor.attach(react_agent(scripted(AIMessage("hello"))), name="agent")
        app.invoke({"messages": [("user", "hi")]}, tenant("acme"))

    redis_server.kill()
    with capture_events() as events:
        answer()  # a reservation and a settlement without Redis
        clock.advance(4)
        answer()
        clock.advance(7)  # ten seconds since the first log
        answer()
        redis_server.start()
        clock.advance(1)
        answer()  # Redis answers: the failures not logged yet are
    logged = [e["failures"] for e in events if e["event"] == "watchdog.shared_budget_unavailable"]
    assert logged == [1, 4, 1]
    counted = registry.get_sample_value(
        "watchdog_shared_budget_errors_total", {"policy": "acme-daily"}
    )
    assert counted == sum(logged) == 6  # what a sidecar counts from the events is exact


def test_a_spent_shared_budget_lets_the_run_land_softly_and_counts_the_landing_call(
    redis_server: RedisServer,
) -> None:
    text = ACME_DAILY.replace("max_total_tokens: 1000", "max_total_tokens: 300").replace(
        "- name: acme-daily\n", "- name: acme-daily\n  on_violation: wrap_up\n"
    )
    model = scripted(tool_call("a", "c1"), tool_call("b", "c2"), AIMessage("What I found."))
    supervisor = Supervisor(policies(text), redis_url=redis_server.url)
    graph = create_agent(model, [search], checkpointer=InMemorySaver())
    app = supervisor.attach(graph, name="agent")
    config = {**tenant("acme"), "configurable": {"thread_id": "t"}}
    with capture_events() as events:
        final = app.invoke({"messages": [("user", "go")]}, config)
    # Two calls of 120 fit in 300; the third is refused, and the run lands with one more.
    assert final["messages"][-1].content == "What I found."
    assert [e["event"] for e in events if "wrap_up" in e["event"] or "landed" in e["event"]] == [
        "watchdog.wrap_up_started",
        "watchdog.landed_softly",
    ]
    assert used_in_redis(redis_server, "acme") == 360  # the landing call counted, unrefused


def test_a_person_can_let_a_run_past_a_spent_shared_budget_by_so_much(
    redis_server: RedisServer,
) -> None:
    text = ACME_DAILY.replace("max_total_tokens: 1000", "max_total_tokens: 300").replace(
        "- name: acme-daily\n", "- name: acme-daily\n  on_violation: ask\n"
    )
    answers = [*(tool_call(f"q{i}", f"c{i}") for i in range(6)), AIMessage("What I found.")]
    supervisor = Supervisor(policies(text), redis_url=redis_server.url)
    app = supervisor.attach(
        create_agent(scripted(*answers), [search], checkpointer=InMemorySaver()), name="agent"
    )
    config = {**tenant("acme"), "configurable": {"thread_id": "t"}}
    paused = app.invoke({"messages": [("user", "go")]}, config)
    (asked,) = paused["__interrupt__"]
    assert (asked.value["policy"], asked.value["limit"]) == ("acme-daily", 300)
    # 240 more tokens for this run: two more calls fit, the next asks again.
    again = app.invoke(Command(resume={"extend": 240}), config)
    (asked_again,) = again["__interrupt__"]
    assert asked_again.value["limit"] == 540
    assert used_in_redis(redis_server, "acme") == 600
