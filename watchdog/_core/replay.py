"""Replay: recorded runs through a policy set, with the engine that enforces live, on a
simulated clock, so what replay says is what the policies would have done, timers included.

Each trace's events are shown to a run monitor at the times they happened; before each
event, and at the run's end, every time limit that fell due meanwhile is checked at its
deadline, as the live scheduler does. The first enforced violation is where the run would
have stopped; warnings and audit-mode violations found before it are kept.

Limits shared across pods (kept in Redis) depend on every other run: replay leaves them out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .engine import Engine, RunMonitor
from .findings import Finding
from .policies import PolicySet
from .trace import Trace

__all__ = ["Replayer", "Summary", "Verdict", "changed", "replay", "summarize"]

# cancelled, landed_softly, asked: a policy stops it, and does what its on_violation says.
# completed, failed: as recorded, no policy stops it first. cut_short: the recorded run was
# stopped (cancelled) and ends there, and no policy of this set stops it in what was recorded.
Outcome = Literal["cancelled", "landed_softly", "asked", "completed", "failed", "cut_short"]
STOPPED: dict[str, Outcome] = {"cancel": "cancelled", "wrap_up": "landed_softly", "ask": "asked"}
MAX_TIMER_CHECKS = 10_000  # per run: a guard, as each check settles a deadline for good


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a policy set does to one recorded run."""

    run_id: str
    graph: str
    outcome: Outcome
    finding: Finding | None = None  # the enforced violation that stops it
    near: tuple[Finding, ...] = ()  # warnings before it stopped (or ended)
    audit: tuple[Finding, ...] = ()  # audit-mode violations before it stopped (or ended)
    steps: int = 0  # steps it ran until it stopped or ended
    recorded: Mapping[str, Any] = field(default_factory=dict)  # how the recorded run ended

    @property
    def stop(self) -> tuple[str | None, str, str | None, int] | None:
        """(policy, kind, key, step) of the stop; None when the run is not stopped."""
        found = self.finding
        return None if found is None else (found.policy, found.kind, found.key, found.step)

    def describe(self) -> str:
        """The outcome in a few words: ``cancelled by loops (loop, max_repeats) at step 7``."""
        found, outcome = self.finding, self.outcome.replace("_", " ")
        if found is None:
            return outcome
        return f"{outcome} by {found.policy} ({found.kind}, {found.key}) at step {found.step}"

    def as_dict(self) -> dict[str, Any]:
        found = self.finding
        return {
            "run_id": self.run_id,
            "graph": self.graph,
            "outcome": self.outcome,
            "policy": found and found.policy,
            "kind": found and found.kind,
            "key": found and found.key,
            "step": found.step if found else None,
            "node": found and found.node,
            "reason": found and found.reason,
            "steps": self.steps,
            "near": [_brief(f) for f in self.near],
            "audit": [_brief(f) for f in self.audit],
            "recorded": dict(self.recorded),
        }


def _brief(found: Finding) -> dict[str, Any]:
    return {"policy": found.policy, "kind": found.kind, "key": found.key, "step": found.step}


class _Clock:
    """The simulated clock replay moves: seconds from the run's start."""

    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Replayer:
    """Replays traces through one policy set (its bindings made once, for every run)."""

    def __init__(self, policies: PolicySet) -> None:
        self._clock = _Clock()
        self._engine = Engine(policies, clock=self._clock)

    def replay(self, trace: Trace) -> Verdict:
        clock = self._clock
        clock.now = 0.0
        monitor = self._engine.start_run(trace.graph, trace.tags, trace.metadata)
        run = _Run(monitor)
        for microseconds, kind, *fields in trace.events:
            at = microseconds / 1e6
            if run.timers(clock, at):
                break
            clock.now = at
            if run.take(_show(monitor, kind, fields)):
                break
        else:
            run.timers(clock, float(trace.end.get("elapsed_s") or clock.now))
        recorded = trace.end.get("outcome")
        stop = run.stop
        policy = next((p for p in monitor.policies if stop and p.name == stop.policy), None)
        if policy is not None:  # what its on_violation does
            outcome: Outcome = STOPPED[policy.on_violation]
        elif recorded in ("completed", "failed"):
            outcome = recorded
        else:
            outcome = "cut_short"
        return Verdict(
            run_id=trace.run_id,
            graph=trace.graph,
            outcome=outcome,
            finding=run.stop,
            near=tuple(run.near),
            audit=tuple(run.audit),
            steps=monitor.state.steps,
            recorded=trace.end,
        )


class _Run:
    """What replay found in one run so far."""

    def __init__(self, monitor: RunMonitor) -> None:
        self.monitor = monitor
        self.stop: Finding | None = None
        self.near: list[Finding] = []
        self.audit: list[Finding] = []

    def take(self, found: Iterable[Finding]) -> bool:
        """Keep what was found; True when the run stops here (the first enforced violation
        stops it, as the live pipeline's first one cancels it)."""
        for finding in found:
            if finding.near:
                self.near.append(finding)
            elif not finding.enforced:
                self.audit.append(finding)
            elif self.stop is None:
                self.stop = finding
        return self.stop is not None

    def timers(self, clock: _Clock, until: float) -> bool:
        """Check each time limit that fell due before ``until``, at its deadline."""
        monitor = self.monitor
        for _ in range(MAX_TIMER_CHECKS):
            due = monitor.next_deadline()
            if due is None or due > until:
                return False
            clock.now = max(clock.now, due)
            if self.take(monitor.check_timers()):
                return True
            if monitor.next_deadline() == due:
                return False  # nothing settled it: a clock that cannot move on
        return False


def _show(monitor: RunMonitor, kind: str, fields: list[Any]) -> tuple[Finding, ...]:
    """Show one recorded event to the monitor, as the live adapter does. The recorded
    numbers stand for node runs and inputs: equal numbers, the same run or an equal input."""
    match kind:
        case "node":
            name, key, entry, new_step = fields
            return monitor.node_started(key, name, entry, new_step=bool(new_step))
        case "node_end":
            monitor.node_ended(fields[0])
        case "step":
            return monitor.step_started(fields[0])
        case "llm":
            return monitor.llm_started(fields[0])
        case "usage":
            model, input_tokens, output_tokens, total = fields
            return monitor.llm_ended(model, input_tokens, output_tokens, total)
        case "tool":
            return monitor.tool_started(fields[0], fields[1])
        case "tool_end":
            monitor.tool_ended()
    return ()


@dataclass(frozen=True, slots=True)
class Summary:
    """How many runs each policy would stop, and come near."""

    runs: int
    outcomes: Mapping[str, int]
    stopped_by: Mapping[str, int]  # policy -> runs it stops
    near_by: Mapping[str, int]  # policy -> runs it warns
    audit_by: Mapping[str, int]  # policy -> runs it would stop, in audit mode

    def as_dict(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "outcomes": dict(self.outcomes),
            "stopped_by": dict(self.stopped_by),
            "near_by": dict(self.near_by),
            "audit_by": dict(self.audit_by),
        }


def summarize(verdicts: Sequence[Verdict]) -> Summary:
    def runs_by(found: Iterable[Iterable[Finding]]) -> dict[str, int]:
        counts = Counter(p for findings in found for p in {f.policy or "" for f in findings})
        return dict(sorted(counts.items()))

    return Summary(
        runs=len(verdicts),
        outcomes=dict(sorted(Counter(v.outcome for v in verdicts).items())),
        stopped_by=runs_by([v.finding] if v.finding else [] for v in verdicts),
        near_by=runs_by(v.near for v in verdicts),
        audit_by=runs_by(v.audit for v in verdicts),
    )


def changed(old: Sequence[Verdict], new: Sequence[Verdict]) -> list[tuple[Verdict, Verdict]]:
    """The runs whose outcome differs between two policy sets: stopped or not, or stopped
    by another policy, limit or step."""
    return [
        (before, after)
        for before, after in zip(old, new, strict=True)
        if (before.outcome, before.stop) != (after.outcome, after.stop)
    ]


def replay(policies: PolicySet, traces: Iterable[Trace]) -> list[Verdict]:
    """What ``policies`` would have done to each recorded run, in order."""
    replayer = Replayer(policies)
    return [replayer.replay(trace) for trace in traces]
