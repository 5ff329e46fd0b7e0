"""The worker's side of the sidecar link: when the sidecar is not there, and when it refuses
what it is sent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest
from langchain_core.messages import AIMessage
from prometheus_client import CollectorRegistry

from tests.graphs import Bodies, Counter, endless, hanging, one_node, policies, scripted
from watchdog import RunCancelled, Supervisor
from watchdog._pod.link import BATCH, EVENTS_BODY_LIMIT, MAX_EVENT_TEXT, SidecarLink
from watchdog.testing import capture_events

POLICIES = "version: 1\npolicies:\n- {name: local-steps, step_count: {max_steps: 2}}\n"


@pytest.fixture
def nowhere() -> str:
    """A loopback url where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_an_unreachable_sidecar_without_a_fallback_is_a_clear_error(nowhere: str) -> None:
    with pytest.raises(ConnectionError, match="pass fallback= or set WATCHDOG_POLICIES"):
        Supervisor.connect(nowhere, token="t")


def test_an_unreachable_sidecar_falls_back_to_local_policies_and_counts_dropped_events(
    nowhere: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "local.yaml").write_text(POLICIES)
    monkeypatch.setenv("WATCHDOG_SIDECAR_URL", nowhere)
    monkeypatch.setenv("WATCHDOG_POLICIES", str(tmp_path / "local.yaml"))
    registry = CollectorRegistry()
    with capture_events() as events:
        supervisor = Supervisor.connect(registry=registry)
    try:
        assert events[0]["event"] == "watchdog.sidecar_unreachable"
        assert supervisor.link is not None
        supervisor.link.max_buffer = 3  # a small buffer, to see it overflow
        app = supervisor.attach(endless(Bodies(), is_async=False, checkpointer=False), name="g")
        with capture_events() as emitted, pytest.raises(RunCancelled) as raised:
            app.invoke({"count": 0})  # enforced locally all the same
        assert raised.value.policy == "local-steps"
        assert not supervisor.link.flush()
        assert registry.get_sample_value("watchdog_sidecar_events_dropped_total") == 3
    finally:
        with capture_events() as closing:
            supervisor.close(timeout=0.05)
    # Nothing was ever sent: all but the three the buffer held were dropped, and counted;
    # the three left when it closed are counted too, and reported.
    assert len(emitted) == 6
    assert registry.get_sample_value("watchdog_sidecar_events_dropped_total") == 6
    assert [(e["event"], e["events"]) for e in closing] == [("watchdog.sidecar_events_unsent", 3)]


# -- a sidecar that answers what a test tells it to -----------------------------------------


class StubSidecar(ThreadingHTTPServer):
    """A real HTTP server on loopback that stands in for ``watchdog serve``: ``answer`` picks
    the status for each event batch, and every batch is kept with the status it got; the
    answers to the workers' long-polls are taken from ``polls`` (after a short wait when
    there are none), and each poll's body is kept in ``polled``."""

    daemon_threads = True

    def __init__(self, answer: Callable[[list[dict[str, Any]]], int], port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), StubHandler)
        self.answer = answer
        self.batches: list[tuple[int, list[dict[str, Any]]]] = []
        self.bodies: list[dict[str, Any]] = []
        self.polls: queue.Queue[Any] = queue.Queue()
        self.polled: list[dict[str, Any]] = []
        self.stopping = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def answered(self, status: int) -> int:
        """How many batches got ``status``."""
        return sum(1 for got, _ in list(self.batches) if got == status)

    def taken(self) -> list[dict[str, Any]]:
        """The events of the batches it took, in order."""
        return [event for got, events in list(self.batches) if got == 202 for event in events]

    def names(self) -> list[str]:
        return [event["event"] for event in self.taken()]


class StubHandler(BaseHTTPRequestHandler):
    server: StubSidecar

    def do_GET(self) -> None:
        self._send(304, None)  # the policies have not changed

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/v1/commands":
            self.server.polled.append(body)
            try:
                answer = self.server.polls.get(timeout=0.2)
            except queue.Empty:  # a long-poll with nothing to say
                answer = {"commands": []}
            self._send(200, answer)
            return
        self.server.bodies.append(body)
        status = self.server.answer(body["events"])
        if body["events"]:  # not a list of live runs alone
            self.server.batches.append((status, body["events"]))
        self._send(status, {"accepted": len(body["events"])} if status == 202 else {})

    def _send(self, status: int, body: Any) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def stub_sidecar(
    answer: Callable[[list[dict[str, Any]]], int], port: int = 0
) -> Iterator[StubSidecar]:
    server = StubSidecar(answer, port)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join()


@contextlib.contextmanager
def linked(sidecar: StubSidecar, registry: CollectorRegistry) -> Iterator[SidecarLink]:
    # A time limit, so that the supervisor's timer thread runs and hard-cancels hung runs.
    limits = "- {name: s, step_count: {max_steps: 9}}\n- {name: w, wall_time: {max_seconds: 600}}"
    supervisor = Supervisor(policies(limits), registry=registry)
    link = SidecarLink(
        supervisor, sidecar.url, "t", etag='"p"', flush_interval=0.02, command_wait=0.2
    )
    try:
        yield link
    finally:
        link.close()
        supervisor.close()


def wait_for(what: str, condition: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout}s")
        time.sleep(0.01)


def test_the_list_of_live_runs_carries_each_runs_steps_tokens_and_start(
    registry: CollectorRegistry,
) -> None:
    release = threading.Event()
    model = scripted(AIMessage("on it"))  # 120 tokens

    def think(state: Counter) -> dict[str, int]:
        model.invoke("what now?")
        release.wait(60)
        return {"count": 1}

    spend = "- {name: spend, token_budget: {max_total_tokens: 1000}}"
    supervisor = Supervisor(policies(spend), registry=registry)
    app = supervisor.attach(one_node(think), name="thinker")
    with stub_sidecar(lambda events: 202) as sidecar:
        link = SidecarLink(supervisor, sidecar.url, "t", etag='"p"', command_wait=0.2)
        runner = threading.Thread(target=app.invoke, args=({"count": 0},))
        runner.start()
        try:
            wait_for("the model's tokens", lambda: [r.tokens for r in supervisor.runs()] == [120])
            assert link.flush(sync=True)
            [run] = supervisor.runs()
            [listed] = [body["live"] for body in sidecar.bodies if "live" in body][-1]
            assert listed == [
                run.run_id, "thinker", None, run.steps, 120, round(run.started_at.timestamp(), 3)
            ]  # fmt: skip
            assert run.steps == 1
        finally:
            release.set()
            runner.join(60)
            link.close()
            supervisor.close()


def refuse_poison(events: list[dict[str, Any]]) -> int:
    """What a sidecar does with a batch it cannot read: refuse it, every time."""
    return 422 if any(event.get("poison") for event in events) else 202


def dropped(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("watchdog_sidecar_events_dropped_total")


def test_a_refused_batch_is_dropped_counted_and_reported_and_later_events_still_go(
    registry: CollectorRegistry,
) -> None:
    with (
        stub_sidecar(refuse_poison) as sidecar,
        linked(sidecar, registry) as link,
        capture_events() as emitted,
    ):
        link.enqueue({"event": "test.poison", "poison": True, "secret": "s3cr3t"})
        wait_for("refusal", lambda: sidecar.answered(422))
        link.enqueue({"event": "test.after"})
        wait_for(
            "later event and report",
            lambda: {"test.after", "watchdog.sidecar_batch_refused"} <= set(sidecar.names()),
        )
    # Refused once, not retried: the later events did not wait behind it.
    assert [[e["event"] for e in events] for got, events in sidecar.batches if got == 422] == [
        ["test.poison"]
    ]
    assert "test.poison" not in sidecar.names()
    assert dropped(registry) == 1
    report = {"event": "watchdog.sidecar_batch_refused", "url": sidecar.url, "status": 422}
    reports = [e for e in emitted if e["event"] == "watchdog.sidecar_batch_refused"]
    assert reports == [{**report, "events": 1}]
    # The report says how many, not what: nothing of the refused events is in it.
    assert "s3cr3t" not in json.dumps(sidecar.taken())


def test_a_sidecar_that_refuses_everything_is_not_sent_reports_of_its_refusals_forever(
    registry: CollectorRegistry,
) -> None:
    with (
        stub_sidecar(lambda events: 413) as sidecar,
        linked(sidecar, registry) as link,
        capture_events() as emitted,
    ):
        link.enqueue({"event": "test.one"})
        wait_for("refused report", lambda: sidecar.answered(413) >= 2)
        assert link.flush()  # a report of the report would be sent by now
        assert sidecar.answered(413) == 2
        assert link.buffered == 0
    assert [[e["event"] for e in events] for _, events in sidecar.batches] == [
        ["test.one"],
        ["watchdog.sidecar_batch_refused"],
    ]
    assert [e["event"] for e in emitted] == ["watchdog.sidecar_batch_refused"]
    assert dropped(registry) == 2


def test_a_refused_token_keeps_the_events_retries_and_is_reported_once(
    registry: CollectorRegistry,
) -> None:
    fixed = threading.Event()
    with (
        stub_sidecar(lambda events: 202 if fixed.is_set() else 401) as sidecar,
        linked(sidecar, registry) as link,
        capture_events() as emitted,
    ):
        link.enqueue({"event": "test.one"})
        link.enqueue({"event": "test.two"})
        wait_for("second refusal", lambda: sidecar.answered(401) >= 2)
        fixed.set()  # the operator puts the right token in place
        wait_for("events", lambda: "watchdog.sidecar_unauthorized" in sidecar.names())
    assert sidecar.names() == ["test.one", "test.two", "watchdog.sidecar_unauthorized"]
    assert [(e["event"], e["status"]) for e in emitted] == [("watchdog.sidecar_unauthorized", 401)]
    assert dropped(registry) == 0


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no")


def test_values_json_cannot_write_are_sent_as_text_and_never_stop_the_link(
    registry: CollectorRegistry,
) -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    with stub_sidecar(refuse_poison) as sidecar, linked(sidecar, registry) as link:
        link.enqueue({"event": "test.odd", "value": Decimal("1.5"), "when": {1, 2}})
        wait_for("odd value", lambda: "test.odd" in sidecar.names())
        link.enqueue({"event": "test.keys", "value": {(1, 2): "a", None: "b", 3: Unprintable()}})
        wait_for("odd keys", lambda: "test.keys" in sidecar.names())
        link.enqueue({"event": "test.cycle", "value": cycle})  # no JSON at all: dropped
        wait_for("the cycle counted", lambda: dropped(registry) == 1)
        link.enqueue({"event": "test.after"})
        wait_for("later event", lambda: "test.after" in sidecar.names())
    odd, keys = sidecar.taken()[:2]
    assert (odd["value"], odd["when"]) == ("1.5", "{1, 2}")
    assert keys["value"] == {"null": "b", "3": "<unprintable Unprintable>"}
    assert "test.cycle" not in sidecar.names()


def test_long_texts_are_cut_and_a_batch_too_large_for_the_sidecar_is_sent_in_parts(
    registry: CollectorRegistry,
) -> None:
    sizes: list[int] = []

    def take(events: list[dict[str, Any]]) -> int:
        sizes.append(len(json.dumps({"worker": "w", "events": events})))
        return 202

    huge = "x" * 10_000_000
    wide = {f"text-{i}": "y" * 10_000 for i in range(5)}
    with stub_sidecar(take) as sidecar, linked(sidecar, registry) as link:
        link.enqueue({"event": "test.huge", "graph": huge, "n": 1})
        wait_for("the huge event", lambda: "test.huge" in sidecar.names())
        for i in range(BATCH):
            link.enqueue({"event": "test.wide", "i": i, **wide})
        wait_for("every wide event", lambda: sidecar.names().count("test.wide") == BATCH)
    [cut] = [e for e in sidecar.taken() if e["event"] == "test.huge"]
    assert (
        cut["graph"]
        == "x" * MAX_EVENT_TEXT + f"... ({10_000_000 - MAX_EVENT_TEXT} more characters)"
    )
    assert cut["n"] == 1
    assert max(sizes) <= EVENTS_BODY_LIMIT
    assert [e["i"] for e in sidecar.taken() if e["event"] == "test.wide"] == list(range(BATCH))
    assert dropped(registry) == 0


def take_all(events: list[dict[str, Any]]) -> int:
    return 202


def test_junk_answers_to_the_long_poll_are_counted_and_the_next_cancel_still_lands(
    registry: CollectorRegistry,
) -> None:
    """A proxy in between answers ``[]``, or worse: the command thread counts each as an
    internal error, backs off, and goes on taking cancels."""
    run_id = uuid.uuid4()
    outcome: list[BaseException] = []

    def run(app: Any) -> None:
        try:
            asyncio.run(app.ainvoke({"count": 0}, {"run_id": run_id}))
        except RunCancelled as cancelled:
            outcome.append(cancelled)

    with stub_sidecar(take_all) as sidecar, linked(sidecar, registry) as link:
        app = cast(Supervisor, link.supervisor).attach(hanging(), name="hung")
        runner = threading.Thread(target=run, args=(app,), daemon=True)
        runner.start()
        wait_for("the run", link.supervisor.runs)
        junk: list[Any] = [[], {"commands": "none"}, None, {"commands": [5, {"id": "c-1"}]}]
        for answer in junk:
            sidecar.polls.put(answer)
        cancel = {"id": "c-2", "type": "cancel", "run_id": str(run_id), "reason": "at last"}
        sidecar.polls.put({"commands": [cancel]})
        wait_for("the cancel", lambda: outcome, timeout=30)
        runner.join(30)
        ack = {"id": "c-2", "applied": True, "live": True}
        wait_for("its acknowledgement", lambda: any(ack in p["acks"] for p in sidecar.polled))
    assert outcome[0].reason == "at last"  # type: ignore[attr-defined]
    assert registry.get_sample_value("watchdog_internal_errors_total") == 5


def with_five_events_buffered(url: str, registry: CollectorRegistry) -> Supervisor:
    """A supervisor linked to ``url`` whose link holds five events it has not sent."""
    supervisor = Supervisor(policies("- {name: s, step_count: {max_steps: 9}}"), registry=registry)
    link = supervisor.link = SidecarLink(supervisor, url, "t", etag='"p"', flush_interval=0.02)
    for i in range(5):
        link.enqueue({"event": "test.left", "i": i})
    return supervisor


def test_closing_while_the_sidecar_is_down_waits_its_timeout_then_counts_what_is_left(
    nowhere: str, registry: CollectorRegistry
) -> None:
    supervisor = with_five_events_buffered(nowhere, registry)
    started = time.monotonic()
    with capture_events() as reported:
        supervisor.close(timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 10
    assert dropped(registry) == 5
    assert reported == [
        {"event": "watchdog.sidecar_events_unsent", "url": nowhere, "events": 5, "waited_s": 0.3}
    ]


def test_closing_sends_what_is_left_when_the_sidecar_comes_back_within_the_wait(
    nowhere: str, registry: CollectorRegistry
) -> None:
    supervisor = with_five_events_buffered(nowhere, registry)
    link = supervisor.link
    assert link is not None
    closing = threading.Thread(target=supervisor.close, kwargs={"timeout": 60})
    with capture_events() as reported:
        closing.start()
        wait_for("the close to send on its own", lambda: not link._threads[0].is_alive())
        assert closing.is_alive(), "it gave up on its events while the sidecar was away"
        with stub_sidecar(take_all, port=int(nowhere.rsplit(":", 1)[1])) as sidecar:
            closing.join(60)
    assert [e["i"] for e in sidecar.taken()] == [0, 1, 2, 3, 4]
    assert (dropped(registry), reported) == (0, [])
