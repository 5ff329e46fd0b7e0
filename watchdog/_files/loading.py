"""Policy files v1: YAML in, a ``PolicySet`` out, or a ``PolicyError`` naming every problem.

The YAML is composed into nodes (not loaded into plain values) so each problem can name the
line and column it stands at. Validation goes on past the first problem, the way a compiler
does, so one run of ``watchdog check`` shows everything there is to fix.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, NoReturn, TypeVar, cast

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .._core.errors import PolicyError, PolicyProblem
from .._core.policies import (
    KINDS,
    RATE_OF,
    SCOPES,
    Kind,
    Loop,
    Match,
    Mode,
    Policy,
    PolicySet,
    Rate,
    StepCount,
    TokenBudget,
    WallTime,
)
from .._core.state import Price

__all__ = [
    "POLICY_SUFFIXES",
    "check_policies",
    "load_policies",
    "load_policy_text",
    "load_policy_texts",
    "read_policy_files",
]

POLICY_SUFFIXES = (".yaml", ".yml")
SUPPORTED_VERSIONS = (1,)
MODES: tuple[Mode, ...] = ("enforce", "audit")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
MERGE_TAG = "tag:yaml.org,2002:merge"
MAP_TAG = "tag:yaml.org,2002:map"
SEQ_TAG = "tag:yaml.org,2002:seq"
NULL_TAG = "tag:yaml.org,2002:null"
# The line breaks PyYAML counts lines by (not \v or \f, which str.splitlines() also breaks on).
LINE_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")
# What PyYAML's constructors raise for a scalar they cannot read (a bad timestamp, say).
UNREADABLE = (yaml.YAMLError, ValueError, TypeError, OverflowError)
INDENTATION_HINT = " (check this line's indentation against the lines above)"

TOP_KEYS = ("version", "defaults", "policies")
DEFAULT_KEYS = ("mode", "grace_seconds", "warn_at")
POLICY_KEYS = ("name", "description", "match", "cleanup_node", "supersede", *DEFAULT_KEYS)
MATCH_KEYS = ("graph", "tags", "metadata")
KIND_KEYS: dict[str, tuple[str, ...]] = {
    "wall_time": ("max_seconds", "idle_seconds", "node_seconds"),
    "step_count": ("max_steps", "max_node_runs", "scope"),
    "loop": ("window", "max_repeats", "max_tool_repeats", "max_cycle_repeats"),
    "token_budget": (
        "max_total_tokens",
        "max_input_tokens",
        "max_output_tokens",
        "max_cost_usd",
        "prices",
        "scope",
    ),
    "rate": ("max_events", "per_seconds", "of"),
}
PRICE_KEYS = ("input_per_mtok", "output_per_mtok")
DEFAULT_LOOP_WINDOW = 50

T = TypeVar("T")


class _Invalid(Exception):
    """Unwinds one field's validation after its problem was recorded."""


@dataclass(frozen=True, slots=True)
class _Entry:
    key: Node
    value: Node


def load_policies(path: str | os.PathLike[str]) -> PolicySet:
    """Load a policy file, or every ``*.yaml``/``*.yml`` file directly inside a directory.

    A directory's files are merged in name order. Hidden files are skipped, so a Kubernetes
    ConfigMap mount (with its ``..data`` links) loads as the files it holds.
    """
    policies, problems = check_policies(path)
    if problems:
        raise PolicyError(problems)
    return policies


def check_policies(path: str | os.PathLike[str]) -> tuple[PolicySet, list[PolicyProblem]]:
    """Every problem of the policy files at ``path``, and the policies that are valid.

    A file that cannot be read is one problem; the other files are still read and checked.
    The set is the whole set only when there are no problems: ``watchdog check`` sums up the
    files that have none.
    """
    return _merge(_read_files(path))


def read_policy_files(path: str | os.PathLike[str]) -> dict[str, str]:
    """The text of each policy file at ``path`` (a file or a directory), by file name.

    Raises ``PolicyError`` naming every file that cannot be read.
    """
    files = _read_files(path)
    unread = [problem for problem in files.values() if isinstance(problem, PolicyProblem)]
    if unread:
        raise PolicyError(unread)
    return {name: text for name, text in files.items() if isinstance(text, str)}


def load_policy_texts(files: Mapping[str, str]) -> PolicySet:
    """Load policies from the texts of several files, merged in the order given."""
    policies, problems = _merge(files)
    if problems:
        raise PolicyError(problems)
    return policies


def load_policy_text(text: str, file: str = "<string>") -> PolicySet:
    """Load policies from YAML text; ``file`` names it in error messages."""
    return load_policy_texts({file: text})


def _read_files(path: str | os.PathLike[str]) -> dict[str, str | PolicyProblem]:
    """Each policy file at ``path`` by name: its text, or the problem that kept it unread."""
    root = Path(path)
    if root.is_dir():
        files = sorted(
            p
            for p in root.iterdir()
            if p.suffix.lower() in POLICY_SUFFIXES and not p.name.startswith(".") and p.is_file()
        )
        if not files:
            suffixes = ", ".join(f"*{s}" for s in POLICY_SUFFIXES)
            message = f"no policy files ({suffixes}) in this directory"
            return {str(root): PolicyProblem(str(root), 0, 0, "", message)}
    else:
        files = [root]
    return {str(file): _read_file(file) for file in files}


def _read_file(file: Path) -> str | PolicyProblem:
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        return PolicyProblem(str(file), 0, 0, "", "no such file")
    except OSError as exc:
        return PolicyProblem(str(file), 0, 0, "", f"cannot read it: {exc.strerror or exc}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _not_utf8(str(file), data, exc)


def _not_utf8(file: str, data: bytes, exc: UnicodeDecodeError) -> PolicyProblem:
    """The first byte that is not UTF-8, located by line and column like any other problem."""
    # Everything before the first bad byte decodes, so lines and columns count as YAML's do.
    lines = LINE_BREAK.split(data[: exc.start].decode("utf-8"))
    rest = LINE_BREAK.split(data[exc.start :].decode("utf-8", errors="replace"), maxsplit=1)[0]
    looks_like = " (it looks like UTF-16)" if data.startswith((b"\xff\xfe", b"\xfe\xff")) else ""
    message = (
        f"not UTF-8 text: byte 0x{data[exc.start]:02x} ({exc.reason}){looks_like}; "
        "expected the file saved as UTF-8"
    )
    return PolicyProblem(file, len(lines), len(lines[-1]) + 1, "", message, lines[-1] + rest)


def _merge(files: Mapping[str, str | PolicyProblem]) -> tuple[PolicySet, list[PolicyProblem]]:
    problems: list[PolicyProblem] = []
    policies: list[Policy] = []
    read_files: list[str] = []
    first_use: dict[str, str] = {}
    for file, text in files.items():
        if isinstance(text, PolicyProblem):
            problems.append(text)
            continue
        reader = _FileReader(file, text)
        policies.extend(reader.read())
        read_files.append(file)
        # Names are checked as read, valid policy or not: a duplicate is worth knowing either way.
        for name in reader.names:
            if name.name not in first_use:
                line, column = _position(name.node)
                first_use[name.name] = f"{reader.file}:{line}:{column}"
                continue
            reader.problem(
                name.node,
                name.path,
                f"policy name {name.name!r} is already used at {first_use[name.name]}; "
                "expected a unique name",
            )
        problems.extend(sorted(reader.problems, key=lambda p: (p.line, p.column)))
    return PolicySet(tuple(policies), tuple(read_files)), problems


def _position(node: Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


_UNREAD = object()


def _describe(node: Node, value: object = _UNREAD) -> str:
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


def _text_number_hint(node: Node, value: object, *, whole: bool = False) -> str:
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


def _suggest(word: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    close = close or [c for c in choices if len(word) >= 3 and c.startswith(word)][:1]
    return f" (did you mean {close[0]}?)" if close else ""


@dataclass(frozen=True, slots=True)
class _Name:
    """A policy's name and where it stands, for duplicate-name messages."""

    name: str
    node: Node
    path: str


class _FileReader:
    """Validates one file's nodes, recording problems instead of stopping at the first."""

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self.source = text
        self.problems: list[PolicyProblem] = []
        self.names: list[_Name] = []  # every valid name, in file order, valid policy or not
        self._constructor = SafeConstructor()

    # -- recording problems ------------------------------------------------------------

    def problem(self, node: Node, path: str, message: str) -> None:
        line, column = _position(node)
        self._record(line, column, path, message)

    def _record(self, line: int, column: int, path: str, message: str) -> None:
        source_line = self._lines[line - 1] if line <= len(self._lines) else None
        self.problems.append(PolicyProblem(self.file, line, column, path, message, source_line))

    @cached_property
    def _lines(self) -> list[str]:
        return LINE_BREAK.split(self.source)

    def invalid(self, node: Node, path: str, message: str) -> NoReturn:
        self.problem(node, path, message)
        raise _Invalid

    def _field(self, read: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """``read(*args, **kwargs)``, one field's validation; None when it recorded a problem."""
        try:
            return read(*args, **kwargs)
        except _Invalid:
            return None

    # -- YAML structure ------------------------------------------------------------------

    def _compose(self) -> Node | None:
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
            self.invalid(node, path, f"expected a single value, got {_describe(node)}")
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
        except _Invalid:
            return None
        if isinstance(value, str):
            return value
        self.problem(node, path, f"expected {what}, got {_describe(node, value)}")
        return None

    def mapping(
        self, node: Node, path: str, keys: tuple[str, ...], expected: str
    ) -> dict[str, _Entry]:
        """The entries of a mapping node: string keys, no duplicates, only known keys."""
        if not isinstance(node, MappingNode):
            value = self.scalar(node, path) if isinstance(node, ScalarNode) else None
            self.invalid(node, path, f"expected {expected}, got {_describe(node, value)}")
        entries: dict[str, _Entry] = {}
        for key_node, value_node in self._entries(node, path, set()):
            key = self.key(key_node, path)
            if key is None:
                continue
            key_path = _key_path(path, key) if path else key
            if key in entries:
                line, column = _position(entries[key].key)
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
                    f"unknown key {key!r}{_suggest(key, keys)}; expected one of {', '.join(keys)}",
                )
                continue
            entries[key] = _Entry(key_node, value_node)
        return entries

    def _entries(self, node: MappingNode, path: str, seen: set[int]) -> Iterator[tuple[Node, Node]]:
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
                        self.problem(source, path, f"'<<' merges mappings, got {_describe(source)}")
                    elif id(source) not in seen:
                        merged.append(source)
                continue
            own.add(key_node.value if isinstance(key_node, ScalarNode) else id(key_node))
            yield key_node, value_node
        for source in merged:
            for key_node, value_node in self._entries(source, path, seen):
                if isinstance(key_node, ScalarNode) and key_node.value not in own:
                    own.add(key_node.value)
                    yield key_node, value_node

    # -- typed values ------------------------------------------------------------------

    def number(self, node: Node, path: str, *, allow_zero: bool = False) -> float:
        value = self.scalar(node, path)
        expected = "a number of 0 or more" if allow_zero else "a number greater than 0"
        number = _finite(value)
        if number is None or number < 0 or (number == 0 and not allow_zero):
            found = f"{_describe(node, value)}{_text_number_hint(node, value)}"
            self.invalid(node, path, f"expected {expected}, got {found}")
        return number

    def whole(self, node: Node, path: str) -> int:
        value = self.scalar(node, path)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            found = f"{_describe(node, value)}{_text_number_hint(node, value, whole=True)}"
            self.invalid(node, path, f"expected a whole number greater than 0, got {found}")
        return value

    def text(self, node: Node, path: str, what: str = "a string") -> str:
        value = self.scalar(node, path)
        if not isinstance(value, str) or not value.strip():
            self.invalid(node, path, f"expected {what}, got {_describe(node, value)}")
        return value

    def flag(self, node: Node, path: str) -> bool:
        value = self.scalar(node, path)
        if not isinstance(value, bool):
            self.invalid(node, path, f"expected true or false, got {_describe(node, value)}")
        return value

    def choice(self, node: Node, path: str, choices: tuple[str, ...]) -> str:
        value = self.scalar(node, path)
        if not isinstance(value, str) or value not in choices:
            hint = _suggest(value, choices) if isinstance(value, str) else ""
            self.invalid(
                node,
                path,
                f"expected one of {', '.join(choices)}, got {_describe(node, value)}{hint}",
            )
        return value

    def strings(self, node: Node, path: str, what: str) -> tuple[str, ...]:
        """A string or a list of strings."""
        if isinstance(node, ScalarNode):
            return (self.text(node, path, what),)
        if not isinstance(node, SequenceNode):
            self.invalid(node, path, f"expected {what} or a list of them, got {_describe(node)}")
        self.plain(node, path)
        items = [
            self._field(self.text, item, f"{path}[{i}]", what) for i, item in enumerate(node.value)
        ]
        if any(item is None for item in items):
            raise _Invalid
        return tuple(cast(list[str], items))

    def null(self, node: Node) -> bool:
        return isinstance(node, ScalarNode) and node.tag == NULL_TAG

    # -- the document --------------------------------------------------------------------

    def read(self) -> list[Policy]:
        read: list[Policy] = []
        root = self._compose()
        if root is None or (isinstance(root, ScalarNode) and root.tag == NULL_TAG):
            if not self.problems:  # about the whole file: no line to show
                self.problems.append(
                    PolicyProblem(
                        self.file,
                        1,
                        1,
                        "",
                        "the file is empty; expected a mapping with 'version: 1' and 'policies'",
                    )
                )
            return read
        top = self._field(
            self.mapping, root, "", TOP_KEYS, "a mapping with 'version' and 'policies'"
        )
        if top is None:
            return read
        self._version(root, top)
        defaults = self._defaults(top.get("defaults"))
        entry = top.get("policies")
        if entry is None:
            self.problem(
                root, "policies", "missing required key 'policies'; expected a list of policies"
            )
            return read
        if not isinstance(entry.value, SequenceNode):
            self.problem(
                entry.value,
                "policies",
                f"expected a list of policies, got {_describe(entry.value)}",
            )
            return read
        try:
            self.plain(entry.value, "policies")
        except _Invalid:
            return read
        for index, node in enumerate(entry.value.value):
            path = f"policies[{index}]"
            policy = self._field(self._policy, node, path, defaults)
            if policy is not None:
                read.append(policy)
        return read

    def _version(self, root: Node, top: dict[str, _Entry]) -> None:
        entry = top.get("version")
        if entry is None:
            self.problem(root, "version", "missing required key 'version'; expected version: 1")
            return
        try:
            value = self.scalar(entry.value, "version")
        except _Invalid:
            return
        if type(value) is not int or value not in SUPPORTED_VERSIONS:
            supported = " or ".join(str(v) for v in SUPPORTED_VERSIONS)
            self.problem(
                entry.value,
                "version",
                f"expected version {supported}, got {_describe(entry.value, value)}",
            )

    def _defaults(self, entry: _Entry | None) -> dict[str, Any]:
        defaults: dict[str, Any] = {"mode": "enforce", "grace_seconds": 5.0, "warn_at": 0.8}
        if entry is None:
            return defaults
        fields = self._field(
            self.mapping, entry.value, "defaults", DEFAULT_KEYS, "a mapping of defaults"
        )
        if fields is not None:
            defaults.update(self._options(fields, "defaults"))
        return defaults

    def _options(self, fields: dict[str, _Entry], path: str) -> dict[str, Any]:
        """mode, grace_seconds and warn_at, where set and valid."""
        options: dict[str, Any] = {}
        if "mode" in fields:
            mode = self._field(self.choice, fields["mode"].value, f"{path}.mode", MODES)
            if mode is not None:
                options["mode"] = mode
        if "grace_seconds" in fields:
            grace = self._field(
                self.number, fields["grace_seconds"].value, f"{path}.grace_seconds", allow_zero=True
            )
            if grace is not None:
                options["grace_seconds"] = float(grace)
        if "warn_at" in fields:
            node = fields["warn_at"].value
            if self.null(node):
                options["warn_at"] = None
            else:
                warn_at = self._field(self._fraction, node, f"{path}.warn_at")
                if warn_at is not None:
                    options["warn_at"] = warn_at
        return options

    def _fraction(self, node: Node, path: str) -> float:
        value = self.scalar(node, path)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
            self.invalid(
                node,
                path,
                f"expected a fraction between 0 and 1 (such as 0.8), or null to turn warnings "
                f"off, got {_describe(node, value)}{_text_number_hint(node, value)}",
            )
        return float(value)

    def _policy(self, node: Node, path: str, defaults: dict[str, Any]) -> Policy:
        keys = (*POLICY_KEYS, *KINDS)
        problems_before = len(self.problems)
        fields = self.mapping(node, path, keys, "a policy mapping with a name and one kind")
        unknown_keys = len(self.problems) > problems_before  # a misspelt kind, perhaps
        kinds = [k for k in fields if k in KINDS]
        name_entry = fields.get("name")
        name = None
        if name_entry is None:
            self.problem(
                node, f"{path}.name", "missing required key 'name'; expected a unique policy name"
            )
        else:
            name = self._field(self._name, name_entry.value, f"{path}.name")
            if name is not None:
                self.names.append(_Name(name, name_entry.value, f"{path}.name"))
        if not kinds and not unknown_keys:
            self.problem(
                node,
                path,
                f"no policy kind; expected exactly one of {', '.join(KINDS)}",
            )
        for extra in kinds[1:]:
            self.problem(
                fields[extra].key,
                f"{path}.{extra}",
                f"a policy has exactly one kind, and this one already has {kinds[0]}; "
                "expected a separate policy for each kind",
            )
        options = dict(defaults)
        options.update(self._options(fields, path))
        match = self._field(self._match, fields.get("match"), f"{path}.match")
        cleanup_node = description = None
        if "cleanup_node" in fields:
            cleanup_node = self._field(
                self.text, fields["cleanup_node"].value, f"{path}.cleanup_node", "a node name"
            )
        if "description" in fields:
            description = self._field(self.text, fields["description"].value, f"{path}.description")
        supersede = False
        if "supersede" in fields:
            supersede = bool(self._field(self.flag, fields["supersede"].value, f"{path}.supersede"))
        kind = None
        if kinds:
            kind_name = kinds[0]
            kind = self._field(
                self._kind, kind_name, fields[kind_name].value, f"{path}.{kind_name}"
            )
        if len(self.problems) > problems_before or name is None or kind is None or match is None:
            raise _Invalid
        line, _ = _position(node)
        return Policy(
            name=name,
            kind=kind,
            match=match,
            cleanup_node=cleanup_node,
            supersede=supersede,
            description=description,
            file=self.file,
            line=line,
            **options,
        )

    def _name(self, node: Node, path: str) -> str:
        name = self.text(node, path, "a policy name")
        if not NAME_PATTERN.fullmatch(name):
            self.invalid(
                node,
                path,
                f"expected a name of letters, digits and _ . : - (at most 64, it is a metric "
                f"label), got {name!r}",
            )
        return name

    def _match(self, entry: _Entry | None, path: str) -> Match:
        if entry is None:
            return Match()
        fields = self.mapping(entry.value, path, MATCH_KEYS, "a mapping of graph, tags, metadata")
        graphs = tags = None
        metadata: dict[str, object] | None = {}
        if "graph" in fields:
            graphs = self._field(
                self.strings, fields["graph"].value, f"{path}.graph", "a graph name glob"
            )
        if "tags" in fields:
            tags = self._field(self.strings, fields["tags"].value, f"{path}.tags", "a tag")
        if "metadata" in fields:
            metadata = self._field(self._metadata, fields["metadata"].value, f"{path}.metadata")
        if (
            ("graph" in fields and graphs is None)
            or ("tags" in fields and tags is None)
            or metadata is None
        ):
            raise _Invalid
        return Match(graphs=graphs or (), tags=frozenset(tags or ()), metadata=metadata)

    def _metadata(self, node: Node, path: str) -> dict[str, object]:
        return self._table(node, path, "metadata keys to values", "a string key", self._exact)

    def _exact(self, node: Node, path: str) -> object:
        value = self.scalar(node, path)
        if not isinstance(value, str | int | float | bool):
            self.invalid(
                node,
                path,
                "expected a string, number or boolean to match exactly, got "
                f"{_describe(node, value)}",
            )
        return value

    def _table(
        self,
        node: Node,
        path: str,
        what: str,
        key_what: str,
        read_value: Callable[[Node, str], T],
    ) -> dict[str, T]:
        """A mapping of free-form string keys, each value read by ``read_value``."""
        if not isinstance(node, MappingNode):
            self.invalid(node, path, f"expected a mapping of {what}, got {_describe(node)}")
        table: dict[str, T] = {}
        failed = False
        for key_node, value_node in self._entries(node, path, set()):
            key = self.key(key_node, path, key_what)
            if key is None:
                failed = True
                continue
            key_path = _key_path(path, key)
            if key in table:
                self.problem(key_node, key_path, f"duplicate key {key!r}")
                failed = True
                continue
            value = self._field(read_value, value_node, key_path)
            if value is None:
                failed = True
                continue
            table[key] = value
        if failed:
            raise _Invalid
        return table

    # -- kinds ---------------------------------------------------------------------------

    def _kind(self, kind: str, node: Node, path: str) -> Kind:
        keys = KIND_KEYS[kind]
        example = f"{{{keys[0]}: ...}}"
        # Problems in the mapping count too: "sets no limit" is noise after a misspelt key.
        before = len(self.problems)
        fields = self.mapping(node, path, keys, f"a mapping of {kind} limits such as {example}")
        values: dict[str, Any] = {}
        for key, entry in fields.items():
            if self.null(entry.value) and key not in ("prices", "of", "scope"):
                continue  # null leaves an optional limit unset
            reader = self._KIND_FIELDS[key]
            value = self._field(reader, self, entry.value, f"{path}.{key}")
            if value is not None:
                values[key] = value
        if len(self.problems) > before:
            raise _Invalid
        build = getattr(self, f"_build_{kind}")
        return cast(Kind, build(node, path, fields, values))

    def _prices(self, node: Node, path: str) -> dict[str, Price]:
        return self._table(node, path, "model name to prices", "a model name", self._price)

    def _price(self, node: Node, path: str) -> Price:
        fields = self.mapping(
            node, path, PRICE_KEYS, "a mapping {input_per_mtok: ..., output_per_mtok: ...}"
        )
        for key in PRICE_KEYS:
            if key not in fields:
                self.problem(
                    node,
                    f"{path}.{key}",
                    f"missing required key {key!r}; expected US dollars per million tokens",
                )
        amounts = {
            key: self._field(self.number, entry.value, f"{path}.{key}", allow_zero=True)
            for key, entry in fields.items()
        }
        input_price, output_price = (amounts.get(key) for key in PRICE_KEYS)
        if input_price is None or output_price is None:
            raise _Invalid
        return Price(float(input_price), float(output_price))

    def _no_limit(self, node: Node, path: str, kind: str, limits: tuple[str, ...]) -> NoReturn:
        self.invalid(
            node, path, f"{kind} sets no limit; expected at least one of {', '.join(limits)}"
        )

    def _build_wall_time(
        self, node: Node, path: str, fields: dict[str, _Entry], values: dict[str, Any]
    ) -> Kind:
        if not values:
            self._no_limit(node, path, "wall_time", KIND_KEYS["wall_time"])
        return WallTime(**{k: float(v) for k, v in values.items()})

    def _build_step_count(
        self, node: Node, path: str, fields: dict[str, _Entry], values: dict[str, Any]
    ) -> Kind:
        if not values.keys() - {"scope"}:
            self._no_limit(node, path, "step_count", KIND_KEYS["step_count"][:-1])
        return StepCount(**values)

    def _build_loop(
        self, node: Node, path: str, fields: dict[str, _Entry], values: dict[str, Any]
    ) -> Kind:
        window = values.pop("window", DEFAULT_LOOP_WINDOW)
        if not values:
            self._no_limit(node, path, "loop", KIND_KEYS["loop"][1:])
        for key in ("max_repeats", "max_tool_repeats"):
            # A repeat can only be seen when window holds limit + 1 runs.
            if key in values and values[key] >= window:
                where = fields["window"].value if "window" in fields else fields[key].value
                self.invalid(
                    where,
                    f"{path}.window" if "window" in fields else f"{path}.{key}",
                    f"window {window} cannot hold {values[key] + 1} runs, so {key}: "
                    f"{values[key]} could never fire; expected a window larger than {key}",
                )
        return Loop(window=window, **values)

    def _build_token_budget(
        self, node: Node, path: str, fields: dict[str, _Entry], values: dict[str, Any]
    ) -> Kind:
        prices = values.pop("prices", {})
        if not values.keys() - {"scope"}:
            self._no_limit(node, path, "token_budget", KIND_KEYS["token_budget"][:-2])
        if "max_cost_usd" in values and "default" not in prices:
            where = fields["prices"] if "prices" in fields else fields["max_cost_usd"]
            self.invalid(
                where.value if "prices" in fields else where.key,
                f"{path}.prices",
                "max_cost_usd is set but prices has no 'default' entry, so a model missing "
                "from prices would run free; expected a default price "
                "{input_per_mtok: ..., output_per_mtok: ...}",
            )
        return TokenBudget(prices=prices, **values)

    def _build_rate(
        self, node: Node, path: str, fields: dict[str, _Entry], values: dict[str, Any]
    ) -> Kind:
        missing = [k for k in KIND_KEYS["rate"] if k not in values]
        if missing:
            self.invalid(
                node,
                f"{path}.{missing[0]}",
                f"missing required key {missing[0]!r}; rate needs max_events, per_seconds and "
                f"of ({', '.join(RATE_OF)})",
            )
        return Rate(
            max_events=values["max_events"],
            per_seconds=float(values["per_seconds"]),
            of=values["of"],
        )

    _KIND_FIELDS: ClassVar[dict[str, Callable[[_FileReader, Node, str], object]]] = {
        "max_seconds": number,
        "idle_seconds": number,
        "node_seconds": number,
        "max_steps": whole,
        "max_node_runs": whole,
        "window": whole,
        "max_repeats": whole,
        "max_tool_repeats": whole,
        "max_cycle_repeats": whole,
        "max_total_tokens": whole,
        "max_input_tokens": whole,
        "max_output_tokens": whole,
        "max_cost_usd": number,
        "prices": _prices,
        "max_events": whole,
        "per_seconds": number,
        "of": lambda self, node, path: self.choice(node, path, RATE_OF),
        "scope": lambda self, node, path: self.choice(node, path, SCOPES),
    }
