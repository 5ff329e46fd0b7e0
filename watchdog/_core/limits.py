"""The limits: each one a small object whose verdict is a pure function of a ``RunState``.

A policy kind (``wall_time``, ``loop``, ...) is a bundle of limits; each limit knows which
events can move its observed value (its triggers) and, for time limits, when it falls due.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple, cast

from .state import (
    AmountWindow,
    CostMeter,
    CycleTracker,
    EventWindow,
    Price,
    RepeatWindow,
    RunState,
    TrackerSpec,
)

__all__ = [
    "CostSpec",
    "CycleSpec",
    "EventWindowSpec",
    "IdleSeconds",
    "Limit",
    "MaxCost",
    "MaxCycleRepeats",
    "MaxEvents",
    "MaxInputTokens",
    "MaxNodeRuns",
    "MaxOutputTokens",
    "MaxRepeats",
    "MaxSeconds",
    "MaxSteps",
    "MaxToolRepeats",
    "MaxTotalTokens",
    "NodeRepeatSpec",
    "NodeSeconds",
    "TimeLimit",
    "ToolRepeatSpec",
    "Trigger",
]


class Trigger(enum.Flag):
    """The moments at which limits are checked."""

    STEP = enum.auto()  # a superstep begins
    NODE = enum.auto()  # a node run begins
    LLM = enum.auto()  # an LLM call begins
    USAGE = enum.auto()  # an LLM call ended and reported usage
    TOOL = enum.auto()  # a tool call begins
    TIMER = enum.auto()  # the scheduler found the run due


BEGINNINGS = Trigger.STEP | Trigger.NODE | Trigger.LLM | Trigger.TOOL


# -- tracker specs: equal specs share one tracker in a run ---------------------------------
#
# Named tuples, not dataclasses: a limit looks its tracker up by its spec at every check, and
# a tuple hashes in C where a dataclass calls a Python ``__hash__``. Each ends with a tag of
# its kind, as tuples of equal fields are equal whatever their class.


class NodeRepeatSpec(NamedTuple):
    window: int
    tag: str = "node repeats"

    def create(self) -> RepeatWindow:
        return RepeatWindow(self.window)


class ToolRepeatSpec(NamedTuple):
    window: int
    tag: str = "tool repeats"

    def create(self) -> RepeatWindow:
        return RepeatWindow(self.window)


class CycleSpec(NamedTuple):
    tag: str = "cycles"

    def create(self) -> CycleTracker:
        return CycleTracker()


CYCLES = CycleSpec()


class EventWindowSpec(NamedTuple):
    of: str
    per_seconds: float
    capacity: int | None  # None: sum amounts (tokens) instead of counting events
    tag: str = "events"

    def create(self) -> EventWindow | AmountWindow:
        if self.capacity is None:
            return AmountWindow(self.per_seconds)
        return EventWindow(self.per_seconds, self.capacity)


class CostSpec(NamedTuple):
    prices: tuple[tuple[str, Price], ...]
    tag: str = "cost"

    def create(self) -> CostMeter:
        return CostMeter(dict(self.prices))

    @property
    def key(self) -> str:
        """A name for this price table that is the same in every process."""
        return hashlib.sha256(repr(self.prices).encode()).hexdigest()[:16]


# -- limits ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limit:
    """A ceiling on one observed value. ``limit`` is the most that is allowed."""

    limit: float
    # The window this limit reads from ``RunState.trackers``, if any; set once, by subclasses.
    tracker: TrackerSpec | None = field(default=None, init=False, repr=False, compare=False)

    kind: ClassVar[str]
    key: ClassVar[str]
    TRIGGERS: ClassVar[Trigger]
    MAX_RISE: ClassVar[float | None] = None

    @property
    def triggers(self) -> Trigger:
        return self.TRIGGERS

    @property
    def max_rise(self) -> float | None:
        """The most one triggering event can raise ``observe``; None: no bound.

        A bounded limit need not be looked at again until enough events have passed to
        reach its threshold, which keeps most checks off the hot path. A thread's limit
        also rises with the events of its other live runs: it has no bound.
        """
        return None if getattr(self, "thread", False) else self.MAX_RISE

    def observe(self, state: RunState) -> float:
        raise NotImplementedError

    def exceeded(self, observed: float) -> bool:
        return observed > self.limit

    def describe(self, policy: str, observed: float, state: RunState) -> str:
        """One readable sentence saying what happened and what the policy allows."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class MaxSteps(Limit):
    thread: bool = field(default=False, kw_only=True)  # scope: thread
    kind, key, TRIGGERS, MAX_RISE = "step_count", "max_steps", Trigger.STEP, 1

    def observe(self, state: RunState) -> float:
        return state.steps + state.thread.steps if self.thread else state.steps

    def describe(self, policy: str, observed: float, state: RunState) -> str:
        if self.thread:
            return (
                f"The thread began its step {observed:g} across its runs, but policy "
                f"{policy!r} allows at most {self.limit:g} steps per thread."
            )
        return (
            f"The run began step {observed:g}, but policy {policy!r} allows at most "
            f"{self.limit:g} steps."
        )


@dataclass(frozen=True, slots=True)
class MaxNodeRuns(Limit):
    thread: bool = field(default=False, kw_only=True)  # scope: thread
    kind, key, TRIGGERS, MAX_RISE = "step_count", "max_node_runs", Trigger.NODE, 1

    def observe(self, state: RunState) -> float:
        return state.node_runs + state.thread.node_runs if self.thread else state.node_runs

    def describe(self, policy: str, observed: float, state: RunState) -> str:
        scope = "The thread (across its runs) began" if self.thread else "The run began"
        per = " per thread" if self.thread else ""
        return (
            f"{scope} node run {observed:g}, but policy {policy!r} allows at most "
            f"{self.limit:g} node runs{per}."
        )


@dataclass(frozen=True, slots=True)
class TimeLimit(Limit):
    """A limit on seconds. It fires at its deadline, so reaching the limit is exceeding it."""

    TRIGGERS = BEGINNINGS | Trigger.TIMER

    def exceeded(self, observed: float) -> bool:
        return observed >= self.limit

    def deadline(self, state: RunState, seconds: float) -> float | None:
        """When ``observe`` reaches ``seconds`` if nothing else happens; None: never."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class MaxSeconds(TimeLimit):
    kind, key = "wall_time", "max_seconds"

    def observe(self, state: RunState) -> float:
        return state.now - state.started_at

    def deadline(self, state: RunState, seconds: float) -> float | None:
        return state.started_at + seconds

    def describe(self, policy: str, observed: float, state: RunState) -> str:
        return (
            f"The run has been going for {observed:.3f} s, but policy {policy!r} allows "
            f"at most {self.limit:g} s."
        )


@dataclass(frozen=True, slots=True)
class IdleSeconds(TimeLimit):
    kind, key = "wall_time", "idle_seconds"
    # A beginning is progress itself; the idle stretch before it is judged by the timer.
    TRIGGERS = Trigger.TIMER

    def observe(self, state: RunState) -> float:
        return state.now - state.last_progress

    def deadline(self, state: RunState, seconds: float) -> float | None:
        return state.last_progress + seconds

    def describe(self, policy: str, observed: float, state: RunState) -> str:
        return (
            f"The run made no progress for {observed:.3f} s, but policy {policy!r} allows "
            f"at most {self.limit:g} s without progress."
        )


@dataclass(frozen=True, slots=True)
class NodeSeconds(TimeLimit):
    kind, key = "wall_time", "node_seconds"
    # A node overruns while it runs, not as something begins: the timer's job alone.
    TRIGGERS = Trigger.TIMER

    def observe(self, state: RunState) -> float:
        oldest = state.oldest_open_node()
        return 0.0 if oldest is None else state.now - oldest[1]

    def deadline(self, state: RunState, seconds: float) -> float | None:
        oldest = state.oldest_open_node()
        return None if oldest is None else oldest[1] + seconds

    def describe(self, policy: str, observed: float, state: RunState) -> str:
        oldest = state.oldest_open_node()
        node = oldest[0] if oldest else "?"
        return (
            f"Node {node!r} has been running for {observed:.3f} s, but policy {policy!r} "
            f"allows at most {self.limit:g} s for one node."
        )


@dataclass(frozen=True, slots=True)
class _Repeats(Limit):
    """Identical entries within the last ``window`` ones: node inputs, or tool arguments."""

    window: int
    SPEC: ClassVar[type[NodeRepeatSpec | ToolRepeatSpec]]

    def __post_init__(self) -> None:
        object.__setattr__(self, "tracker", self.SPEC(self.window))

    def observe(self, state: RunState) -> float:
        window: RepeatWindow = state.trackers[self.tracker]  # type: ignore[assignment,index]
        return window.last_count


@dataclass(frozen=True, slots=True)
class MaxRepeats(_Repeats):
    kind, key, TRIGGERS, SPEC = "loop", "max_repeats", Trigger.NODE, NodeRepeatSpec

    def describe(self, policy: str, observed: float, state: RunState) -> str:
        return (
            f"Node {state.node!r} ran {observed:g} times with the same input within the last "
            f"{self.window} node runs, but policy {policy!r} allows at most {self.limit:g}."
        )


@dataclass(frozen=True, slots=True)
class MaxToolRepeats(_Repeats):
    kind, key, TRIGGERS, SPEC = "loop", "max_tool_repeats", Trigger.TOOL, ToolRepeatSpec

    def describe(self, policy: str, observed: float, state: RunState) -> str:
        return (
            f"Tool {state.tool!r} was called {observed:g} times with the same arguments within "
            f"the last {self.window} tool calls, but policy {policy!r} allows at most "
            f"{self.limit:g}."
        )


@dataclass(frozen=True, slots=True)
class MaxCycleRepeats(Limit):
    kind, key, TRIGGERS, MAX_RISE = "loop", "max_cycle_repeats", Trigger.NODE, 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "tracker", CYCLES)

    def observe(self, state: RunState) -> float:
        cycles: CycleTracker = state.trackers[CYCLES]  # type: ignore[assignment]
        return cycles.repeats

    def describe(self, policy: str, observed: float, state: RunState) -> str:
        cycle = " -> ".join(cast(CycleTracker, state.trackers[CYCLES]).cycle)
        return (
            f"The node cycle {cycle} repeated {observed:g} times in a row, but policy "
            f"{policy!r} allows at most {self.limit:g}."
        )


@dataclass(frozen=True, slots=True)
class _TokenLimit(Limit):
    thread: bool = field(default=False, kw_only=True)  # scope: thread
    kind = "token_budget"
    # Checked as usage arrives, and again as the next call begins so it is never paid for.
    TRIGGERS = Trigger.USAGE | Trigger.LLM
    what: ClassVar[str]

    def describe(self, policy: str, observed: float, state: RunState) -> str:
        scope = "The thread used (across its runs)" if self.thread else "The run used"
        per = " per thread" if self.thread else ""
        return (
            f"{scope} {observed:,.0f} {self.what}, but policy {policy!r} allows at most "
            f"{self.limit:,.0f}{per}."
        )


@dataclass(frozen=True, slots=True)
class MaxTotalTokens(_TokenLimit):
    key, what = "max_total_tokens", "tokens"

    def observe(self, state: RunState) -> float:
        tokens = state.total_tokens
        return tokens + state.thread.total_tokens if self.thread else tokens


@dataclass(frozen=True, slots=True)
class MaxInputTokens(_TokenLimit):
    key, what = "max_input_tokens", "input tokens"

    def observe(self, state: RunState) -> float:
        tokens = state.input_tokens
        return tokens + state.thread.input_tokens if self.thread else tokens


@dataclass(frozen=True, slots=True)
class MaxOutputTokens(_TokenLimit):
    key, what = "max_output_tokens", "output tokens"

    def observe(self, state: RunState) -> float:
        tokens = state.output_tokens
        return tokens + state.thread.output_tokens if self.thread else tokens


@dataclass(frozen=True, slots=True)
class MaxCost(_TokenLimit):
    prices: CostSpec
    key, what = "max_cost_usd", "US dollars"

    def __post_init__(self) -> None:
        object.__setattr__(self, "tracker", self.prices)

    def observe(self, state: RunState) -> float:
        cost = cast(CostMeter, state.trackers[self.prices]).total_usd
        return cost + state.thread.cost_usd.get(self.prices.key, 0.0) if self.thread else cost

    def describe(self, policy: str, observed: float, state: RunState) -> str:
        return (
            f"The run cost ${observed:.4f}, but policy {policy!r} allows at most ${self.limit:.2f}."
        )


RATE_TRIGGERS = {
    "steps": Trigger.STEP,
    "node_runs": Trigger.NODE,
    "llm_calls": Trigger.LLM,
    "tool_calls": Trigger.TOOL,
    "tokens": Trigger.USAGE | Trigger.LLM,
}
RATE_NOUNS = {
    "steps": "steps",
    "node_runs": "node runs",
    "llm_calls": "LLM calls",
    "tool_calls": "tool calls",
    "tokens": "tokens",
}


@dataclass(frozen=True, slots=True)
class MaxEvents(Limit):
    per_seconds: float
    of: str
    kind, key = "rate", "max_events"

    @property
    def triggers(self) -> Trigger:
        return RATE_TRIGGERS[self.of]

    @property
    def max_rise(self) -> float | None:
        return None if self.of == "tokens" else 1  # a window only loses events as time passes

    def __post_init__(self) -> None:
        # Counting needs only the newest limit + 1 timestamps; tokens are summed instead.
        capacity = None if self.of == "tokens" else int(self.limit) + 1
        object.__setattr__(self, "tracker", EventWindowSpec(self.of, self.per_seconds, capacity))

    def observe(self, state: RunState) -> float:
        window: EventWindow | AmountWindow = state.trackers[self.tracker]  # type: ignore[assignment,index]
        return window.observe(state.now)

    def describe(self, policy: str, observed: float, state: RunState) -> str:
        return (
            f"The run had {observed:g} {RATE_NOUNS[self.of]} within {self.per_seconds:g} s, "
            f"but policy {policy!r} allows at most {self.limit:g} per {self.per_seconds:g} s."
        )
