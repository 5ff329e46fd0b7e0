"""Policy test files: runs, written as short lists of events (or recorded traces), and the
outcome a policy file must give them.

::

    policies: ../default.yaml            # relative to this file
    tests:
      - name: an endless loop stops at its step limit
        graph: agent                     # the name given to attach(); default agent
        tags: [support]                  # optional, for policies that match on them
        metadata: {tenant: acme}         # optional, likewise
        run:
          - node: agent                  # a node run, a step of its own
            repeat: 300
        expect:
          outcome: cancelled             # or landed_softly, asked, completed
          policy: backstop-steps
          kind: step_count               # optional, as are key and step
          step: 201
          near: [backstop-steps]         # optional: exactly the policies that warn first

A run's events: ``node: NAME`` (``input``: runs with equal input look alike to a loop
limit, others never do; ``same_step: true``: it runs in the step of the node before it;
``seconds``: how long it runs before what follows), ``llm: MODEL`` or ``llm: {model,
input_tokens, output_tokens, seconds}``, ``tool: NAME`` or ``tool: {name, arguments,
seconds}`` (equal arguments look alike), ``wait: SECONDS``, ``each: [EVENT, ...]`` (a
group of events); any of them takes ``repeat``. A node stays open until the next node
starts. Instead of ``run``, ``trace: FILE`` takes a recorded run (the file's first, or
``trace: {file: ..., run_id: ...}``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yaml.nodes import Node, ScalarNode, SequenceNode

from .._core.errors import PolicyError, PolicyProblem
from .._core.trace import Trace, TraceError, read_traces
from .reader import Entry, Invalid, NodeReader, describe, position

__all__ = ["Expectation", "PolicyTest", "TestFile", "read_test_file"]

FILE_KEYS = ("policies", "tests")
TEST_KEYS = ("name", "graph", "tags", "metadata", "run", "trace", "expect")
EXPECT_KEYS = ("outcome", "policy", "kind", "key", "step", "near", "audit")
OUTCOMES = ("completed", "cancelled", "landed_softly", "asked")
EVENT_KEYS = {
    "node": ("node", "input", "same_step", "seconds", "repeat"),
    "llm": ("llm", "repeat"),
    "tool": ("tool", "repeat"),
    "wait": ("wait", "repeat"),
    "each": ("each", "repeat"),
}
LLM_KEYS = ("model", "input_tokens", "output_tokens", "seconds")
TOOL_KEYS = ("name", "arguments", "seconds")
MAX_EVENTS = 100_000  # of one written run, repeats included


@dataclass(frozen=True, slots=True)
class Expectation:
    """What a test expects; None for what it leaves unchecked."""

    outcome: str
    policy: str | None = None
    kind: str | None = None
    key: str | None = None
    step: int | None = None
    near: tuple[str, ...] | None = None
    audit: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class PolicyTest:
    name: str
    line: int
    trace: Trace
    expect: Expectation


@dataclass(frozen=True, slots=True)
class TestFile:
    file: str
    policies: Path
    tests: tuple[PolicyTest, ...] = field(default=())


def read_test_file(path: str | Path) -> TestFile:
    """Read one test file; ``PolicyError`` with every problem found, located."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PolicyError(
            [PolicyProblem(str(path), 0, 0, "", f"cannot read it: {error}")]
        ) from None
    reader = _TestReader(str(path), text)
    found = reader.read(path.parent)
    if reader.problems or found is None:
        raise PolicyError(sorted(reader.problems, key=lambda p: (p.line, p.column)))
    return found


class _TestReader(NodeReader):
    def read(self, folder: Path) -> TestFile | None:
        root = self.compose()
        if root is None:
            return None
        top = self.field(self.mapping, root, "", FILE_KEYS, "a mapping with 'policies' and 'tests'")
        if top is None:
            return None
        for key in FILE_KEYS:
            if key not in top:
                self.problem(root, key, f"missing required key {key!r}")
        if self.problems:
            return None
        policies = self.field(self.text, top["policies"].value, "policies", "a policy file path")
        tests_node = top["tests"].value
        if not isinstance(tests_node, SequenceNode):
            self.problem(
                tests_node, "tests", f"expected a list of tests, got {describe(tests_node)}"
            )
            return None
        tests = [
            self.field(self._test, node, f"tests[{i}]", folder)
            for i, node in enumerate(tests_node.value)
        ]
        if policies is None or self.problems:
            return None
        return TestFile(self.file, folder / policies, tuple(t for t in tests if t is not None))

    def _test(self, node: Node, path: str, folder: Path) -> PolicyTest:
        fields = self.mapping(node, path, TEST_KEYS, "a test: a mapping with name, run, expect")
        for key in ("name", "expect"):
            if key not in fields:
                self.invalid(node, f"{path}.{key}", f"missing required key {key!r}")
        if ("run" in fields) == ("trace" in fields):
            self.invalid(node, path, "expected either run (a list of events) or trace (a file)")
        # Each part is read on its own, so that every problem of the test is reported.
        name = self.field(self.text, fields["name"].value, f"{path}.name", "a test name")
        graph = self.field(self._optional_text, fields, "graph", path)
        tags = self.field(self._tags, fields.get("tags"), f"{path}.tags")
        metadata = self.field(self._metadata, fields.get("metadata"), f"{path}.metadata")
        run = (
            self.field(self._recorded, fields["trace"].value, f"{path}.trace", folder)
            if "trace" in fields
            else self.field(self._run, fields["run"].value, f"{path}.run")
        )
        expect = self.field(self._expect, fields["expect"].value, f"{path}.expect")
        if name is None or tags is None or metadata is None or run is None or expect is None:
            raise Invalid
        trace = run if isinstance(run, Trace) else _written(name, graph, tags, metadata, run)
        return PolicyTest(name, position(node)[0], trace, expect)

    def _tags(self, entry: Entry | None, path: str) -> tuple[str, ...]:
        return () if entry is None else self.strings(entry.value, path, "a tag")

    def _optional_text(self, fields: dict[str, Entry], key: str, path: str) -> str | None:
        return self.text(fields[key].value, f"{path}.{key}") if key in fields else None

    def _metadata(self, entry: Entry | None, path: str) -> dict[str, object]:
        if entry is None:
            return {}
        fields = self.table(entry.value, path, "metadata", "a metadata key", self.scalar)
        return dict(fields)

    def _expect(self, node: Node, path: str) -> Expectation:
        fields = self.mapping(node, path, EXPECT_KEYS, "a mapping with outcome, policy, ...")
        if "outcome" not in fields:
            self.invalid(node, f"{path}.outcome", "missing required key 'outcome'")
        outcome = self.choice(fields["outcome"].value, f"{path}.outcome", OUTCOMES)
        values: dict[str, Any] = {"outcome": outcome}
        for key in ("policy", "kind", "key"):
            values[key] = self._optional_text(fields, key, path)
        if "step" in fields:
            values["step"] = self.whole(fields["step"].value, f"{path}.step")
        for key in ("near", "audit"):
            if key in fields:
                node_ = fields[key].value
                values[key] = (
                    ()
                    if isinstance(node_, SequenceNode) and not node_.value
                    else self.strings(node_, f"{path}.{key}", "a policy name")
                )
        stops = [k for k in ("policy", "kind", "key", "step") if values.get(k) is not None]
        if outcome == "completed" and stops:
            self.invalid(
                fields[stops[0]].key,
                f"{path}.{stops[0]}",
                f"a completed run is stopped by no policy; expected outcome: cancelled with "
                f"{stops[0]}",
            )
        if outcome != "completed" and values["policy"] is None:
            self.invalid(node, f"{path}.policy", f"a run {outcome} names the policy that stops it")
        return Expectation(**values)

    def _recorded(self, node: Node, path: str, folder: Path) -> Trace:
        if isinstance(node, ScalarNode):
            file, run_id = self.text(node, path, "a trace file"), None
        else:
            fields = self.mapping(node, path, ("file", "run_id"), "a trace file, or {file, run_id}")
            if "file" not in fields:
                self.invalid(node, f"{path}.file", "missing required key 'file'")
            file = self.text(fields["file"].value, f"{path}.file", "a trace file")
            run_id = self._optional_text(fields, "run_id", path)
        try:
            traces = read_traces((folder / file).read_text(encoding="utf-8"), str(folder / file))
        except (OSError, UnicodeDecodeError, TraceError) as error:
            self.invalid(node, path, f"cannot read the trace: {error}")
        found = [t for t in traces if run_id is None or t.run_id == run_id]
        if not found:
            which = f"run {run_id!r}" if run_id else "a trace"
            self.invalid(node, path, f"{folder / file} holds no {which}")
        return found[0]

    def _run(self, node: Node, path: str) -> list[tuple[str, dict[str, Any], int]]:
        if not isinstance(node, SequenceNode) or not node.value:
            self.invalid(node, path, f"expected a list of events, got {describe(node)}")
        events = [
            self.field(self._event, item, f"{path}[{i}]") for i, item in enumerate(node.value)
        ]
        if any(event is None for event in events):
            raise Invalid
        total = sum(_count(event) for event in events if event is not None)
        if total > MAX_EVENTS:
            self.invalid(
                node, path, f"{total} events with their repeats; expected at most {MAX_EVENTS}"
            )
        return [event for event in events if event is not None]

    def _event(self, node: Node, path: str) -> tuple[str, dict[str, Any], int]:
        all_keys = tuple(dict.fromkeys(k for keys in EVENT_KEYS.values() for k in keys))
        fields = self.mapping(node, path, all_keys, "an event: node, llm, tool, wait or each")
        kinds = [k for k in EVENT_KEYS if k in fields]
        if len(kinds) != 1:
            self.invalid(
                node, path, "expected exactly one of node, llm, tool, wait, each in an event"
            )
        (kind,) = kinds
        for key in fields:
            if key not in EVENT_KEYS[kind]:
                self.invalid(
                    fields[key].key,
                    f"{path}.{key}",
                    f"unknown key {key!r} in a {kind} event; expected "
                    f"{', '.join(EVENT_KEYS[kind])}",
                )
        repeat = self.whole(fields["repeat"].value, f"{path}.repeat") if "repeat" in fields else 1
        value = fields[kind].value
        where = f"{path}.{kind}"
        spec: dict[str, Any]
        if kind == "each":  # a group of events, repeated as one
            spec = {"events": self._run(value, where)}
        elif kind == "node":
            spec = {"name": self.text(value, where, "a node name")}
            if "input" in fields:
                spec["input"] = str(self.scalar(fields["input"].value, f"{path}.input"))
            if "same_step" in fields:
                spec["same_step"] = self.flag(fields["same_step"].value, f"{path}.same_step")
            if "seconds" in fields:
                spec["seconds"] = self.number(
                    fields["seconds"].value, f"{path}.seconds", allow_zero=True
                )
        elif kind == "wait":
            spec = {"seconds": self.number(value, where, allow_zero=True)}
        elif isinstance(value, ScalarNode):
            spec = {"model" if kind == "llm" else "name": self.text(value, where)}
        else:
            spec = self._call(value, where, LLM_KEYS if kind == "llm" else TOOL_KEYS)
        return kind, spec, repeat

    def _call(self, node: Node, path: str, keys: tuple[str, ...]) -> dict[str, Any]:
        fields = self.mapping(node, path, keys, f"a mapping of {', '.join(keys)}")
        first = keys[0]
        if first not in fields:
            self.invalid(node, f"{path}.{first}", f"missing required key {first!r}")
        spec: dict[str, Any] = {first: self.text(fields[first].value, f"{path}.{first}")}
        for key in ("input_tokens", "output_tokens"):
            if key in fields:
                spec[key] = self.whole(fields[key].value, f"{path}.{key}")
        if "seconds" in fields:
            spec["seconds"] = self.number(
                fields["seconds"].value, f"{path}.seconds", allow_zero=True
            )
        if "arguments" in fields:
            spec["arguments"] = str(self.scalar(fields["arguments"].value, f"{path}.arguments"))
        return spec


def _written(
    name: str,
    graph: str | None,
    tags: tuple[str, ...],
    metadata: dict[str, object],
    events: list[tuple[str, dict[str, Any], int]],
) -> Trace:
    """The trace of a run written as events: what the watchdog would be shown, in time."""
    trace_events = list(_trace_events(events))
    end = trace_events.pop()
    return Trace(
        run_id=name,
        graph=graph or "agent",
        tags=tags,
        metadata=metadata,
        events=tuple(trace_events),
        end={"elapsed_s": end[0] / 1e6, "outcome": "completed"},
    )


def _trace_events(events: list[tuple[str, dict[str, Any], int]]) -> Iterator[tuple[Any, ...]]:
    """The written events as a trace's, in whole microseconds from the run's start; the
    last is ``(now, "end")``."""
    now = 0
    inputs: dict[str, int] = {}
    fresh = itertools.count(1_000_000_000)  # an input no other equals
    keys = itertools.count(1)
    open_node: int | None = None

    def input_of(text: str | None) -> int:
        return next(fresh) if text is None else inputs.setdefault(text, len(inputs) + 1)

    def later(spec: dict[str, Any]) -> int:
        seconds: float = spec.get("seconds", 0.0)
        return now + round(seconds * 1e6)

    for kind, spec in _expanded(events):
        if kind == "node":
            if open_node is not None:
                yield (now, "node_end", open_node)
            open_node = next(keys)
            entry = input_of(spec.get("input"))
            yield (now, "node", spec["name"], open_node, entry, int(not spec.get("same_step")))
        elif kind == "llm":
            yield (now, "llm", spec["model"])
            now = later(spec)
            tokens = (spec.get("input_tokens", 0), spec.get("output_tokens", 0))
            yield (now, "usage", spec["model"], *tokens, None)
            continue
        elif kind == "tool":
            yield (now, "tool", spec["name"], input_of(spec.get("arguments")))
            now = later(spec)
            yield (now, "tool_end")
            continue
        now = later(spec)
    if open_node is not None:
        yield (now, "node_end", open_node)
    yield (now, "end")


def _expanded(
    events: list[tuple[str, dict[str, Any], int]],
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each event as often as it repeats, the events of a group in order."""
    for kind, spec, repeat in events:
        for _ in range(repeat):
            if kind == "each":
                yield from _expanded(spec["events"])
            else:
                yield kind, spec


def _count(event: tuple[str, dict[str, Any], int]) -> int:
    """How many events one written event stands for, its repeats and groups included."""
    kind, spec, repeat = event
    inner = sum(map(_count, spec["events"])) if kind == "each" else 1
    return repeat * inner
