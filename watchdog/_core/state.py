"""Per-run state: counters and the bounded windows the limits read.

Everything here is sized by the policies, never by the run's length: a run of a million
steps holds the same memory as a run of ten.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Protocol

__all__ = [
    "AmountWindow",
    "CostMeter",
    "CycleTracker",
    "EventWindow",
    "Price",
    "RepeatWindow",
    "RunState",
    "ThreadLedger",
    "ThreadTotals",
    "ThreadView",
    "Tracker",
    "TrackerSpec",
]

NO_COUNTS: dict[Hashable, int] = {}  # every window's until its first push: never written


class Tracker(Protocol):
    """Marker for the stateful windows kept in ``RunState.trackers``."""


class TrackerSpec(Protocol):
    """A hashable description of a tracker; equal specs share one tracker per run."""

    def create(self) -> Tracker: ...


class RepeatWindow:
    """Counts of each key among the last ``size`` keys pushed, in O(1) per push.

    The keys are a list used as a ring once full: a deque takes 600 bytes for its first key,
    and a run holds one window per loop limit. The list and the counts are made at the first
    push: a run that calls no tool keeps an empty tool window.
    """

    __slots__ = ("_counts", "_keys", "_oldest", "last_count", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._keys: list[Hashable] | None = None
        self._oldest = 0  # once the window is full, where its oldest key is
        self._counts = NO_COUNTS  # replaced at the first push, before any write
        self.last_count = 0

    def push(self, key: Hashable) -> None:
        keys, counts = self._keys, self._counts
        if keys is None:
            keys, counts = self._keys, self._counts = [], {}
        if len(keys) < self.size:
            keys.append(key)
        else:
            at = self._oldest
            oldest, keys[at] = keys[at], key
            self._oldest = at + 1 if at + 1 < self.size else 0
            left = counts[oldest] - 1
            if left:
                counts[oldest] = left
            else:
                del counts[oldest]
        count = counts[key] = counts.get(key, 0) + 1
        self.last_count = count


class CycleTracker:
    """How many times in a row the latest node cycle of period 1 to 4 has repeated.

    For each period ``p`` it keeps how many consecutive node runs equalled the run ``p``
    before them; ``1 + matches // p`` complete cycles then stand at the end of the sequence.
    The four periods are written out, a slot each: this runs at every node start of a loop
    policy, and a loop over lists took half again as long and twice the memory. Which cycle
    repeats most is worked out when it is read: a check reads it far less often than once a
    node, as a cycle grows by at most one repeat a node.
    """

    __slots__ = ("_m1", "_m2", "_m3", "_m4", "_r1", "_r2", "_r3", "_r4")

    def __init__(self) -> None:
        self._m1 = self._m2 = self._m3 = self._m4 = 0  # matches, by period
        # The last four node runs, newest first.
        self._r1: str | None = None
        self._r2: str | None = None
        self._r3: str | None = None
        self._r4: str | None = None

    def push(self, name: str) -> None:
        if self._r1 == name:
            self._m1 += 1
        else:
            self._m1 = 0
        if self._r2 == name:
            self._m2 += 1
        else:
            self._m2 = 0
        if self._r3 == name:
            self._m3 += 1
        else:
            self._m3 = 0
        if self._r4 == name:
            self._m4 += 1
        else:
            self._m4 = 0
        self._r4, self._r3, self._r2, self._r1 = self._r3, self._r2, self._r1, name

    def _most(self) -> tuple[int, int]:
        """The most repeats in a row of one cycle, and its period: the smallest wins a tie."""
        repeats, period = 1 + self._m1, 1
        for p, matches in ((2, self._m2), (3, self._m3), (4, self._m4)):
            if 1 + matches // p > repeats:
                repeats, period = 1 + matches // p, p
        return repeats, period

    @property
    def repeats(self) -> int:
        return self._most()[0]

    @property
    def cycle(self) -> tuple[str, ...]:
        """The nodes of the cycle that is repeating, oldest first."""
        recent = (self._r1, self._r2, self._r3, self._r4)[: self._most()[1]]
        return tuple(name for name in reversed(recent) if name is not None)


# Expired entries at the head of an amount window's lists are dropped in one go once there
# are this many, and they are half the list: amortized O(1) a push, and a list never twice
# its window. An event window is trimmed once it holds this many times, or twice its capacity.
TRIM_FROM = 32


class EventWindow:
    """How many events fell in the sliding window ``(now - per_seconds, now]``, up to
    ``capacity`` (the limit plus one is all a check needs).

    A push only appends the event's time: a window is read far less often than pushed to
    (a check waits until enough events have passed to reach its limit), and reading it is a
    binary search. The times that left the window, or that ``capacity`` newer ones made
    needless, are dropped in one go once the list has doubled since it was last trimmed:
    amortized O(1) a push, and never more than twice the times a check could need (nor than
    ``TRIM_FROM``, for a window whose times all left it).
    """

    __slots__ = ("_capacity", "_times", "_trim_at", "per_seconds")

    def __init__(self, per_seconds: float, capacity: int) -> None:
        self.per_seconds = per_seconds
        self._capacity = capacity
        self._times: list[float] = []
        self._trim_at = min(TRIM_FROM, 2 * capacity)

    def push(self, now: float) -> None:
        times = self._times
        times.append(now)
        if len(times) >= self._trim_at:
            self._trim(now)

    def observe(self, now: float) -> int:
        """The events still inside the window at ``now``, up to ``capacity``."""
        times = self._times
        return min(len(times) - bisect_right(times, now - self.per_seconds), self._capacity)

    def _trim(self, now: float) -> None:
        times = self._times
        needless = max(bisect_right(times, now - self.per_seconds), len(times) - self._capacity)
        del times[:needless]
        # Never before twice what is kept, nor twice the capacity: a trim drops at least as
        # many times as it keeps, and a small window stays small.
        self._trim_at = max(2 * len(times), min(TRIM_FROM, 2 * self._capacity))


class AmountWindow:
    """The sum of amounts (tokens) pushed in the sliding window ``(now - per_seconds, now]``.

    The entries are lists read from ``_head`` on: a deque takes 600 bytes for its first entry.
    """

    __slots__ = ("_amounts", "_head", "_times", "per_seconds", "total")

    def __init__(self, per_seconds: float) -> None:
        self.per_seconds = per_seconds
        self._times: list[float] = []
        self._amounts: list[int] = []
        self._head = 0  # the entries before it have left the window
        self.total = 0

    def push(self, now: float, amount: int) -> None:
        # Expire as we go: a window is not observed at every push, and must stay bounded.
        times = self._times
        if self._head < len(times) and times[self._head] <= now - self.per_seconds:
            self.observe(now)
        times.append(now)
        self._amounts.append(amount)
        self.total += amount

    def observe(self, now: float) -> int:
        """The sum of the amounts still inside the window at ``now``."""
        times, amounts, head = self._times, self._amounts, self._head
        horizon = now - self.per_seconds
        end = len(times)
        while head < end and times[head] <= horizon:
            self.total -= amounts[head]
            head += 1
        if head != self._head:
            self._head = head
            if head >= TRIM_FROM and head * 2 >= end:
                del times[:head]
                del amounts[:head]
                self._head = 0
        return self.total


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million tokens."""

    input_per_mtok: float
    output_per_mtok: float

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1e6


class CostMeter:
    """Running cost of a run under one price table.

    Exact model names win over glob patterns, which are tried in file order, then ``default``.
    Lookups are cached: a run meets a handful of model names.
    """

    __slots__ = ("_cache", "_patterns", "_prices", "total_usd")

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self._prices = prices
        self._patterns = [name for name in prices if any(c in name for c in "*?[")]
        self._cache: dict[str, Price | None] = {}
        self.total_usd = 0.0

    def price_of(self, model: str) -> Price | None:
        try:
            return self._cache[model]
        except KeyError:
            pass
        price = self._prices.get(model)
        if price is None:
            pattern = next((p for p in self._patterns if fnmatchcase(model, p)), None)
            price = self._prices[pattern] if pattern else self._prices.get("default")
        self._cache[model] = price
        return price

    def add(self, model: str, input_tokens: int, output_tokens: int) -> None:
        price = self.price_of(model)
        if price is not None:
            self.total_usd += price.cost(input_tokens, output_tokens)


class ThreadTotals:
    """What a thread's earlier runs used: the baseline of ``scope: thread`` limits."""

    __slots__ = ("cost_usd", "input_tokens", "node_runs", "output_tokens", "steps", "total_tokens")

    def __init__(self) -> None:
        self.steps = 0
        self.node_runs = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.total_tokens = 0
        self.cost_usd: dict[str, float] = {}  # by price table (CostSpec.key)

    def as_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> ThreadTotals:
        totals = cls()
        for name in cls.__slots__:
            value = data.get(name)
            if name == "cost_usd" and isinstance(value, dict):
                totals.cost_usd = {str(k): float(v) for k, v in value.items()}
            elif isinstance(value, int) and not isinstance(value, bool):
                setattr(totals, name, value)
        return totals

    def plus(self, state: RunState) -> ThreadTotals:
        """These totals with one more run's use added."""
        totals = ThreadTotals()
        totals.steps = self.steps + state.steps
        totals.node_runs = self.node_runs + state.node_runs
        totals.input_tokens = self.input_tokens + state.input_tokens
        totals.output_tokens = self.output_tokens + state.output_tokens
        totals.total_tokens = self.total_tokens + state.total_tokens
        totals.cost_usd = dict(self.cost_usd)
        for spec, tracker in state.trackers.items():
            if isinstance(tracker, CostMeter):
                key = spec.key  # type: ignore[attr-defined]
                totals.cost_usd[key] = totals.cost_usd.get(key, 0.0) + tracker.total_usd
        return totals


NO_TOTALS = ThreadTotals()


class ThreadLedger:
    """One thread while runs of it are live in this process: what its ended runs used, and
    the states of the live ones, as one pair replaced whole, so a reader needs no lock and
    never sees a run both ended and live."""

    __slots__ = ("now",)

    def __init__(self, base: ThreadTotals) -> None:
        self.now: tuple[ThreadTotals, tuple[RunState, ...]] = (base, ())


class ThreadView:
    """What the other runs of a run's thread used: the ended ones, and the live ones so far.

    It reads like ``ThreadTotals``; with no other live run it costs two attribute reads.
    """

    __slots__ = ("_ledger", "_own")

    def __init__(self, ledger: ThreadLedger, own: RunState) -> None:
        self._ledger = ledger
        self._own = own

    def _others(self) -> ThreadTotals:
        totals, live = self._ledger.now
        for state in live:
            if state is not self._own:
                totals = totals.plus(state)
        return totals

    @property
    def steps(self) -> int:
        return self._others().steps

    @property
    def node_runs(self) -> int:
        return self._others().node_runs

    @property
    def input_tokens(self) -> int:
        return self._others().input_tokens

    @property
    def output_tokens(self) -> int:
        return self._others().output_tokens

    @property
    def total_tokens(self) -> int:
        return self._others().total_tokens

    @property
    def cost_usd(self) -> dict[str, float]:
        return self._others().cost_usd


class RunState:
    """What the limits of every policy kind read: one object per run.

    ``now`` is the clock reading of the event being checked; the engine sets it, so each
    limit is a pure function of this object.
    """

    __slots__ = (
        "input_tokens",
        "last_progress",
        "llm_calls",
        "node",
        "node_runs",
        "now",
        "open_nodes",
        "output_tokens",
        "started_at",
        "steps",
        "thread",
        "tool",
        "tool_calls",
        "total_tokens",
        "trackers",
    )

    def __init__(self, started_at: float) -> None:
        self.started_at = started_at
        self.now = started_at
        self.last_progress = started_at
        self.steps = 0
        self.node_runs = 0
        self.llm_calls = 0
        self.tool_calls = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.total_tokens = 0
        # key -> (node name, start time), in start order, so the first is the oldest
        self.open_nodes: dict[Hashable, tuple[str, float]] = {}
        self.node: str | None = None  # the node that started last
        self.tool: str | None = None  # the tool that was called last
        self.trackers: dict[TrackerSpec, Tracker] = {}
        # What other runs of the same thread used, for limits with scope: thread; runs that
        # need none share one empty total.
        self.thread: ThreadTotals | ThreadView = NO_TOTALS

    @property
    def elapsed(self) -> float:
        return self.now - self.started_at

    @property
    def idle(self) -> float:
        return self.now - self.last_progress

    def oldest_open_node(self) -> tuple[str, float] | None:
        return next(iter(self.open_nodes.values()), None)
