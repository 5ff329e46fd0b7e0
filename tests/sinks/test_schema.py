"""The run events, written once: what a supervised run logs is what the schema reads back."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from tests.graphs import cancelled_and_completed, policies
from watchdog import Supervisor
from watchdog._sinks import schema
from watchdog.testing import FakeClock


def test_an_event_is_logged_as_its_namespaced_name_and_flat_fields() -> None:
    event = schema.RunStarted(run_id="r-1", thread_id=None, graph="agent", policies=["steps"])
    assert event.record() == {
        "event": "watchdog.run_started",
        "run_id": "r-1",
        "thread_id": None,
        "graph": "agent",
        "policies": ["steps"],
    }


@pytest.mark.parametrize("cls", schema._EVENTS, ids=lambda cls: cls.name)
def test_an_events_fields_are_its_dataclass_fields_in_order(cls: type[schema.Event]) -> None:
    names = [field.name for field in dataclasses.fields(cls)]
    assert len(names) > 1  # so its getter gives a tuple
    event = cls(**{name: f"value of {name}" for name in names})
    assert list(event.fields().items()) == [(name, f"value of {name}") for name in names]


def test_an_internal_error_outside_a_run_has_no_run_keys() -> None:
    assert schema.InternalError(error="E: x", traceback="tb").record() == {
        "event": "watchdog.internal_error",
        "error": "E: x",
        "traceback": "tb",
    }


def test_what_a_supervised_run_logs_is_read_back_as_it_was(clock: FakeClock) -> None:
    supervisor = Supervisor(
        policies(
            """\
            - {name: steps, match: {graph: looper}, step_count: {max_steps: 2}}
            - {name: tokens, mode: audit, token_budget: {max_total_tokens: 200}, warn_at: 0.5}
            """
        ),
        clock=clock,
    )
    events = cancelled_and_completed(supervisor)

    read = [(e, schema.read_event(e)) for e in events]
    assert [e for e, event in read if event is None] == []
    assert {type(event).__name__ for _, event in read if event is not None} == {
        "RunStarted",
        "NearLimit",
        "Violation",
        "DrainRequested",
        "RunCancelled",
        "RunFinished",
    }
    for logged, event in read:
        if event is not None:
            assert event.record() == logged


def test_a_value_of_the_wrong_type_counts_as_absent() -> None:
    event = schema.read_event(
        {
            "event": "watchdog.run_finished",
            "run_id": 7,
            "graph": None,
            "outcome": ["x"],
            "elapsed_s": math.nan,
            "steps": -1,
            "tokens": True,
            "input_tokens": 10**400,
            "output_tokens": "12",
        }
    )
    assert event == schema.RunFinished(
        run_id="7",
        thread_id=None,
        graph="",
        outcome="['x']",
        error=None,
        elapsed_s=None,
        steps=None,
        tokens=None,
        input_tokens=None,
        output_tokens=None,
    )


@pytest.mark.parametrize(
    "record",
    [
        {"event": "watchdog.something_new", "run_id": "r"},
        {"event": "watchdog.policy_loaded", "source": "x"},
        {"event": 3},
        {},
    ],
)
def test_an_event_the_schema_does_not_have_is_none(record: dict[str, Any]) -> None:
    assert schema.read_event(record) is None


def test_the_namespace_may_be_left_out() -> None:
    assert schema.read_event({"event": "internal_error", "error": "E"}) == schema.InternalError(
        error="E", traceback=""
    )
