"""The run events, written once: what a run reports, as the supervisor logs it and as a worker
sends it to its sidecar.

The supervisor makes these records; ``record_metrics`` (``metrics.py``) turns them into
metrics in the agent process and in the sidecar alike; the sidecar reads a worker's JSON back
into them with ``read_event``, which takes any JSON value without error (a value of the wrong
type counts as absent), so a worker never has its batch refused for what one event holds.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from .events import NAMESPACE

__all__ = [
    "ActivityAfterCancel",
    "DrainRequested",
    "Event",
    "FindingEvent",
    "HardCancel",
    "InternalError",
    "NearLimit",
    "RunCancelled",
    "RunEvent",
    "RunFinished",
    "RunStarted",
    "SharedBudgetUnavailable",
    "Violation",
    "finite",
    "read_event",
]


@dataclass(slots=True, kw_only=True)
class Event:
    """An event of the schema; ``name`` is its name without the ``watchdog.`` namespace."""

    name: ClassVar[str]

    def fields(self) -> dict[str, Any]:
        """The event's flat keys, as logged."""
        names, values = _VALUES[type(self)]
        return dict(zip(names, values(self), strict=True))

    def record(self) -> dict[str, Any]:
        """The event as listeners get it and a worker sends it: its fields and its name."""
        return {"event": f"{NAMESPACE}.{self.name}", **self.fields()}


@dataclass(slots=True, kw_only=True)
class RunEvent(Event):
    run_id: str
    thread_id: str | None
    graph: str


@dataclass(slots=True, kw_only=True)
class RunStarted(RunEvent):
    name = "run_started"
    policies: list[str]  # the names of the policies that apply to the run


@dataclass(slots=True, kw_only=True)
class FindingEvent(RunEvent):
    """An event about a finding (``watchdog._core.findings.Finding.fields()``)."""

    policy: str | None
    kind: str
    mode: str
    reason: str
    observed: float | None
    limit: float | None
    step: int | None
    node: str | None


@dataclass(slots=True, kw_only=True)
class NearLimit(FindingEvent):
    name = "near_limit"


@dataclass(slots=True, kw_only=True)
class Violation(FindingEvent):
    name = "violation"


@dataclass(slots=True, kw_only=True)
class DrainRequested(RunEvent):
    name = "drain_requested"
    policy: str | None
    kind: str
    reason: str
    step: int | None
    grace_seconds: float | None


@dataclass(slots=True, kw_only=True)
class HardCancel(RunEvent):
    name = "hard_cancel"
    policy: str | None
    kind: str
    grace_seconds: float | None


@dataclass(slots=True, kw_only=True)
class RunCancelled(FindingEvent):
    name = "run_cancelled"
    phase: str  # drained or hard
    also: list[str]  # the policies (or kinds) of later violations on the same cancel
    latency_s: float | None  # from the finding to the run's end
    elapsed_s: float | None
    steps: int | None
    tokens: int | None


@dataclass(slots=True, kw_only=True)
class RunFinished(RunEvent):
    name = "run_finished"
    outcome: str  # completed, cancelled or failed
    error: str | None  # the exception's type, for a failed run
    elapsed_s: float | None
    steps: int | None
    tokens: int | None
    input_tokens: int | None
    output_tokens: int | None


@dataclass(slots=True, kw_only=True)
class ActivityAfterCancel(RunEvent):
    """A node, LLM call or tool call started under a run already recorded cancelled (an
    orphaned thread, a task someone spawned): refused, and reported as a cancel that did
    not hold."""

    name = "activity_after_cancel"
    activity: str  # node, llm_call or tool_call
    activity_name: str  # the node's, model's or tool's name


@dataclass(slots=True, kw_only=True)
class SharedBudgetUnavailable(Event):
    """Redis did not answer for a limit shared across pods: ``failures`` operations failed
    since the last such event (logged as the failures start, then at most every 10 s while
    they last, and once more for the rest when Redis is back)."""

    name = "shared_budget_unavailable"
    policy: str
    error: str
    failures: int | None


@dataclass(slots=True, kw_only=True)
class InternalError(Event):
    """A bug of the watchdog's own, in a run (its fields are set) or outside any."""

    name = "internal_error"
    run_id: str | None = None
    thread_id: str | None = None
    graph: str | None = None
    error: str
    traceback: str

    def fields(self) -> dict[str, Any]:
        fields = Event.fields(self)
        if self.run_id is None:  # not about a run: no run keys at all
            del fields["run_id"], fields["thread_id"], fields["graph"]
        return fields


MAX_WHOLE = 1 << 63  # a count past this is no count (and 10**400 overflows a float)


def finite(value: object) -> float | None:
    """A number from a worker; None when it is not a finite number >= 0 (a NaN would stick in
    a histogram's sum for good, a negative count breaks a counter). Exact types only: JSON
    gives no subclasses, and a bool is not a number here."""
    if type(value) is float:
        return value if 0 <= value < math.inf else None
    if type(value) is int and value >= 0:
        try:
            return float(value)
        except OverflowError:  # an int too large for a float
            return None
    return None


def _text(value: object) -> str:
    return value if type(value) is str else ("" if value is None else str(value))


def _optional_text(value: object) -> str | None:
    return value if value is None or type(value) is str else str(value)


def _whole(value: object) -> int | None:
    if type(value) is int:
        return value if 0 <= value < MAX_WHOLE else None
    number = finite(value)
    return None if number is None else int(number)


def _texts(value: object) -> list[str]:
    return [str(item) for item in value] if isinstance(value, list) else []


# How a JSON value from a worker is read into each type a field of the schema has, and the
# type of value taken as it is (the common case, so it costs no call; None: always read).
_READERS: dict[object, tuple[type | None, Callable[[object], Any]]] = {
    str: (str, _text),
    str | None: (str, _optional_text),
    float | None: (None, finite),
    int | None: (None, _whole),
    list[str]: (None, _texts),
}
_EVENTS: tuple[type[Event], ...] = (
    RunStarted,
    NearLimit,
    Violation,
    DrainRequested,
    HardCancel,
    RunCancelled,
    RunFinished,
    ActivityAfterCancel,
    SharedBudgetUnavailable,
    InternalError,
)


def _shape(cls: type[Event]) -> tuple[tuple[str, type | None, Callable[[object], Any]], ...]:
    hints = typing.get_type_hints(cls)
    return tuple((f.name, *_READERS[hints[f.name]]) for f in dataclasses.fields(cls))


_SHAPES = {cls: _shape(cls) for cls in _EVENTS}
# Each event's field names, and a getter of their values in one call (every event has more
# than one field, so the getter gives a tuple: tests/sinks/test_schema.py checks).
_VALUES = {
    cls: (names, operator.attrgetter(*names))
    for cls, shape in _SHAPES.items()
    for names in [tuple(name for name, _, _ in shape)]
}


def _reader(cls: type[Event]) -> Callable[[Callable[[str], object]], Event]:
    """A function that reads one ``cls`` from a record's ``get``, written out field by field:
    the sidecar reads every event its workers send, and this costs a quarter less than a
    loop over the fields."""
    namespace: dict[str, Any] = {"cls": cls}
    arguments = []
    for index, (key, taken, read) in enumerate(_SHAPES[cls]):
        namespace[f"read_{index}"], namespace[f"taken_{index}"] = read, taken
        value = f"get({key!r})"
        if taken is not None:  # the value as it came, when it is of the type the field has
            value = f"v if type(v := {value}) is taken_{index} else read_{index}(v)"
        else:
            value = f"read_{index}({value})"
        arguments.append(f"{key}={value}")
    source = f"def read(get):\n    return cls({', '.join(arguments)})\n"
    exec(source, namespace)  # the source holds only the schema's own names
    return namespace["read"]  # type: ignore[no-any-return]


_READ = {cls.name: _reader(cls) for cls in _EVENTS}


def read_event(record: Mapping[str, Any]) -> Event | None:
    """A worker's event read into the schema; None for an event the schema does not have."""
    name = record.get("event")
    read = _READ.get(name.removeprefix(f"{NAMESPACE}.")) if isinstance(name, str) else None
    return None if read is None else read(record.get)
