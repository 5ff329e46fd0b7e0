"""A run's trace: what the watchdog was shown of it, in order and in time, for replay.

A trace holds no state value, message or argument text: a node's input and a tool call's
arguments are kept as numbers that are equal where the engine saw equal inputs (their order
of first appearance in the run), which is all a loop limit compares. Event times are whole
microseconds from the run's start.

One trace is one JSON object, written on one line::

    {"trace": 1, "run_id": "...", "graph": "agent", "tags": [], "metadata": {},
     "started_at": 1796440263.7, "events": [[1200, "node", "agent", 1, 1, 1], ...],
     "end": {"elapsed_s": 0.25, "outcome": "cancelled", "policy": "loops", "kind": "loop",
             "key": "max_repeats", "step": 7}}

Events (``t`` in microseconds): ``[t, "node", name, key, input, new_step]`` (a node run
starts; ``key`` tells apart the node runs open at once), ``[t, "node_end", key]``,
``[t, "step", node]``, ``[t, "llm", model]``,
``[t, "usage", model, input_tokens, output_tokens, total_tokens]``,
``[t, "tool", name, arguments]``, ``[t, "tool_end"]``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .engine import RunMonitor

__all__ = ["Trace", "TraceError", "read_traces", "trace_of"]

VERSION = 1
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
    # key, step), if one did; ``elapsed_s``: how long it ran.
    end: Mapping[str, Any] = field(default_factory=dict)
    truncated: bool = False

    def to_json(self) -> str:
        return json.dumps(self.as_record(), separators=(",", ":"))

    def as_record(self) -> dict[str, Any]:
        """The trace as its JSON object."""
        record: dict[str, Any] = {
            "trace": VERSION,
            "run_id": self.run_id,
            "graph": self.graph,
            "tags": list(self.tags),
            "metadata": dict(self.metadata),
            "started_at": self.started_at,
            "events": self.events,  # tuples, written as JSON arrays
            "end": dict(self.end),
        }
        if self.truncated:
            record["truncated"] = True
        return record

    @classmethod
    def from_json(cls, line: str, where: str = "<trace>") -> Trace:
        try:
            record = json.loads(line)
        except ValueError as error:
            msg = f"{where}: not JSON ({error})"
            raise TraceError(msg) from None
        return cls.from_record(record, where)

    @classmethod
    def from_record(cls, record: object, where: str = "<trace>") -> Trace:
        """A trace from its JSON object; ``TraceError`` says where and what is wrong."""
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
        msg = f"{where}: expected [microseconds, kind, ...], got {str(event)[:80]}"
        raise TraceError(msg)
    at, kind, *fields = event
    shape = EVENT_SHAPES.get(kind)
    if shape is None:
        msg = f"{where}: unknown event {kind!r}; expected one of {', '.join(EVENT_SHAPES)}"
        raise TraceError(msg)
    whole = isinstance(at, int) and not isinstance(at, bool)
    if not whole or at < 0 or len(fields) != len(shape):
        msg = (
            f"{where}: expected [microseconds, {kind!r}, {len(shape)} fields], got "
            f"{str(event)[:80]}"
        )
        raise TraceError(msg)
    for value, expected in zip(fields, shape, strict=True):
        if not isinstance(value, expected):
            msg = f"{where}: a {kind!r} event holds {value!r} where it expects {expected}"
            raise TraceError(msg)
    return (at, kind, *fields)


def read_traces(text: str, where: str) -> list[Trace]:
    """Every trace of a JSON-lines text; blank lines are skipped."""
    return [
        Trace.from_json(line, f"{where}:{number}")
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip()
    ]


def trace_of(
    monitor: RunMonitor, run_id: str, started_at: float, elapsed: float, end: Mapping[str, Any]
) -> Trace:
    """The trace of a run whose monitor recorded it (``RunMonitor.record``): it started at
    ``started_at`` (epoch seconds) and ended ``elapsed`` seconds later, as ``end`` says."""
    recorder = monitor.recording
    return Trace(
        run_id=run_id,
        graph=monitor.graph,
        tags=tuple(sorted(monitor.tags)),
        metadata=_plain(monitor.metadata),
        started_at=started_at,
        events=tuple(recorder.events) if recorder else (),
        end={"elapsed_s": round(elapsed, 6), **end},
        truncated=bool(recorder and recorder.truncated),
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
