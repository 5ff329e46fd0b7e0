"""The policy engine: events of a run in, findings (violations, near-limit warnings) out.

No LangGraph here. The supervisor turns callbacks into the calls below; the engine keeps the
run's counters and windows, and checks only the limits an event can move. The clock is
injected: the engine never reads the time any other way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, cast

from .findings import Finding
from .limits import (
    BEGINNINGS,
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
from .policies import RATE_OF, Policy, PolicySet
from .recorder import Recorder
from .state import (
    AmountWindow,
    CostMeter,
    CycleTracker,
    EventWindow,
    RepeatWindow,
    RunState,
    TrackerSpec,
)

__all__ = ["Clock", "Engine", "RunMonitor"]

Clock = Callable[[], float]


NOTHING: tuple[Finding, ...] = ()
QUIET_CAP = 1 << 30
NO_TAGS: frozenset[str] = frozenset()
NO_METADATA: Mapping[str, object] = MappingProxyType({})
NOT_YET: frozenset[tuple[str, str]] = frozenset()
MAX_GRAPHS = 1000  # graph names whose binding is kept by name; more are looked up each run


@dataclass(frozen=True, slots=True)
class _Bound:
    """A limit of one policy as applied to one run."""

    limit: Limit
    policy: Policy
    threshold: float  # observed values below this need no further look
    rise: float | None  # the limit's max_rise, read once

    @classmethod
    def of(cls, limit: Limit, policy: Policy) -> _Bound:
        warn_at = policy.warn_at
        threshold = limit.limit * warn_at if warn_at is not None else limit.limit
        return cls(limit, policy, threshold, limit.max_rise)


@dataclass(frozen=True, slots=True)
class _Split:
    """The limits that events of one trigger can move, sorted by how they are checked.

    ``every`` is checked at each event. ``counted`` limits rise by at most ``max_rise`` an
    event, so after a check the next few events cannot reach any of them. ``timed`` limits
    (``max_seconds`` as a step begins) are looked at once the clock passes their deadline.
    """

    every: tuple[_Bound, ...]
    counted: tuple[_Bound, ...]
    timed: tuple[_Bound, ...]
    # With nothing counted, a run's checks never change: all its runs share these.
    stateless: _Checks | None

    @classmethod
    def of(cls, bound: list[_Bound], trigger: Trigger) -> _Split:
        mine = [b for b in bound if b.limit.triggers & trigger]
        timed = tuple(b for b in mine if isinstance(b.limit, TimeLimit))
        counted = tuple(b for b in mine if b.rise is not None and b.limit.triggers == trigger)
        every = tuple(b for b in mine if b not in timed and b not in counted)
        stateless = None if counted else _Checks(every, (), timed)
        return cls(every, counted, timed, stateless)

    def checks(self) -> _Checks:
        """This trigger's checks for one more run."""
        if self.stateless is not None:
            return self.stateless
        return _Checks(self.every, self.counted, self.timed)


class _Checks:
    """A run's checks on one trigger, and how long they can wait."""

    __slots__ = ("counted", "every", "quiet", "timed")

    def __init__(
        self, every: tuple[_Bound, ...], counted: tuple[_Bound, ...], timed: tuple[_Bound, ...]
    ) -> None:
        self.every, self.counted, self.timed = every, counted, timed
        self.quiet = 0  # events that can pass before a counted limit must be looked at


@dataclass(frozen=True, slots=True)
class _Binding:
    """What a set of matching policies checks, worked out once and shared by their runs."""

    policies: tuple[Policy, ...]
    step: _Split
    node: _Split
    llm: _Split
    usage: _Split
    tool: _Split
    on_timer: tuple[_Bound, ...]
    timed: tuple[_Bound, ...]
    wants_fingerprints: bool
    node_timer: float | None  # the soonest a node that starts now can fall due, if ever
    # The time limits checked as events begin (max_seconds, whose deadline never moves):
    # a run need not look at them before the soonest of their deadlines.
    at_beginnings: tuple[tuple[TimeLimit, float], ...]
    # The trackers a run keeps, and which of them (by their index in ``specs``) each event
    # feeds: worked out here, once, so binding a run only makes (or keeps) its trackers.
    specs: tuple[TrackerSpec, ...]
    node_windows: tuple[int, ...]
    tool_windows: tuple[int, ...]
    cycles: int | None
    cost_meters: tuple[int, ...]
    rates: Mapping[str, tuple[int, ...]]  # by what they count (RATE_OF)

    @classmethod
    def of(cls, policies: tuple[Policy, ...]) -> _Binding:
        bound = [_Bound.of(lim, p) for p in policies for lim in p.kind.limits]
        on_timer = tuple(b for b in bound if b.limit.triggers & Trigger.TIMER)
        timed = tuple(b for b in on_timer if isinstance(b.limit, TimeLimit))
        specs = tuple(dict.fromkeys(b.limit.tracker for b in bound if b.limit.tracker is not None))
        return cls(
            policies=policies,
            step=_Split.of(bound, Trigger.STEP),
            node=_Split.of(bound, Trigger.NODE),
            llm=_Split.of(bound, Trigger.LLM),
            usage=_Split.of(bound, Trigger.USAGE),
            tool=_Split.of(bound, Trigger.TOOL),
            on_timer=on_timer,
            timed=timed,
            wants_fingerprints=any(isinstance(b.limit, MaxRepeats) for b in bound),
            node_timer=min(
                (b.threshold for b in timed if isinstance(b.limit, NodeSeconds)), default=None
            ),
            at_beginnings=tuple(
                (cast(TimeLimit, b.limit), b.threshold)
                for b in timed
                if b.limit.triggers & BEGINNINGS
            ),
            specs=specs,
            node_windows=_indexes(specs, NodeRepeatSpec),
            tool_windows=_indexes(specs, ToolRepeatSpec),
            cycles=next(iter(_indexes(specs, CycleSpec)), None),
            cost_meters=_indexes(specs, CostSpec),
            rates={of: _indexes(specs, EventWindowSpec, of) for of in RATE_OF},
        )


class Engine:
    """Holds the current policy set and starts a monitor for each run.

    ``reload()`` swaps the policy set; live runs pick the new limits up at their next event,
    keeping their counters.
    """

    def __init__(self, policies: PolicySet, *, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.generation = 0
        self._use(policies)

    @property
    def policies(self) -> PolicySet:
        return self._policies

    def reload(self, policies: PolicySet) -> None:
        self._use(policies)
        self.generation += 1

    def _use(self, policies: PolicySet) -> None:
        self._policies = policies
        # By the ids of the matching policies: runs of one graph share one binding.
        self._bindings: dict[tuple[int, ...], _Binding] = {}
        # When no policy matches on tags or metadata, the graph's name alone says which
        # apply: a run then finds its binding with one lookup.
        self._by_graph: dict[str, _Binding] | None = (
            None if any(p.match.tags or p.match.metadata for p in policies.policies) else {}
        )

    def _binding(
        self, graph: str, tags: frozenset[str], metadata: Mapping[str, object]
    ) -> _Binding:
        by_graph = self._by_graph
        if by_graph is not None and (binding := by_graph.get(graph)) is not None:
            return binding
        policies = self._policies.matching(graph, tags, metadata)
        key = tuple(map(id, policies))
        binding = self._bindings.get(key)
        if binding is None:
            binding = self._bindings[key] = _Binding.of(policies)
        if by_graph is not None and len(by_graph) < MAX_GRAPHS:
            by_graph[graph] = binding
        return binding

    def start_run(
        self,
        graph: str,
        tags: Iterable[str] = (),
        metadata: Mapping[str, object] | None = None,
    ) -> RunMonitor:
        return RunMonitor(
            self,
            graph,
            frozenset(tags) if tags else NO_TAGS,
            dict(metadata) if metadata else NO_METADATA,
        )


def _indexes(specs: tuple[TrackerSpec, ...], kind: type, of: str | None = None) -> tuple[int, ...]:
    """Where the specs of a kind (of rate windows, those counting ``of``) are in ``specs``."""
    return tuple(
        i
        for i, spec in enumerate(specs)
        if isinstance(spec, kind) and (of is None or spec.of == of)  # type: ignore[attr-defined]
    )


class RunMonitor:
    """One run's state and the limits that apply to it, checked as its events arrive.

    Every event method returns the findings it produced: almost always the empty tuple.
    """

    __slots__ = (
        "_cost_meters",
        "_cycles",
        "_due",
        "_extended",
        "_generation",
        "_llm_rates",
        "_node_rates",
        "_node_windows",
        "_on_llm",
        "_on_node",
        "_on_step",
        "_on_timer",
        "_on_tool",
        "_on_usage",
        "_step_rates",
        "_timed",
        "_token_rates",
        "_tool_rates",
        "_tool_windows",
        "_violated",
        "_warned",
        "engine",
        "graph",
        "has_timers",
        "metadata",
        "node_timer",
        "policies",
        "recording",
        "state",
        "tags",
        "wants_fingerprints",
    )
    # The run's trackers each event feeds, as its binding says (see ``_bind``).
    _node_windows: tuple[RepeatWindow, ...]
    _tool_windows: tuple[RepeatWindow, ...]
    _cycles: CycleTracker | None
    _cost_meters: tuple[CostMeter, ...]
    _step_rates: tuple[EventWindow, ...]
    _node_rates: tuple[EventWindow, ...]
    _llm_rates: tuple[EventWindow, ...]
    _tool_rates: tuple[EventWindow, ...]
    _token_rates: tuple[AmountWindow, ...]

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
        # (policy, key) of limits already reported, so each is reported once per run; copied
        # on the rare write, so a run that reports nothing holds no set of its own.
        self._violated = NOT_YET
        self._warned = NOT_YET
        self._extended: Mapping[str, Policy] | None = None  # policies with a limit raised
        # The events shown to the run as they came, for its trace (``trace.trace_of``);
        # None when it is not recorded, which costs each event one test.
        self.recording: Recorder | None = None
        self._bind()

    # -- binding policies to this run --------------------------------------------------------

    def _bind(self) -> None:
        self._generation = self.engine.generation
        binding = self.engine._binding(self.graph, self.tags, self.metadata)
        extended = self._extended
        if extended:  # this run's own binding, made again at each (rare) change
            binding = _Binding.of(tuple(extended.get(p.name, p) for p in binding.policies))
        self.policies = binding.policies
        state = self.state
        self._on_step = binding.step.checks()
        self._on_node = binding.node.checks()
        self._on_llm = binding.llm.checks()
        self._on_usage = binding.usage.checks()
        self._on_tool = binding.tool.checks()
        self._on_timer = binding.on_timer
        self._timed = binding.timed
        self._due = min(
            (
                due
                for limit, threshold in binding.at_beginnings
                if (due := limit.deadline(state, threshold)) is not None
            ),
            default=math.inf,
        )
        # What the caller need not compute when no policy looks at it:
        # A recorded run's trace must serve policies that look for loops, if these do not.
        self.wants_fingerprints = binding.wants_fingerprints or self.recording is not None
        self.has_timers = bool(binding.timed)
        self.node_timer = binding.node_timer

        # Keep the trackers whose spec survives a reload, so windows are not reset.
        old, specs = state.trackers, binding.specs
        made = [old.get(spec) or spec.create() for spec in specs]
        state.trackers = dict(zip(specs, made, strict=True))
        at: Callable[[int], Any] = made.__getitem__
        self._node_windows = tuple(map(at, binding.node_windows))
        self._tool_windows = tuple(map(at, binding.tool_windows))
        cycles = binding.cycles
        self._cycles = None if cycles is None else cast(CycleTracker, made[cycles])
        self._cost_meters = tuple(map(at, binding.cost_meters))
        rates = binding.rates
        self._step_rates = tuple(map(at, rates["steps"]))
        self._node_rates = tuple(map(at, rates["node_runs"]))
        self._llm_rates = tuple(map(at, rates["llm_calls"]))
        self._tool_rates = tuple(map(at, rates["tool_calls"]))
        self._token_rates = tuple(map(at, rates["tokens"]))

    def extend(self, policy_name: str, key: str, amount: float) -> bool:
        """Raise this run's ``key`` limit of a policy by ``amount`` (a person allowed more);
        False when the run has no such limit. The limit can be reported again."""
        policy = next((p for p in self.policies if p.name == policy_name), None)
        current = getattr(policy.kind, key, None) if policy is not None else None
        if policy is None or not isinstance(current, int | float) or isinstance(current, bool):
            return False
        raised = current + amount
        changes: dict[str, Any] = {key: int(raised) if isinstance(current, int) else raised}
        kind = replace(policy.kind, **changes)
        self._extended = {**(self._extended or {}), policy_name: replace(policy, kind=kind)}
        self._violated = frozenset(k for k in self._violated if k != (policy_name, key))
        self._warned = frozenset(k for k in self._warned if k != (policy_name, key))
        self._bind()
        return True

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
        if checks.timed and self.state.now >= self._due:
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
                rise: float = b.rise  # type: ignore[assignment]
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
            self._violated = self._violated | {key}
            near = False
            reason = limit.describe(policy.name, observed, state)
        else:
            if key in self._warned or policy.warn_at is None:
                return None
            self._warned = self._warned | {key}
            near = True
            reason = (
                f"{limit.key} is at {observed / limit.limit:.0%} of its limit: "
                f"{observed:g} of {limit.limit:g} (policy {policy.name!r})."
            )
        return Finding(
            policy=policy.name,
            kind=limit.kind,
            key=limit.key,
            mode=policy.mode,
            reason=reason,
            observed=observed,
            limit=limit.limit,
            step=state.steps,
            node=state.node,
            near=near,
        )

    # -- events ----------------------------------------------------------------------------

    def step_started(self, node: str | None = None) -> tuple[Finding, ...]:
        """A superstep began, with ``node`` (if given) the first node of it to start: a
        verdict now names it as the node it stops."""
        now = self._now()
        if (recording := self.recording) is not None:
            recording.add(now, "step", node)
        state = self.state
        if node is not None:
            state.node = node
        state.steps += 1
        for window in self._step_rates:
            window.push(now)
        found = self._check_on(self._on_step)
        state.last_progress = now
        return found

    def node_started(
        self, key: Hashable, name: str, fingerprint: Hashable, *, new_step: bool = False
    ) -> tuple[Finding, ...]:
        """A node run began; ``fingerprint`` identifies its input (equal input, equal print).

        With ``new_step`` the node is the first of a new superstep, counted and checked first
        in the same call: a violation that stops the run there leaves the node uncounted, as
        it never runs. The hot path: one call, one clock read.
        """
        if self._generation != self.engine.generation:
            self._bind()
        state = self.state
        now = state.now = self.engine.clock()
        if (recording := self.recording) is not None:
            recording.node(now, name, key, fingerprint, new_step)
        state.node = name
        found = NOTHING
        if new_step:
            state.steps += 1
            for window in self._step_rates:
                window.push(now)
            found = self._check_on(self._on_step)
            if found and any(f.enforced for f in found):
                state.last_progress = now
                return found
        state.node_runs += 1
        state.open_nodes[key] = (name, now)
        if self._node_windows:
            entry = hash((name, fingerprint))  # an int held in the window: no pair kept alive
            for repeats in self._node_windows:
                repeats.push(entry)
        if self._cycles is not None:
            self._cycles.push(name)
        for window in self._node_rates:
            window.push(now)
        more = self._check_on(self._on_node)
        state.last_progress = now
        return found + more if found else more

    def node_ended(self, key: Hashable) -> None:
        # No limit is checked here: a reload's binding waits for the run's next event.
        state = self.state
        state.open_nodes.pop(key, None)
        state.now = state.last_progress = now = self.engine.clock()
        if (recording := self.recording) is not None:
            recording.node_end(now, key)

    def llm_started(self, model: str) -> tuple[Finding, ...]:
        now = self._now()
        if (recording := self.recording) is not None:
            recording.add(now, "llm", model)
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
        if (recording := self.recording) is not None:
            recording.add(now, "usage", model, input_tokens, output_tokens, total_tokens)
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
        if (recording := self.recording) is not None:
            recording.tool(now, name, arguments)
        state = self.state
        state.tool_calls += 1
        state.tool = name
        if self._tool_windows:
            entry = hash((name, arguments))
            for repeats in self._tool_windows:
                repeats.push(entry)
        for window in self._tool_rates:
            window.push(now)
        found = self._check_on(self._on_tool)
        state.last_progress = now
        return found

    def tool_ended(self) -> None:
        self.state.last_progress = now = self._now()
        if (recording := self.recording) is not None:
            recording.add(now, "tool_end")

    def record(self) -> None:
        """Keep the events shown to this run from now on, for its trace."""
        self.recording = Recorder(self.state.started_at)
        self.wants_fingerprints = True

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
