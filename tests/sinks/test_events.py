"""Events through structlog: the app's configuration when it has one, JSON lines otherwise."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

import pytest
import structlog
from langchain_core.messages import AIMessage
from structlog.testing import capture_logs

from tests.graphs import Bodies, endless, policies, react_agent, scripted, tool_call
from watchdog import RunCancelled, Supervisor
from watchdog.testing import FakeClock, capture_cancellations


@pytest.fixture
def supervisor(clock: FakeClock) -> Supervisor:
    return Supervisor(
        policies("- {name: steps, step_count: {max_steps: 3}}"),
        clock=clock,
        registry=None,
    )


@pytest.fixture(autouse=True)
def _structlog_defaults() -> Iterator[None]:
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def cancel_a_run(supervisor: Supervisor, clock: FakeClock, run_id: uuid.UUID) -> None:
    app = supervisor.attach(endless(Bodies(), is_async=False, clock=clock), name="support-bot")
    with pytest.raises(RunCancelled):
        app.invoke({"count": 0}, {"run_id": run_id, "configurable": {"thread_id": "t-1"}})


def test_run_cancelled_has_exactly_its_fields(supervisor: Supervisor, clock: FakeClock) -> None:
    run_id = uuid.uuid4()
    with capture_logs() as logs:
        cancel_a_run(supervisor, clock, run_id)
    (cancelled,) = (e for e in logs if e["event"] == "watchdog.run_cancelled")
    assert cancelled == {
        "event": "watchdog.run_cancelled",
        "log_level": "warning",
        "run_id": str(run_id),
        "thread_id": "t-1",
        "graph": "support-bot",
        "policy": "steps",
        "kind": "step_count",
        "mode": "enforce",
        "reason": "The run began step 4, but policy 'steps' allows at most 3 steps.",
        "observed": 4,
        "limit": 3,
        "step": 4,
        "node": "work",
        "phase": "drained",
        "also": [],
        "latency_s": 0.0,  # found as step 4 began, stopped at once (on the fake clock)
        "elapsed_s": 3.0,  # the fake clock moved a second per node body
        "steps": 4,
        "tokens": 0,
    }
    assert [e["event"] for e in logs] == [
        "watchdog.run_started",
        "watchdog.violation",
        "watchdog.drain_requested",
        "watchdog.run_cancelled",
        "watchdog.run_finished",
    ]


def test_events_never_carry_state_values_or_message_text() -> None:
    secret = "card number 4111 1111 1111 1111"
    model = scripted(tool_call(secret), AIMessage(f"I saw {secret}"))
    supervisor = Supervisor(policies("- {name: steps, step_count: {max_steps: 2}}"))
    app = supervisor.attach(react_agent(model), name="agent")
    with capture_logs() as logs, pytest.raises(RunCancelled):
        app.invoke({"messages": [("user", secret)]})
    assert len(logs) == 5
    assert "4111" not in json.dumps(logs, default=str)


def test_without_structlog_configured_events_are_json_lines_on_stderr(
    supervisor: Supervisor, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    cancel_a_run(supervisor, clock, uuid.uuid4())
    lines = capsys.readouterr().err.splitlines()
    events = [json.loads(line) for line in lines]
    assert [(e["event"], e["level"]) for e in events][-2:] == [
        ("watchdog.run_cancelled", "warning"),
        ("watchdog.run_finished", "info"),
    ]
    assert all(e["timestamp"].endswith("Z") for e in events)


def test_an_applications_own_structlog_configuration_is_respected(
    supervisor: Supervisor, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[dict[str, Any]] = []

    def keep(logger: Any, method: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
        seen.append(dict(event))
        raise structlog.DropEvent

    structlog.configure(processors=[keep])
    cancel_a_run(supervisor, clock, uuid.uuid4())
    assert "watchdog.run_cancelled" in [e["event"] for e in seen]
    assert capsys.readouterr().err == ""


def test_a_configuration_changed_after_events_were_logged_takes_the_next_ones(
    supervisor: Supervisor, clock: FakeClock
) -> None:
    """The watchdog keeps the logger it built from the application's configuration, and
    builds another as soon as that configuration changes."""
    seen: dict[str, list[str]] = {"first": [], "second": []}

    def keeping(into: str) -> Any:
        def keep(logger: Any, method: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
            seen[into].append(event["event"])
            raise structlog.DropEvent

        return keep

    structlog.configure(processors=[keeping("first")])
    cancel_a_run(supervisor, clock, uuid.uuid4())
    structlog.configure(processors=[keeping("second")])
    with capture_logs() as captured:  # the processor list changed in place, and back
        cancel_a_run(supervisor, clock, uuid.uuid4())
    cancel_a_run(supervisor, clock, uuid.uuid4())
    assert seen["first"].count("watchdog.run_finished") == 1
    assert [e["event"] for e in captured].count("watchdog.run_finished") == 1
    assert seen["second"].count("watchdog.run_finished") == 1


def test_capture_cancellations_sees_only_cancels(supervisor: Supervisor, clock: FakeClock) -> None:
    with capture_logs(), capture_cancellations() as cancellations:
        cancel_a_run(supervisor, clock, uuid.uuid4())
    assert [(c["policy"], c["phase"]) for c in cancellations] == [("steps", "drained")]
