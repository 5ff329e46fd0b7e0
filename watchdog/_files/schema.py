"""Policy files, version 1: the document a ``NodeReader`` reads into the core's model.

The schema is derived from the model: a kind's keys are its dataclass's fields, each read as
the type the field has, and a default is the field's own (``_core/policies.py``), so neither
a key nor a default is written twice.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from yaml.nodes import Node, ScalarNode, SequenceNode

from .._core.errors import PolicyProblem
from .._core.policies import (
    KINDS,
    LOCAL_SCOPES,
    RATE_OF,
    BudgetScope,
    Kind,
    Loop,
    Match,
    Mode,
    OnViolation,
    Policy,
    Rate,
    TimeZoneName,
    TokenBudget,
    Window,
    WrapUp,
)
from .._core.state import Price
from .reader import NULL_TAG, Entry, Invalid, NodeReader, describe, position, text_number_hint

__all__ = ["PolicyFileReader"]

SUPPORTED_VERSIONS = (1,)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
TOP_KEYS = ("version", "defaults", "policies")
DEFAULT_KEYS = ("mode", "grace_seconds", "warn_at")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
POLICY_KEYS = (
    "name",
    "description",
    "match",
    "cleanup_node",
    "supersede",
    "repair_thread",
    "on_violation",
    "wrap_up",
    *DEFAULT_KEYS,
)
WRAP_UP_KEYS = ("node", "message", "llm_calls")
METADATA_SCOPE = re.compile(r"metadata\.[A-Za-z0-9_.:-]{1,64}")
WINDOW = re.compile(r"([0-9]{1,4})([hd])")
MATCH_KEYS = ("graph", "tags", "metadata")
PRICE_KEYS = tuple(f.name for f in dataclasses.fields(Price))
MODES: tuple[Mode, ...] = typing.get_args(Mode)
ON_VIOLATION: tuple[OnViolation, ...] = typing.get_args(OnViolation)

FieldReader = Callable[["PolicyFileReader", Node, str], object]


@dataclass(frozen=True, slots=True)
class _KindField:
    """A key of a kind, as its dataclass field says: how it is read, and whether it is a limit
    (optional: a kind sets at least one of its limits)."""

    read: FieldReader
    limit: bool
    numeric: bool  # null leaves a number unset, to its default


def _kind_fields(kind: type[Kind]) -> dict[str, _KindField]:
    hints = typing.get_type_hints(kind)
    fields: dict[str, _KindField] = {}
    for field in dataclasses.fields(kind):
        if not field.init:
            continue
        hint = hints[field.name]
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        optional = union and type(None) in typing.get_args(hint)
        (base,) = [a for a in typing.get_args(hint) if a is not type(None)] if optional else [hint]
        numeric = base in (int, float)
        # An optional number is a limit; an optional setting (a window) is not.
        fields[field.name] = _KindField(_reader_of(base), optional and numeric, numeric)
    return fields


def _reader_of(base: Any) -> FieldReader:
    if base is int:
        return NodeReader.whole
    if base is float:
        return NodeReader.number
    if base is bool:
        return NodeReader.flag
    if typing.get_origin(base) is Literal:
        choices = typing.get_args(base)
        return lambda reader, node, path: reader.choice(node, path, choices)
    if typing.get_origin(base) is Mapping:
        return PolicyFileReader.prices
    readers: dict[object, FieldReader] = {
        BudgetScope: PolicyFileReader.budget_scope,
        Window: PolicyFileReader.window,
        TimeZoneName: PolicyFileReader.time_zone,
    }
    if base in readers:
        return readers[base]
    msg = f"no reader for a field of type {base!r}"
    raise TypeError(msg)


@dataclass(frozen=True, slots=True)
class _Name:
    """A policy's name and where it stands, for duplicate-name messages."""

    name: str
    node: Node
    path: str


class PolicyFileReader(NodeReader):
    """Reads one policy file, version 1."""

    def __init__(self, file: str, text: str) -> None:
        super().__init__(file, text)
        self.names: list[_Name] = []  # every valid name, in file order, valid policy or not
        self.redis_url: tuple[str, Node] | None = None  # defaults.redis_url, and where

    def read(self) -> list[Policy]:
        read: list[Policy] = []
        root = self.compose()
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
        top = self.field(
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
                f"expected a list of policies, got {describe(entry.value)}",
            )
            return read
        try:
            self.plain(entry.value, "policies")
        except Invalid:
            return read
        for index, node in enumerate(entry.value.value):
            path = f"policies[{index}]"
            policy = self.field(self._policy, node, path, defaults)
            if policy is not None:
                read.append(policy)
        return read

    def _version(self, root: Node, top: dict[str, Entry]) -> None:
        entry = top.get("version")
        if entry is None:
            self.problem(root, "version", "missing required key 'version'; expected version: 1")
            return
        try:
            value = self.scalar(entry.value, "version")
        except Invalid:
            return
        if type(value) is not int or value not in SUPPORTED_VERSIONS:
            supported = " or ".join(str(v) for v in SUPPORTED_VERSIONS)
            self.problem(
                entry.value,
                "version",
                f"expected version {supported}, got {describe(entry.value, value)}",
            )

    def _defaults(self, entry: Entry | None) -> dict[str, Any]:
        """The file's defaults that are set; the model has the rest."""
        if entry is None:
            return {}
        fields = self.field(
            self.mapping,
            entry.value,
            "defaults",
            (*DEFAULT_KEYS, "redis_url"),
            "a mapping of defaults",
        )
        if fields is None:
            return {}
        if "redis_url" in fields:
            node = fields["redis_url"].value
            url = self.field(self._redis_url, node, "defaults.redis_url")
            if url is not None:
                self.redis_url = url, node
        return self._options(fields, "defaults")

    def _redis_url(self, node: Node, path: str) -> str:
        value = self.text(node, path, "a Redis URL")
        if not value.startswith(REDIS_SCHEMES):
            self.invalid(
                node,
                path,
                f"expected a Redis URL such as redis://redis:6379/0 (or rediss://, unix://), "
                f"got {value!r}",
            )
        return value

    def _options(self, fields: dict[str, Entry], path: str) -> dict[str, Any]:
        """mode, grace_seconds and warn_at, where set and valid."""
        options: dict[str, Any] = {}
        if "mode" in fields:
            mode = self.field(self.choice, fields["mode"].value, f"{path}.mode", MODES)
            if mode is not None:
                options["mode"] = mode
        if "grace_seconds" in fields:
            grace = self.field(
                self.number, fields["grace_seconds"].value, f"{path}.grace_seconds", allow_zero=True
            )
            if grace is not None:
                options["grace_seconds"] = grace
        if "warn_at" in fields:
            node = fields["warn_at"].value
            if self.null(node):
                options["warn_at"] = None
            else:
                warn_at = self.field(self._fraction, node, f"{path}.warn_at")
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
                f"off, got {describe(node, value)}{text_number_hint(node, value)}",
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
            name = self.field(self._name, name_entry.value, f"{path}.name")
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
        match = self.field(self._match, fields.get("match"), f"{path}.match")
        if "cleanup_node" in fields:
            options["cleanup_node"] = self.field(
                self.text, fields["cleanup_node"].value, f"{path}.cleanup_node", "a node name"
            )
        if "description" in fields:
            options["description"] = self.field(
                self.text, fields["description"].value, f"{path}.description"
            )
        for flag in ("supersede", "repair_thread"):
            if flag in fields:
                options[flag] = bool(self.field(self.flag, fields[flag].value, f"{path}.{flag}"))
        self._on_violation(fields, path, options)
        kind = None
        if kinds:
            kind_name = kinds[0]
            kind = self.field(self._kind, kind_name, fields[kind_name].value, f"{path}.{kind_name}")
        if len(self.problems) > problems_before or name is None or kind is None or match is None:
            raise Invalid
        line, _ = position(node)
        return Policy(name=name, kind=kind, match=match, file=self.file, line=line, **options)

    def _on_violation(self, fields: dict[str, Entry], path: str, options: dict[str, Any]) -> None:
        """on_violation, and the wrap_up it reads, where set and valid."""
        chosen: str | None = "cancel"
        if "on_violation" in fields:
            chosen = self.field(
                self.choice, fields["on_violation"].value, f"{path}.on_violation", ON_VIOLATION
            )
            if chosen is not None:
                options["on_violation"] = chosen
        entry = fields.get("wrap_up")
        if entry is None or chosen is None:  # an invalid on_violation has its problem
            return
        if chosen != "wrap_up":
            self.problem(
                entry.key,
                f"{path}.wrap_up",
                "wrap_up says how a run lands softly, and is read only with "
                "on_violation: wrap_up; expected on_violation: wrap_up beside it",
            )
            return
        wrap_up = self.field(self._wrap_up, entry.value, f"{path}.wrap_up")
        if wrap_up is not None:
            options["wrap_up"] = wrap_up

    def _wrap_up(self, node: Node, path: str) -> WrapUp:
        fields = self.mapping(node, path, WRAP_UP_KEYS, "a mapping of node, message, llm_calls")
        values: dict[str, Any] = {}
        if "node" in fields:
            values["node"] = self.field(
                self.text, fields["node"].value, f"{path}.node", "a node name"
            )
        if "message" in fields:
            values["message"] = self.field(
                self.text, fields["message"].value, f"{path}.message", "a message to the model"
            )
        if "llm_calls" in fields:
            values["llm_calls"] = self.field(
                self.whole, fields["llm_calls"].value, f"{path}.llm_calls"
            )
        if None in values.values():
            raise Invalid
        return WrapUp(**values)

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

    def _match(self, entry: Entry | None, path: str) -> Match:
        if entry is None:
            return Match()
        fields = self.mapping(entry.value, path, MATCH_KEYS, "a mapping of graph, tags, metadata")
        graphs = tags = None
        metadata: dict[str, object] | None = {}
        if "graph" in fields:
            graphs = self.field(
                self.strings, fields["graph"].value, f"{path}.graph", "a graph name glob"
            )
        if "tags" in fields:
            tags = self.field(self.strings, fields["tags"].value, f"{path}.tags", "a tag")
        if "metadata" in fields:
            metadata = self.field(self._metadata, fields["metadata"].value, f"{path}.metadata")
        if (
            ("graph" in fields and graphs is None)
            or ("tags" in fields and tags is None)
            or metadata is None
        ):
            raise Invalid
        return Match(graphs=graphs or (), tags=frozenset(tags or ()), metadata=metadata)

    def _metadata(self, node: Node, path: str) -> dict[str, object]:
        return self.table(node, path, "metadata keys to values", "a string key", self._exact)

    def _exact(self, node: Node, path: str) -> object:
        value = self.scalar(node, path)
        if not isinstance(value, str | int | float | bool):
            self.invalid(
                node,
                path,
                "expected a string, number or boolean to match exactly, got "
                f"{describe(node, value)}",
            )
        return value

    # -- kinds ---------------------------------------------------------------------------

    def _kind(self, kind: str, node: Node, path: str) -> Kind:
        kind_fields = KIND_FIELDS[kind]
        keys = tuple(kind_fields)
        example = f"{{{keys[0]}: ...}}"
        # Problems in the mapping count too: "sets no limit" is noise after a misspelt key.
        before = len(self.problems)
        fields = self.mapping(node, path, keys, f"a mapping of {kind} limits such as {example}")
        values: dict[str, Any] = {}
        for key, entry in fields.items():
            if self.null(entry.value) and kind_fields[key].numeric:
                continue  # null leaves a number unset
            value = self.field(kind_fields[key].read, self, entry.value, f"{path}.{key}")
            if value is not None:
                values[key] = value
        if len(self.problems) > before:
            raise Invalid
        limits = [key for key, field in kind_fields.items() if field.limit]
        if limits and not values.keys() & set(limits):
            self.invalid(
                node, path, f"{kind} sets no limit; expected at least one of {', '.join(limits)}"
            )
        check = _CHECKS.get(kind)
        if check is not None:
            check(self, node, path, fields, values)
        return KINDS[kind](**values)

    def budget_scope(self, node: Node, path: str) -> BudgetScope:
        value = self.text(node, path, "a scope")
        if value not in (*LOCAL_SCOPES, "graph", "global") and not METADATA_SCOPE.fullmatch(value):
            self.invalid(
                node,
                path,
                "expected run, thread, graph, global or metadata.<key> (such as "
                f"metadata.tenant), got {value!r}",
            )
        return BudgetScope(value)

    def window(self, node: Node, path: str) -> Window:
        value = self.text(node, path, "a window")
        found = WINDOW.fullmatch(value)
        if value != "month" and (found is None or int(found[1]) == 0):
            self.invalid(
                node, path, f"expected a window such as 1h, 6h, 1d, 7d or month, got {value!r}"
            )
        return Window(value)

    def time_zone(self, node: Node, path: str) -> TimeZoneName:
        value = self.text(node, path, "a time zone")
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            self.invalid(
                node, path, f"expected an IANA time zone such as Europe/Paris, got {value!r}"
            )
        return TimeZoneName(value)

    def prices(self, node: Node, path: str) -> dict[str, Price]:
        return self.table(node, path, "model name to prices", "a model name", self._price)

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
            key: self.field(self.number, entry.value, f"{path}.{key}", allow_zero=True)
            for key, entry in fields.items()
        }
        input_price, output_price = (amounts.get(key) for key in PRICE_KEYS)
        if input_price is None or output_price is None:
            raise Invalid
        return Price(input_price, output_price)

    def _check_loop(
        self, node: Node, path: str, fields: dict[str, Entry], values: dict[str, Any]
    ) -> None:
        window = Loop(**values).window
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

    def _check_token_budget(
        self, node: Node, path: str, fields: dict[str, Entry], values: dict[str, Any]
    ) -> None:
        if self._check_scope(node, path, fields, values, ("window", "time_zone")):
            for key in ("max_input_tokens", "max_output_tokens"):
                if key in values:
                    self.invalid(
                        fields[key].key,
                        f"{path}.{key}",
                        f"a shared scope ({values['scope']}) keeps max_total_tokens and "
                        "max_cost_usd across pods, not this limit; expected one of those, or "
                        "scope: run or thread",
                    )
            if "max_total_tokens" not in values and "max_cost_usd" not in values:
                self.invalid(
                    node,
                    f"{path}.max_total_tokens",
                    f"a shared scope ({values['scope']}) needs max_total_tokens or max_cost_usd",
                )
            if "window" not in values:
                self.invalid(
                    fields["scope"].key,
                    f"{path}.window",
                    f"a shared scope ({values['scope']}) needs a window; expected window: 1d, "
                    "for instance",
                )
        if "max_cost_usd" in values and "default" not in values.get("prices", {}):
            where = fields["prices"] if "prices" in fields else fields["max_cost_usd"]
            self.invalid(
                where.value if "prices" in fields else where.key,
                f"{path}.prices",
                "max_cost_usd is set but prices has no 'default' entry, so a model missing "
                "from prices would run free; expected a default price "
                "{input_per_mtok: ..., output_per_mtok: ...}",
            )

    def _check_rate(
        self, node: Node, path: str, fields: dict[str, Entry], values: dict[str, Any]
    ) -> None:
        missing = [k for k in ("max_events", "per_seconds", "of") if k not in values]
        if missing:
            self.invalid(
                node,
                f"{path}.{missing[0]}",
                f"missing required key {missing[0]!r}; rate needs max_events, per_seconds and "
                f"of ({', '.join(RATE_OF)})",
            )
        if values.get("scope") == "thread":
            self.invalid(
                fields["scope"].value,
                f"{path}.scope",
                "a rate counts one run, or runs across pods; expected run, graph, global or "
                "metadata.<key>, got 'thread'",
            )
        if self._check_scope(node, path, fields, values, ()) and values["of"] not in SHARED_OF:
            self.invalid(
                fields["of"].value,
                f"{path}.of",
                f"a shared scope ({values['scope']}) counts calls as they start, in Redis, "
                f"off the per-step path; expected of: {', '.join(SHARED_OF)}, got "
                f"{values['of']!r}",
            )

    def _check_scope(
        self,
        node: Node,
        path: str,
        fields: dict[str, Entry],
        values: dict[str, Any],
        settings: tuple[str, ...],
    ) -> bool:
        """Whether the policy is shared across pods; the settings of a shared scope (those
        of every shareable kind, and ``settings`` of this one) are an error without it."""
        if values.get("scope", "run") not in LOCAL_SCOPES:
            if values.get("local_share", 0) > 1:
                self.invalid(
                    fields["local_share"].value,
                    f"{path}.local_share",
                    f"expected a part of the limit between 0 and 1, got {values['local_share']:g}",
                )
            return True
        for key in (*settings, "estimate_tokens", "fail_closed", "local_share"):
            if key in fields:
                self.invalid(
                    fields[key].key,
                    f"{path}.{key}",
                    f"{key} is read only with a shared scope; expected scope: graph, "
                    "global or metadata.<key> beside it",
                )
        return False


SHARED_OF = ("llm_calls", "tool_calls", "tokens")  # what a shared rate can count
KIND_FIELDS = {name: _kind_fields(kind) for name, kind in KINDS.items()}
_CHECKS: dict[str, Callable[[PolicyFileReader, Node, str, dict[str, Entry], dict[str, Any]], None]]
_CHECKS = {
    Loop.name: PolicyFileReader._check_loop,
    TokenBudget.name: PolicyFileReader._check_token_budget,
    Rate.name: PolicyFileReader._check_rate,
}
