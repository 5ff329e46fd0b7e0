"""The run state's windows, each held to the plain computation it stands for."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from watchdog._core.state import AmountWindow, CycleTracker, EventWindow, RepeatWindow


@given(st.integers(1, 8), st.lists(st.integers(0, 3), max_size=200))
def test_a_repeat_window_counts_the_last_key_among_the_last_size_keys(
    size: int, keys: list[int]
) -> None:
    window = RepeatWindow(size)
    for pushed, key in enumerate(keys, 1):
        window.push(key)
        last = keys[max(0, pushed - size) : pushed]
        assert window.last_count == last.count(key)
        assert window._counts == {k: last.count(k) for k in set(last)}  # no key left behind


@given(st.lists(st.sampled_from("abcde"), min_size=1, max_size=60))
def test_a_cycle_tracker_finds_the_longest_run_of_repeats_of_a_short_cycle(
    names: list[str],
) -> None:
    tracker = CycleTracker()
    for seen in range(1, len(names) + 1):
        tracker.push(names[seen - 1])
        repeats = [_repeats(names[:seen], p) for p in range(1, 5)]
        assert tracker.repeats == max(repeats)
        period = repeats.index(max(repeats)) + 1  # the shortest cycle that repeats most
        assert tracker.cycle == tuple(names[seen - period : seen])


def _repeats(names: list[str], period: int) -> int:
    """Complete cycles of ``period`` standing in a row at the end of ``names``."""
    if len(names) < period:
        return 1
    matching = 0
    while matching + period < len(names) and (
        names[-1 - matching] == names[-1 - matching - period]
    ):
        matching += 1
    return 1 + matching // period


events = st.lists(st.tuples(st.floats(0, 3, allow_nan=False), st.integers(0, 50)), max_size=300)


@given(st.integers(1, 40), events)
def test_a_counting_window_counts_the_events_of_the_last_period(
    capacity: int, steps: list[tuple[float, int]]
) -> None:
    window = EventWindow(per_seconds=5.0, capacity=capacity)
    times = list(itertools.accumulate(gap for gap, _ in steps))
    for pushed, now in enumerate(times, 1):
        window.push(now)
        inside = sum(1 for t in times[:pushed] if t > now - 5.0)
        assert window.observe(now) == min(inside, capacity)  # capacity: the most it keeps
        # Dropped entries do not pile up: trimmed once doubled, never twice the capacity.
        assert len(window._times) < window._trim_at <= 2 * capacity


@given(events)
def test_an_amount_window_sums_the_amounts_of_the_last_period(
    steps: list[tuple[float, int]],
) -> None:
    window = AmountWindow(per_seconds=5.0)
    times = list(itertools.accumulate(gap for gap, _ in steps))
    for pushed, now in enumerate(times, 1):
        window.push(now, steps[pushed - 1][1])
        assert window.observe(now) == sum(
            amount for t, (_, amount) in zip(times[:pushed], steps, strict=False) if t > now - 5.0
        )
