"""The deadline scheduler: one heap, one thread, callbacks held weakly."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator

import pytest

from watchdog._core.scheduler import COMPACT_AT, Scheduler
from watchdog.testing import FakeClock


class Calls:
    """Records its calls, as a run's bound methods are what a scheduler calls."""

    def __init__(self) -> None:
        self.made: list[object] = []
        self.done = threading.Event()

    def record(self, what: object) -> None:
        self.made.append(what)
        self.done.set()

    def fail(self, what: object) -> None:
        msg = f"broken {what}"
        raise ValueError(msg)


@pytest.fixture
def errors() -> list[BaseException]:
    return []


@pytest.fixture
def manual(clock: FakeClock, errors: list[BaseException]) -> Iterator[Scheduler]:
    scheduler = Scheduler(clock, on_error=errors.append, threaded=False)
    yield scheduler
    scheduler.close()


def test_timers_run_in_deadline_order_once_due(clock: FakeClock, manual: Scheduler) -> None:
    calls = Calls()
    for when, what in ((3, "c"), (1, "a"), (2, "b"), (2, "b2")):
        manual.call_at(clock.now + when, calls.record, what)
    assert manual.run_due() == 0
    clock.advance(2)
    assert manual.run_due() == 3
    assert calls.made == ["a", "b", "b2"]  # ties keep the order they were scheduled in
    clock.advance(1)
    assert manual.run_due() == 1
    assert calls.made == ["a", "b", "b2", "c"]


def test_a_cancelled_timer_never_runs(clock: FakeClock, manual: Scheduler) -> None:
    calls = Calls()
    kept = manual.call_at(clock.now + 1, calls.record, "kept")
    dropped = manual.call_at(clock.now + 1, calls.record, "dropped")
    manual.cancel(dropped)
    manual.cancel(dropped)  # twice is once
    clock.advance(1)
    assert manual.run_due() == 1
    assert calls.made == ["kept"]
    assert not kept.pending
    assert not dropped.pending


def test_cancelled_timers_are_dropped_from_the_heap_once_they_are_most_of_it(
    clock: FakeClock, manual: Scheduler
) -> None:
    calls = Calls()
    timers = [manual.call_at(clock.now + 10, calls.record, i) for i in range(COMPACT_AT * 2)]
    for timer in timers[:COMPACT_AT]:
        manual.cancel(timer)
    assert len(manual._heap) == COMPACT_AT * 2  # a few taken back: they wait their turn
    manual.cancel(timers[COMPACT_AT])
    assert len(manual._heap) == COMPACT_AT - 1  # more than half: the heap is rebuilt
    clock.advance(10)
    assert manual.run_due() == COMPACT_AT - 1
    assert calls.made == list(range(COMPACT_AT + 1, COMPACT_AT * 2))


def test_a_timer_does_not_keep_its_owner_alive(clock: FakeClock, manual: Scheduler) -> None:
    calls = Calls()
    manual.call_at(clock.now + 1, calls.record, "never")
    del calls
    gc.collect()
    clock.advance(1)
    assert manual.run_due() == 0


def test_a_failing_callback_is_reported_and_the_rest_still_run(
    clock: FakeClock, manual: Scheduler, errors: list[BaseException]
) -> None:
    calls = Calls()
    manual.call_at(clock.now + 1, calls.fail, "first")
    manual.call_at(clock.now + 1, calls.record, "second")
    clock.advance(1)
    assert manual.run_due() == 2
    assert [str(e) for e in errors] == ["broken first"]
    assert calls.made == ["second"]


def test_the_thread_runs_a_timer_when_it_falls_due(errors: list[BaseException]) -> None:
    scheduler = Scheduler(time.monotonic, on_error=errors.append)
    try:
        calls = Calls()
        later = Calls()
        scheduler.call_at(time.monotonic() + 60, later.record, "later")
        scheduler.call_at(time.monotonic() + 0.02, calls.record, "soon")  # wakes the waiting thread
        assert calls.done.wait(timeout=10)
        assert calls.made == ["soon"]
        assert later.made == []
    finally:
        scheduler.close()
    assert errors == []


def test_close_stops_the_thread_and_drops_what_was_pending(errors: list[BaseException]) -> None:
    scheduler = Scheduler(time.monotonic, on_error=errors.append)
    calls = Calls()
    timer = scheduler.call_at(time.monotonic() + 0.05, calls.record, "dropped")
    thread = scheduler._thread
    assert thread is not None
    scheduler.close()
    assert not thread.is_alive()
    assert not calls.done.wait(timeout=0.1)
    assert timer.pending  # never ran: the heap went with the scheduler
