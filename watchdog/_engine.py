"""The policy engine: events of a run in, verdicts and near-limit warnings out.

No LangGraph here. The supervisor turns callbacks into the calls below; the engine keeps the
run's counters and windows, and checks only the limits an event can move. The clock is
injected: the engine never reads the time any other way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import cast

from ._limits import (
    CostSpec,
    CycleSpec,
    EventWindowSpec,
    Limit,
    MaxRepeats,
    NodeRepeatSpec,
    NodeSeconds,
    TimeLimit,
    ToolRepeatSpec,
    Trigger,
)
from ._policies import RATE_OF, Mode, Policy, PolicySet
from ._state import CostMeter, CycleTracker, EventWindow, RepeatWindow, RunState

__all__ = ["Clock", "Engine", "Finding", "NearLimit", "RunMonitor", "Verdict"]

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Verdict:
    """A limit of a policy was exceeded. Audit verdicts are reported, never enforced."""

    policy: str
    kind: str
    key: str  # which limit, e.g. "max_steps"
    mode: Mode
    reason: str  # one readable sentence
    observed: float
    limit: float
    step: int
    node: str | None

    @property
    def enforced(self) -> bool:
        return self.mode == "enforce"


@dataclass(frozen=True, slots=True)
class NearLimit:
    """A run used ``warn_at`` of a limit; reported once per limit and run."""

    policy: str
    kind: str
    key: str
    mode: Mode
    reason: str
    observed: float
    limit: float
    step: int
    node: str | None


Finding = Verdict | NearLimit
NOTHING: tuple[Finding, ...] = ()
QUIET_CAP = 1 << 30


@dataclass(frozen=True, slots=True)
class _Bound:
    """A limit of one policy as applied to one run."""

    limit: Limit
    policy: Policy
    threshold: float  # observed values below this need no further look

    @classmethod
    def of(cls, limit: Limit, policy: Policy) -> _Bound:
        warn_at = policy.warn_at
        threshold = limit.limit * warn_at if warn_at is not None else limit.limit
        return cls(limit, policy, threshold)


class _Checks:
    """The limits that events of one trigger can move, sorted by how they are checked.

    ``every`` is checked at each event. ``counted`` limits rise by at most ``max_rise``
    an event, so after a check the next ``quiet`` events cannot reach any of them. ``timed``
    limits (``max_seconds`` as a step begins) are looked at once the clock passes ``due``.
    """

    __slots__ = ("counted", "due", "every", "quiet", "timed")

    def __init__(self, bound: list[_Bound], trigger: Trigger, state: RunState) -> None:
        mine = [b for b in bound if b.limit.triggers & trigger]
        self.timed = tuple(b for b in mine if isinstance(b.limit, TimeLimit))
        self.counted = tuple(
            b for b in mine if b.limit.max_rise is not None and b.limit.triggers == trigger
        )
        self.every = tuple(b for b in mine if b not in self.timed and b not in self.counted)
        self.quiet = 0
        # Only max_seconds is checked as events begin, and its deadline never moves.
        self.due = min(
            (
                due
                for b in self.timed
                if (due := cast(TimeLimit, b.limit).deadline(state, b.threshold)) is not None
            ),
            default=math.inf,
        )


class Engine:
    """Holds the current policy set and starts a monitor for each run.

    ``reload()`` swaps the policy set; live runs pick the new limits up at their next event,
    keeping their counters.
    """

    def __init__(self, policies: PolicySet, *, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self._policies = policies
        self.generation = 0

    @property
    def policies(self) -> PolicySet:
        return self._policies

    def reload(self, policies: PolicySet) -> None:
        self._policies = policies
        self.generation += 1

    def start_run(
        self,
        graph: str,
        tags: Iterable[str] = (),
        metadata: Mapping[str, object] | None = None,
    ) -> RunMonitor:
        return RunMonitor(self, graph, frozenset(tags), dict(metadata or {}))


class RunMonitor:
    """One run's state and the limits that apply to it, checked as its events arrive.

    Every event method returns the findings it produced: almost always the empty tuple.
    """

    def __init__(
        self,
        engine: Engine,
        graph: str,
        tags: frozenset[str],
        metadata: Mapping[str, object],
    ) -> None:
        self.engine = engine
        self.graph = graph
        self.tags = tags
        self.metadata = metadata
        self.state = RunState(engine.clock())
        # (policy, key) of limits already reported, so each is reported once per run.
        self._violated: set[tuple[str, str]] = set()
        self._warned: set[tuple[str, str]] = set()
        self._bind()

    # -- binding policies to this run --------------------------------------------------------

    def _bind(self) -> None:
        self._generation = self.engine.generation
        self.policies = self.engine.policies.matching(self.graph, self.tags, self.metadata)
        bound = [_Bound.of(lim, p) for p in self.policies for lim in p.kind.limits]
        state = self.state
        self._on_step = _Checks(bound, Trigger.STEP, state)
        self._on_node = _Checks(bound, Trigger.NODE, state)
        self._on_llm = _Checks(bound, Trigger.LLM, state)
        self._on_usage = _Checks(bound, Trigger.USAGE, state)
        self._on_tool = _Checks(bound, Trigger.TOOL, state)
        self._on_timer = tuple(b for b in bound if b.limit.triggers & Trigger.TIMER)
        self._timed = tuple(b for b in self._on_timer if isinstance(b.limit, TimeLimit))
        # What the caller need not compute when no policy looks at it:
        self.wants_fingerprints = any(isinstance(b.limit, MaxRepeats) for b in bound)
        self.has_timers = bool(self._timed)
        # The soonest a node that starts now can fall due (its warning included), if ever.
        self.node_timer = min(
            (b.threshold for b in self._timed if isinstance(b.limit, NodeSeconds)), default=None
        )

        # Keep the trackers whose spec survives a reload, so windows are not reset.
        old = self.state.trackers
        specs = {b.limit.tracker for b in bound if b.limit.tracker is not None}
        trackers = self.state.trackers = {spec: old.get(spec) or spec.create() for spec in specs}
        node_windows: list[RepeatWindow] = []
        tool_windows: list[RepeatWindow] = []
        cost_meters: list[CostMeter] = []
        rates: dict[str, list[EventWindow]] = {of: [] for of in RATE_OF}
        self._cycles: CycleTracker | None = None
        for spec, tracker in trackers.items():
            match spec:
                case NodeRepeatSpec():
                    node_windows.append(cast(RepeatWindow, tracker))
                case ToolRepeatSpec():
                    tool_windows.append(cast(RepeatWindow, tracker))
                case CycleSpec():
                    self._cycles = cast(CycleTracker, tracker)
                case CostSpec():
                    cost_meters.append(cast(CostMeter, tracker))
                case EventWindowSpec(of=of):
                    rates[of].append(cast(EventWindow, tracker))
        self._node_windows = tuple(node_windows)
        self._tool_windows = tuple(tool_windows)
        self._cost_meters = tuple(cost_meters)
        self._step_rates = tuple(rates["steps"])
        self._node_rates = tuple(rates["node_runs"])
        self._llm_rates = tuple(rates["llm_calls"])
        self._tool_rates = tuple(rates["tool_calls"])
        self._token_rates = tuple(rates["tokens"])

    def _now(self) -> float:
        if self._generation != self.engine.generation:
            self._bind()
        now = self.state.now = self.engine.clock()
        return now

    # -- checking ------------------------------------------------------------------------------

    def _check(self, bound: tuple[_Bound, ...]) -> tuple[Finding, ...]:
        state = self.state
        found: list[Finding] | None = None
        for b in bound:
            observed = b.limit.observe(state)
            if observed < b.threshold:
                continue
            finding = self._judge(b, observed)
            if finding is not None:
                if found is None:
                    found = []
                found.append(finding)
        return NOTHING if found is None else tuple(found)

    def _check_on(self, checks: _Checks) -> tuple[Finding, ...]:
        """Check what an event of one trigger can have moved; the hot path."""
        found = self._check(checks.every) if checks.every else NOTHING
        if checks.quiet:
            checks.quiet -= 1
        elif checks.counted and (more := self._check_counted(checks)):
            found += more
        if checks.timed and self.state.now >= checks.due:
            found += self._check(checks.timed)
        return found

    def _check_counted(self, checks: _Checks) -> tuple[Finding, ...]:
        """Check the limits that rise by a bounded step, and count how many events of this
        trigger can pass before any of them could reach its threshold."""
        state = self.state
        found: list[Finding] = []
        quiet = math.inf
        for b in checks.counted:
            observed = b.limit.observe(state)
            if observed < b.threshold:
                rise: float = b.limit.max_rise  # type: ignore[assignment]
                quiet = min(quiet, math.ceil((b.threshold - observed) / rise) - 1)
                continue
            quiet = 0
            finding = self._judge(b, observed)
            if finding is not None:
                found.append(finding)
        checks.quiet = int(min(quiet, QUIET_CAP))
        return tuple(found)

    def _judge(self, b: _Bound, observed: float) -> Finding | None:
        """The slow path, for values at or past a warning threshold."""
        limit, policy, state = b.limit, b.policy, self.state
        key = (policy.name, limit.key)
        if limit.exceeded(observed):
            if key in self._violated:
                return None
            self._violated.add(key)
            cls: type[Finding] = Verdict
            reason = limit.describe(policy.name, observed, state)
        else:
            if key in self._warned or policy.warn_at is None:
                return None
            self._warned.add(key)
            cls = NearLimit
            reason = (
                f"{limit.key} is at {observed / limit.limit:.0%} of its limit: "
                f"{observed:g} of {limit.limit:g} (policy {policy.name!r})."
            )
        return cls(
            policy=policy.name,
            kind=limit.kind,
            key=limit.key,
            mode=policy.mode,
            reason=reason,
            observed=observed,
            limit=limit.limit,
            step=state.steps,
            node=state.node,
        )

    # -- events ----------------------------------------------------------------------------

    def step_started(self) -> tuple[Finding, ...]:
        now = self._now()
        state = self.state
        state.steps += 1
        for window in self._step_rates:
            window.push(now)
        found = self._check_on(self._on_step)
        state.last_progress = now
        return found

    def step_ended(self) -> None:
        self.state.last_progress = self._now()

    def node_started(self, key: Hashable, name: str, fingerprint: Hashable) -> tuple[Finding, ...]:
        """A node run began; ``fingerprint`` identifies its input (equal input, equal print)."""
        now = self._now()
        state = self.state
        state.node_runs += 1
        state.node = name
        state.open_nodes[key] = (name, now)
        if self._node_windows:
            entry = (name, fingerprint)
            for repeats in self._node_windows:
                repeats.push(entry)
        if self._cycles is not None:
            self._cycles.push(name)
        for window in self._node_rates:
            window.push(now)
        found = self._check_on(self._on_node)
        state.last_progress = now
        return found

    def node_ended(self, key: Hashable) -> None:
        self.state.open_nodes.pop(key, None)
        self.state.last_progress = self._now()

    def llm_started(self, model: str) -> tuple[Finding, ...]:
        now = self._now()
        state = self.state
        state.llm_calls += 1
        for window in self._llm_rates:
            window.push(now)
        found = self._check_on(self._on_llm)
        state.last_progress = now
        return found

    def llm_ended(
        self,
        model: str,
        input_tokens: int = 0,
        output_tokens: int = 0,
        total_tokens: int | None = None,
    ) -> tuple[Finding, ...]:
        """An LLM call ended and reported its usage (``usage_metadata``)."""
        now = self._now()
        state = self.state
        total = input_tokens + output_tokens if total_tokens is None else total_tokens
        state.input_tokens += input_tokens
        state.output_tokens += output_tokens
        state.total_tokens += total
        for meter in self._cost_meters:
            meter.add(model, input_tokens, output_tokens)
        for window in self._token_rates:
            window.push(now, total)
        found = self._check_on(self._on_usage)
        state.last_progress = now
        return found

    def tool_started(self, name: str, arguments: Hashable) -> tuple[Finding, ...]:
        """A tool call began; ``arguments`` is a hashable fingerprint of its arguments."""
        now = self._now()
        state = self.state
        state.tool_calls += 1
        state.tool = name
        if self._tool_windows:
            entry = (name, arguments)
            for repeats in self._tool_windows:
                repeats.push(entry)
        for window in self._tool_rates:
            window.push(now)
        found = self._check_on(self._on_tool)
        state.last_progress = now
        return found

    def tool_ended(self) -> None:
        self.state.last_progress = self._now()

    def check_timers(self) -> tuple[Finding, ...]:
        """Check the time limits now; the scheduler calls this at ``next_deadline()``."""
        self._now()
        return self._check(self._on_timer)

    def next_deadline(self) -> float | None:
        """The earliest clock time at which a time limit, or its warning, falls due."""
        state = self.state
        earliest: float | None = None
        for b in self._timed:
            limit: TimeLimit = b.limit  # type: ignore[assignment]
            key = (b.policy.name, limit.key)
            if key in self._violated:
                continue
            seconds = limit.limit
            if b.threshold < seconds and key not in self._warned:
                seconds = b.threshold
            due = limit.deadline(state, seconds)
            if due is not None and (earliest is None or due < earliest):
                earliest = due
        return earliest
