"""A run's trace: what the watchdog was shown of it, in order and in time, for replay.

A trace holds no state value, message or argument text: a node's input and a tool call's
arguments are kept as numbers that are equal where the engine saw equal inputs (their order
of first appearance in the run), which is all a loop limit compares. Times are seconds from
the run's start.

One trace is one JSON object, written on one line::

    {"trace": 1, "run_id": "...", "graph": "agent", "tags": [], "metadata": {},
     "started_at": 1796440263.7, "events": [[0.0012, "node", "agent", 1, 1, 1], ...],
     "end": {"at": 0.25, "outcome": "cancelled", "policy": "loops", "kind": "loop",
             "key": "max_repeats", "step": 7}}

Events: ``[t, "node", name, key, input, new_step]`` (a node run starts; ``key`` tells apart
the node runs open at once), ``[t, "node_end", key]``, ``[t, "step", node]``,
``[t, "llm", model]``, ``[t, "usage", model, input_tokens, output_tokens, total_tokens]``,
``[t, "tool", name, arguments]``, ``[t, "tool_end"]``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .engine import RunMonitor
from .findings import Finding

__all__ = ["MAX_EVENTS", "RecordingMonitor", "Trace", "TraceError", "read_traces"]

VERSION = 1
MAX_EVENTS = 100_000  # a longer run keeps its first events, and says it was cut
MAX_METADATA = 200  # characters of a metadata value kept, for a policy's match
EVENT_SHAPES: dict[str, tuple[type, ...]] = {
    "node": (str, int, int, int),
    "node_end": (int,),
    "step": (str | None,),  # type: ignore[dict-item]
    "llm": (str,),
    "usage": (str, int, int, int | None),  # type: ignore[dict-item]
    "tool": (str, int),
    "tool_end": (),
}


class TraceError(ValueError):
    """A trace that cannot be read: says where and what."""


@dataclass(frozen=True, slots=True)
class Trace:
    """One recorded run."""

    run_id: str
    graph: str
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, object] = field(default_factory=dict)
    started_at: float = 0.0  # epoch seconds
    events: tuple[tuple[Any, ...], ...] = ()
    # How the recorded run ended: outcome, and the finding that stopped it (policy, kind,
    # key, step), if one did; ``at`` is seconds from its start.
    end: Mapping[str, Any] = field(default_factory=dict)
    truncated: bool = False

    def to_json(self) -> str:
        record: dict[str, Any] = {
            "trace": VERSION,
            "run_id": self.run_id,
            "graph": self.graph,
            "tags": list(self.tags),
            "metadata": dict(self.metadata),
            "started_at": self.started_at,
            "events": [list(event) for event in self.events],
            "end": dict(self.end),
        }
        if self.truncated:
            record["truncated"] = True
        return json.dumps(record, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str, where: str = "<trace>") -> Trace:
        try:
            record = json.loads(line)
        except ValueError as error:
            msg = f"{where}: not JSON ({error})"
            raise TraceError(msg) from None
        if not isinstance(record, dict) or record.get("trace") != VERSION:
            msg = f'{where}: expected a trace (a JSON object with "trace": {VERSION})'
            raise TraceError(msg)
        run_id, graph = record.get("run_id"), record.get("graph")
        if not isinstance(run_id, str) or not isinstance(graph, str):
            msg = f"{where}: run_id and graph must be strings"
            raise TraceError(msg)
        events = record.get("events")
        if not isinstance(events, list):
            msg = f"{where}: events must be a list"
            raise TraceError(msg)
        return cls(
            run_id=run_id,
            graph=graph,
            tags=tuple(str(tag) for tag in record.get("tags") or ()),
            metadata=dict(record.get("metadata") or {}),
            started_at=float(record.get("started_at") or 0.0),
            events=tuple(_event(event, f"{where}: events[{i}]") for i, event in enumerate(events)),
            end=dict(record.get("end") or {}),
            truncated=bool(record.get("truncated")),
        )


def _event(event: object, where: str) -> tuple[Any, ...]:
    if not (isinstance(event, list) and len(event) >= 2 and isinstance(event[1], str)):
        msg = f"{where}: expected [seconds, kind, ...], got {str(event)[:80]}"
        raise TraceError(msg)
    at, kind, *fields = event
    shape = EVENT_SHAPES.get(kind)
    if shape is None:
        msg = f"{where}: unknown event {kind!r}; expected one of {', '.join(EVENT_SHAPES)}"
        raise TraceError(msg)
    number = isinstance(at, int | float) and not isinstance(at, bool) and math.isfinite(at)
    if not number or at < 0 or len(fields) != len(shape):
        msg = f"{where}: expected [seconds, {kind!r}, {len(shape)} fields], got {str(event)[:80]}"
        raise TraceError(msg)
    for value, expected in zip(fields, shape, strict=True):
        if not isinstance(value, expected):
            msg = f"{where}: a {kind!r} event holds {value!r} where it expects {expected}"
            raise TraceError(msg)
    return (float(at), kind, *fields)


def read_traces(text: str, where: str) -> list[Trace]:
    """Every trace of a JSON-lines text; blank lines are skipped."""
    return [
        Trace.from_json(line, f"{where}:{number}")
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip()
    ]


class RecordingMonitor:
    """A run's monitor that writes down every event it is shown, then passes it on.

    What the run reads of its monitor (its state, policies, timers) is the real monitor's.
    While recording, node inputs are always fingerprinted: a trace must serve policies that
    look for loops even if the live ones did not.
    """

    wants_fingerprints = True

    def __init__(self, monitor: RunMonitor, run_id: str, started_at: float) -> None:
        self.monitor = monitor
        self.run_id = run_id
        self.started_at = started_at  # epoch seconds
        self.events: list[tuple[Any, ...]] = []
        self.truncated = False
        self._inputs: dict[int, int] = {}  # the engine's hash of an input -> its number
        self._keys: dict[Hashable, int] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.monitor, name)

    def _add(self, *event: Any) -> None:
        if len(self.events) >= MAX_EVENTS:
            self.truncated = True
            return
        state = self.monitor.state
        self.events.append((round(state.now - state.started_at, 6), *event))

    def _input(self, entry: int) -> int:
        return self._inputs.setdefault(entry, len(self._inputs) + 1)

    def _key(self, key: Hashable) -> int:
        return self._keys.setdefault(key, len(self._keys) + 1)

    def step_started(self, node: str | None = None) -> tuple[Finding, ...]:
        found = self.monitor.step_started(node)
        self._add("step", node)
        return found

    def node_started(
        self, key: Hashable, name: str, fingerprint: Hashable, *, new_step: bool = False
    ) -> tuple[Finding, ...]:
        found = self.monitor.node_started(key, name, fingerprint, new_step=new_step)
        # As the engine tells inputs apart: by the hash of the node's name and print.
        self._add(
            "node", name, self._key(key), self._input(hash((name, fingerprint))), int(new_step)
        )
        return found

    def node_ended(self, key: Hashable) -> None:
        self.monitor.node_ended(key)
        self._add("node_end", self._key(key))

    def llm_started(self, model: str) -> tuple[Finding, ...]:
        found = self.monitor.llm_started(model)
        self._add("llm", model)
        return found

    def llm_ended(
        self,
        model: str,
        input_tokens: int = 0,
        output_tokens: int = 0,
        total_tokens: int | None = None,
    ) -> tuple[Finding, ...]:
        found = self.monitor.llm_ended(model, input_tokens, output_tokens, total_tokens)
        self._add("usage", model, input_tokens, output_tokens, total_tokens)
        return found

    def tool_started(self, name: str, arguments: Hashable) -> tuple[Finding, ...]:
        found = self.monitor.tool_started(name, arguments)
        self._add("tool", name, self._input(hash((name, arguments))))
        return found

    def tool_ended(self) -> None:
        self.monitor.tool_ended()
        self._add("tool_end")

    def trace(self, elapsed: float, end: Mapping[str, Any]) -> Trace:
        """The run's trace: it ended ``elapsed`` seconds after it started, as ``end`` says."""
        monitor = self.monitor
        return Trace(
            run_id=self.run_id,
            graph=monitor.graph,
            tags=tuple(sorted(monitor.tags)),
            metadata=_plain(monitor.metadata),
            started_at=self.started_at,
            events=tuple(self.events),
            end={"at": round(elapsed, 6), **end},
            truncated=self.truncated,
        )


def _plain(metadata: Mapping[str, object]) -> dict[str, object]:
    """The metadata a policy can match on: plain values, text cut short."""
    kept: dict[str, object] = {}
    for key, value in metadata.items():
        if isinstance(value, str):
            kept[key] = value[:MAX_METADATA]
        elif isinstance(value, bool | int | float) or value is None:
            kept[key] = value
    return kept
