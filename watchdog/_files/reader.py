"""A typed reader of composed YAML nodes: each value read as the type asked for, each
problem recorded with its file, line, column and path, and reading going on past it.

The YAML is composed into nodes (not loaded into plain values) so each problem can name the
line and column it stands at. Nothing here knows what a policy is: ``schema.py`` does.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NoReturn, TypeVar, cast

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .._core.errors import PolicyProblem

__all__ = ["LINE_BREAK", "Entry", "Invalid", "NodeReader", "describe", "position"]

MERGE_TAG = "tag:yaml.org,2002:merge"
MAP_TAG = "tag:yaml.org,2002:map"
SEQ_TAG = "tag:yaml.org,2002:seq"
NULL_TAG = "tag:yaml.org,2002:null"
# The line breaks PyYAML counts lines by (not \v or \f, which str.splitlines() also breaks on).
LINE_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")
# What PyYAML's constructors raise for a scalar they cannot read (a bad timestamp, say).
UNREADABLE = (yaml.YAMLError, ValueError, TypeError, OverflowError)
INDENTATION_HINT = " (check this line's indentation against the lines above)"

T = TypeVar("T")


class Invalid(Exception):
    """Unwinds one field's validation after its problem was recorded."""


@dataclass(frozen=True, slots=True)
class Entry:
    key: Node
    value: Node


def position(node: Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


_UNREAD = object()


def describe(node: Node, value: object = _UNREAD) -> str:
    """What a node holds, for "got ..." in messages."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if value is _UNREAD:
        try:
            value = SafeConstructor().construct_object(node, deep=True)
        except UNREADABLE:
            return repr(node.value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, int | float):
        text = repr(value)
        return text if len(text) <= 40 else f"{text[:20]}... ({len(text)} digits)"
    return f"{type(value).__name__} {value!r}"


def text_number_hint(node: Node, value: object, *, whole: bool = False) -> str:
    """For text that Python reads as a number: why YAML read it as text, and what to write."""
    if not isinstance(value, str):
        return ""
    try:
        number = float(value)
    except ValueError:
        return ""
    if not math.isfinite(number):  # 1e400, inf, nan
        return " (not a finite number)"
    # YAML 1.1 reads 1e-12 and 1.0e5 as text: its floats need a dot, and a sign on an exponent.
    mantissa, exponent_mark, exponent = value.lower().partition("e")
    missing = []
    if exponent_mark and "." not in mantissa:
        missing.append("a dot")
    if exponent_mark and exponent[:1] not in ("+", "-"):
        missing.append("a sign on its exponent")
    if isinstance(node, ScalarNode) and node.style in ("'", '"'):
        reason = "a quoted value is text"
    elif missing:
        reason = f"YAML 1.1 reads a number without {' or '.join(missing)} as text"
    else:
        reason = "YAML 1.1 reads it as text"
    if number.is_integer() and abs(number) < 2**53:
        spelled = str(int(number))
    elif whole:
        spelled = ""  # not a whole number, however it is written
    else:
        spelled = repr(number)  # 1e-12, 1e+20 or 0.5: an exponent has its sign
        spelled = spelled.replace("e", ".0e") if "e" in spelled and "." not in spelled else spelled
    return f" ({reason}: write {spelled})" if spelled else f" ({reason})"


def _finite(value: object) -> float | None:
    """``value`` as a finite float, or None (booleans, text, NaN, infinity, huge integers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _key_path(path: str, key: str) -> str:
    return f"{path}.{key}" if key.isidentifier() else f"{path}[{key!r}]"


def suggest(word: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    close = close or [c for c in choices if len(word) >= 3 and c.startswith(word)][:1]
    return f" (did you mean {close[0]}?)" if close else ""


class NodeReader:
    """Reads one file's nodes, recording problems instead of stopping at the first."""

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self.source = text
        self.problems: list[PolicyProblem] = []
        self._constructor = SafeConstructor()

    # -- recording problems ------------------------------------------------------------

    def problem(self, node: Node, path: str, message: str) -> None:
        line, column = position(node)
        self._record(line, column, path, message)

    def _record(self, line: int, column: int, path: str, message: str) -> None:
        source_line = self._lines[line - 1] if line <= len(self._lines) else None
        self.problems.append(PolicyProblem(self.file, line, column, path, message, source_line))

    @cached_property
    def _lines(self) -> list[str]:
        return LINE_BREAK.split(self.source)

    def invalid(self, node: Node, path: str, message: str) -> NoReturn:
        self.problem(node, path, message)
        raise Invalid

    def field(self, read: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """``read(*args, **kwargs)``, one field's validation; None when it recorded a problem."""
        try:
            return read(*args, **kwargs)
        except Invalid:
            return None

    # -- YAML structure ------------------------------------------------------------------

    def compose(self) -> Node | None:
        try:
            return yaml.compose(self.source, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            what = exc.problem or "invalid YAML"
            if what.startswith("found character '\\t'"):
                what = "a tab character: YAML indents with spaces only"
            elif what.startswith("expected <block end>"):
                what += INDENTATION_HINT
            elif what == "mapping values are not allowed here":
                what, column = self._misplaced_colon(line, column)
            context = exc.context_mark
            if exc.context and context is not None and context is not mark:
                # e.g. where an unclosed quote opened, not just where the file ended
                start = f"line {context.line + 1}, column {context.column + 1}"
                what = f"{exc.context} at {start}: {what}"
            self._yaml_problem(line, column, what)
        except yaml.reader.ReaderError as exc:
            # The reader's errors (bad characters) carry a character offset, not a mark.
            before = LINE_BREAK.split(self.source[: exc.position])
            line, column = len(before), len(before[-1]) + 1
            self._yaml_problem(line, column, f"unacceptable character #x{exc.character:04x}")
        except yaml.YAMLError as exc:
            self._yaml_problem(1, 1, str(exc))
        except RecursionError:
            self._yaml_problem(1, 1, "nested too deeply")
        return None

    def _yaml_problem(self, line: int, column: int, what: str) -> None:
        self._record(line, column, "", f"YAML: {what}")

    def _misplaced_colon(self, line: int, column: int) -> tuple[str, int]:
        """Why ': ' is refused at this column of this line, and the column to show it at."""
        what = "mapping values are not allowed here"
        before = self._lines[line - 1][: column - 1]
        if ": " in before:  # `name: a: b`: the value holds ': '
            return f"{what} (quote a value that holds ': ')", column
        # A key indented deeper than its siblings reads as more of the value above it, until
        # its ':'. The slip is at the start of the line, not at the ':'.
        return what + INDENTATION_HINT, len(before) - len(before.lstrip(" ")) + 1

    def plain(self, node: Node, path: str) -> None:
        """Refuse tags on mappings and lists, as yaml.safe_load would (``!!python/...``)."""
        if isinstance(node, MappingNode):
            expected: str | None = MAP_TAG
        else:
            expected = SEQ_TAG if isinstance(node, SequenceNode) else None
        if expected is not None and node.tag != expected:
            self.invalid(node, path, f"unsupported YAML tag {node.tag!r}")

    def scalar(self, node: Node, path: str) -> object:
        if not isinstance(node, ScalarNode):
            self.invalid(node, path, f"expected a single value, got {describe(node)}")
        try:
            return self._constructor.construct_object(node, deep=True)
        except UNREADABLE as exc:
            # A failed construct leaves the constructor's bookkeeping half done.
            self._constructor = SafeConstructor()
            problem = getattr(exc, "problem", None) or str(exc)
            self.invalid(node, path, f"cannot read this value: {problem}")

    def key(self, node: Node, path: str, what: str = "a string key") -> str | None:
        """A mapping key as a string, or None after recording why it is not one."""
        try:
            value = self.scalar(node, path)
        except Invalid:
            return None
        if isinstance(value, str):
            return value
        self.problem(node, path, f"expected {what}, got {describe(node, value)}")
        return None

    def mapping(
        self, node: Node, path: str, keys: tuple[str, ...], expected: str
    ) -> dict[str, Entry]:
        """The entries of a mapping node: string keys, no duplicates, only known keys."""
        if not isinstance(node, MappingNode):
            value = self.scalar(node, path) if isinstance(node, ScalarNode) else None
            self.invalid(node, path, f"expected {expected}, got {describe(node, value)}")
        entries: dict[str, Entry] = {}
        for key_node, value_node in self.entries(node, path, set()):
            key = self.key(key_node, path)
            if key is None:
                continue
            key_path = _key_path(path, key) if path else key
            if key in entries:
                line, column = position(entries[key].key)
                self.problem(
                    key_node,
                    key_path,
                    f"duplicate key {key!r}; it is already set at line {line}, column {column}",
                )
                continue
            if key not in keys:
                self.problem(
                    key_node,
                    key_path,
                    f"unknown key {key!r}{suggest(key, keys)}; expected one of {', '.join(keys)}",
                )
                continue
            entries[key] = Entry(key_node, value_node)
        return entries

    def entries(self, node: MappingNode, path: str, seen: set[int]) -> Iterator[tuple[Node, Node]]:
        """A mapping's own entries, then those merged in with ``<<`` that it does not set."""
        self.plain(node, path)
        seen.add(id(node))
        merged: list[MappingNode] = []
        own: set[object] = set()
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:
                sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
                for source in sources:
                    if not isinstance(source, MappingNode):
                        self.problem(source, path, f"'<<' merges mappings, got {describe(source)}")
                    elif id(source) not in seen:
                        merged.append(source)
                continue
            own.add(key_node.value if isinstance(key_node, ScalarNode) else id(key_node))
            yield key_node, value_node
        for source in merged:
            for key_node, value_node in self.entries(source, path, seen):
                if isinstance(key_node, ScalarNode) and key_node.value not in own:
                    own.add(key_node.value)
                    yield key_node, value_node

    # -- typed values ------------------------------------------------------------------

    def number(self, node: Node, path: str, *, allow_zero: bool = False) -> float:
        value = self.scalar(node, path)
        expected = "a number of 0 or more" if allow_zero else "a number greater than 0"
        number = _finite(value)
        if number is None or number < 0 or (number == 0 and not allow_zero):
            found = f"{describe(node, value)}{text_number_hint(node, value)}"
            self.invalid(node, path, f"expected {expected}, got {found}")
        return number

    def whole(self, node: Node, path: str) -> int:
        value = self.scalar(node, path)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            found = f"{describe(node, value)}{text_number_hint(node, value, whole=True)}"
            self.invalid(node, path, f"expected a whole number greater than 0, got {found}")
        return value

    def text(self, node: Node, path: str, what: str = "a string") -> str:
        value = self.scalar(node, path)
        if not isinstance(value, str) or not value.strip():
            self.invalid(node, path, f"expected {what}, got {describe(node, value)}")
        return value

    def flag(self, node: Node, path: str) -> bool:
        value = self.scalar(node, path)
        if not isinstance(value, bool):
            self.invalid(node, path, f"expected true or false, got {describe(node, value)}")
        return value

    def choice(self, node: Node, path: str, choices: tuple[str, ...]) -> str:
        value = self.scalar(node, path)
        if not isinstance(value, str) or value not in choices:
            hint = suggest(value, choices) if isinstance(value, str) else ""
            self.invalid(
                node,
                path,
                f"expected one of {', '.join(choices)}, got {describe(node, value)}{hint}",
            )
        return value

    def strings(self, node: Node, path: str, what: str) -> tuple[str, ...]:
        """A string or a list of strings."""
        if isinstance(node, ScalarNode):
            return (self.text(node, path, what),)
        if not isinstance(node, SequenceNode):
            self.invalid(node, path, f"expected {what} or a list of them, got {describe(node)}")
        self.plain(node, path)
        items = [
            self.field(self.text, item, f"{path}[{i}]", what) for i, item in enumerate(node.value)
        ]
        if any(item is None for item in items):
            raise Invalid
        return tuple(cast(list[str], items))

    def null(self, node: Node) -> bool:
        return isinstance(node, ScalarNode) and node.tag == NULL_TAG

    def table(
        self,
        node: Node,
        path: str,
        what: str,
        key_what: str,
        read_value: Callable[[Node, str], T],
    ) -> dict[str, T]:
        """A mapping of free-form string keys, each value read by ``read_value``."""
        if not isinstance(node, MappingNode):
            self.invalid(node, path, f"expected a mapping of {what}, got {describe(node)}")
        table: dict[str, T] = {}
        failed = False
        for key_node, value_node in self.entries(node, path, set()):
            key = self.key(key_node, path, key_what)
            if key is None:
                failed = True
                continue
            key_path = _key_path(path, key)
            if key in table:
                self.problem(key_node, key_path, f"duplicate key {key!r}")
                failed = True
                continue
            value = self.field(read_value, value_node, key_path)
            if value is None:
                failed = True
                continue
            table[key] = value
        if failed:
            raise Invalid
        return table
