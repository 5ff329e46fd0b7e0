"""The policy model: what a loaded policy file is, independent of YAML."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Literal, NewType, get_args

from .limits import (
    CostSpec,
    IdleSeconds,
    Limit,
    MaxCost,
    MaxCycleRepeats,
    MaxEvents,
    MaxInputTokens,
    MaxNodeRuns,
    MaxOutputTokens,
    MaxRepeats,
    MaxSeconds,
    MaxSteps,
    MaxToolRepeats,
    MaxTotalTokens,
    NodeSeconds,
)
from .state import Price, RunState

__all__ = [
    "DEFAULT_GRACE_SECONDS",
    "KINDS",
    "BudgetScope",
    "Kind",
    "Loop",
    "Match",
    "Mode",
    "OnViolation",
    "Policy",
    "PolicySet",
    "Rate",
    "StepCount",
    "TokenBudget",
    "WallTime",
    "WrapUp",
]

Mode = Literal["enforce", "audit"]
OnViolation = Literal["cancel", "wrap_up", "ask"]
Scope = Literal["run", "thread"]
# The scope of a token budget or rate: "run" or "thread" (budgets), or shared across pods:
# "graph", "global", or "metadata.<key>" (one limit per value of that run metadata key, such
# as a tenant).
BudgetScope = NewType("BudgetScope", str)
# How long a shared budget lasts: "<n>h", "<n>d" (aligned to midnight in its time zone), or
# "month" (the calendar month).
Window = NewType("Window", str)
TimeZoneName = NewType("TimeZoneName", str)
LOCAL_SCOPES = ("run", "thread")
DEFAULT_ESTIMATE_TOKENS = 4000
DEFAULT_LOCAL_SHARE = 0.1
RateOf = Literal["steps", "node_runs", "llm_calls", "tool_calls", "tokens"]
RATE_OF: tuple[RateOf, ...] = get_args(RateOf)
# The defaults of a policy, here and nowhere else: policy files and manual cancels use them.
DEFAULT_GRACE_SECONDS = 5.0
DEFAULT_WARN_AT = 0.8
DEFAULT_LOOP_WINDOW = 50
DEFAULT_WRAP_UP_MESSAGE = (
    "The budget for this run is spent. Do not call any more tools: answer now, with what you "
    "have so far, and say that the answer may be incomplete."
)


@dataclass(frozen=True, slots=True)
class WrapUp:
    """How a run that reached a limit of an ``on_violation: wrap_up`` policy lands softly:
    resumed from its last checkpoint at ``node``, or (with no node) with ``message`` added to
    its conversation; ``llm_calls`` more model calls and no tool call are allowed before the
    limit is enforced as a cancel."""

    node: str | None = None
    message: str = DEFAULT_WRAP_UP_MESSAGE
    llm_calls: int = 1


def _present(*limits: Limit | None) -> tuple[Limit, ...]:
    return tuple(limit for limit in limits if limit is not None)


@dataclass(frozen=True, slots=True)
class Kind:
    """One policy kind: a bundle of limits, each a pure function of a ``RunState``."""

    limits: tuple[Limit, ...] = field(init=False, repr=False, compare=False)

    name = ""

    @property
    def per_thread(self) -> bool:
        """Whether this kind counts across the runs of a thread (``scope: thread``)."""
        return getattr(self, "scope", "run") == "thread"

    def check(self, state: RunState) -> Limit | None:
        """The first of this kind's limits that ``state`` exceeds, or None."""
        return next((lim for lim in self.limits if lim.exceeded(lim.observe(state))), None)


@dataclass(frozen=True, slots=True)
class WallTime(Kind):
    max_seconds: float | None = None
    idle_seconds: float | None = None
    node_seconds: float | None = None
    name = "wall_time"

    def __post_init__(self) -> None:
        limits = _present(
            None if self.max_seconds is None else MaxSeconds(self.max_seconds),
            None if self.idle_seconds is None else IdleSeconds(self.idle_seconds),
            None if self.node_seconds is None else NodeSeconds(self.node_seconds),
        )
        object.__setattr__(self, "limits", limits)


@dataclass(frozen=True, slots=True)
class StepCount(Kind):
    max_steps: int | None = None
    max_node_runs: int | None = None
    scope: Scope = "run"
    name = "step_count"

    def __post_init__(self) -> None:
        thread = self.scope == "thread"
        limits = _present(
            None if self.max_steps is None else MaxSteps(self.max_steps, thread=thread),
            None if self.max_node_runs is None else MaxNodeRuns(self.max_node_runs, thread=thread),
        )
        object.__setattr__(self, "limits", limits)


@dataclass(frozen=True, slots=True)
class Loop(Kind):
    window: int = DEFAULT_LOOP_WINDOW
    max_repeats: int | None = None
    max_tool_repeats: int | None = None
    max_cycle_repeats: int | None = None
    name = "loop"

    def __post_init__(self) -> None:
        limits = _present(
            None if self.max_repeats is None else MaxRepeats(self.max_repeats, self.window),
            None
            if self.max_tool_repeats is None
            else MaxToolRepeats(self.max_tool_repeats, self.window),
            None if self.max_cycle_repeats is None else MaxCycleRepeats(self.max_cycle_repeats),
        )
        object.__setattr__(self, "limits", limits)


@dataclass(frozen=True, slots=True, kw_only=True)
class Shareable(Kind):
    """A kind whose limit may span pods: with a scope other than ``run`` or ``thread`` it is
    kept in Redis, reserved before each call it counts and settled after it. (Its settings
    are keywords only: a kind's own limits keep their places as arguments.)"""

    scope: BudgetScope = BudgetScope("run")
    estimate_tokens: int = DEFAULT_ESTIMATE_TOKENS  # what a model call reserves, shared
    fail_closed: bool = False  # a shared limit Redis cannot check stops calls
    # The part of a shared limit one worker may spend while Redis does not answer.
    local_share: float = DEFAULT_LOCAL_SHARE

    @property
    def shared(self) -> bool:
        """Whether the limit spans pods (kept in Redis) rather than one run or thread."""
        return self.scope not in LOCAL_SCOPES


@dataclass(frozen=True, slots=True)
class TokenBudget(Shareable):
    max_total_tokens: int | None = None
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None
    max_cost_usd: float | None = None
    prices: Mapping[str, Price] = field(default_factory=dict, hash=False)
    window: Window | None = None  # a shared scope's
    time_zone: TimeZoneName | None = None  # where a shared window's days begin; UTC if unset
    name = "token_budget"

    def __post_init__(self) -> None:
        if self.shared:
            # Reserved before each model call and settled after it, in Redis: no limit on the
            # run's own state.
            object.__setattr__(self, "limits", ())
            return
        thread = self.scope == "thread"
        limits = _present(
            None
            if self.max_total_tokens is None
            else MaxTotalTokens(self.max_total_tokens, thread=thread),
            None
            if self.max_input_tokens is None
            else MaxInputTokens(self.max_input_tokens, thread=thread),
            None
            if self.max_output_tokens is None
            else MaxOutputTokens(self.max_output_tokens, thread=thread),
            None
            if self.max_cost_usd is None
            else MaxCost(self.max_cost_usd, CostSpec(tuple(self.prices.items())), thread=thread),
        )
        object.__setattr__(self, "limits", limits)


@dataclass(frozen=True, slots=True)
class Rate(Shareable):
    max_events: int = 0
    per_seconds: float = 0.0
    of: RateOf = "steps"
    name = "rate"

    def __post_init__(self) -> None:
        if self.shared:
            # Counted in Redis as each model or tool call starts: no limit on the run's state.
            object.__setattr__(self, "limits", ())
            return
        object.__setattr__(self, "limits", (MaxEvents(self.max_events, self.per_seconds, self.of),))


KINDS: dict[str, type[Kind]] = {
    kind.name: kind for kind in (WallTime, StepCount, Loop, TokenBudget, Rate)
}


@dataclass(frozen=True, slots=True)
class Match:
    """Which runs a policy applies to; the empty match applies to every run."""

    graphs: tuple[str, ...] = ()  # globs on the name given to attach(); any may match
    tags: frozenset[str] = frozenset()  # all must be among the run's tags
    metadata: Mapping[str, object] = field(default_factory=dict, hash=False)

    def matches(self, graph: str, tags: Iterable[str], metadata: Mapping[str, object]) -> bool:
        if self.graphs and not any(fnmatchcase(graph, glob) for glob in self.graphs):
            return False
        if self.tags and not self.tags.issubset(tags):
            return False
        missing = object()
        return all(metadata.get(key, missing) == value for key, value in self.metadata.items())


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    kind: Kind
    mode: Mode = "enforce"
    grace_seconds: float = DEFAULT_GRACE_SECONDS
    warn_at: float | None = DEFAULT_WARN_AT
    cleanup_node: str | None = None
    supersede: bool = False  # a new run on a thread cancels the older one still running
    repair_thread: bool = True  # a cancelled run's tool calls without a result get one
    on_violation: OnViolation = "cancel"
    wrap_up: WrapUp | None = None  # how the run lands, with on_violation: wrap_up
    description: str | None = None
    match: Match = field(default_factory=Match)
    file: str = ""  # where the policy was defined, for messages
    line: int = 0

    def applies_to(self, graph: str, tags: Iterable[str], metadata: Mapping[str, object]) -> bool:
        return self.match.matches(graph, tags, metadata)

    @property
    def landing(self) -> WrapUp | None:
        """How a run lands softly at this policy's limits; None when it is cancelled."""
        if self.on_violation != "wrap_up":
            return None
        return self.wrap_up or WrapUp()


@dataclass(frozen=True, slots=True)
class PolicySet:
    """Every policy loaded from one file or directory, in file order."""

    policies: tuple[Policy, ...] = ()
    files: tuple[str, ...] = ()
    redis_url: str | None = None  # defaults.redis_url: where limits shared across pods live

    def matching(
        self,
        graph: str,
        tags: Iterable[str] = (),
        metadata: Mapping[str, object] | None = None,
    ) -> tuple[Policy, ...]:
        tags = frozenset(tags)
        meta = metadata or {}
        return tuple(p for p in self.policies if p.applies_to(graph, tags, meta))

    def __len__(self) -> int:
        return len(self.policies)
