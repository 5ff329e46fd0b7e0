"""Cheap fingerprints of node inputs, for loop detection.

Equal inputs must give equal prints, and a print must never call two different inputs equal
where it can tell them apart cheaply: a false "same input" would cancel a healthy run. So
whatever is not understood, or lies too deep, is fingerprinted by identity, which can only
miss a loop, never invent one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping
from typing import Any, cast

from langchain_core.messages import BaseMessage

__all__ = ["fingerprint"]

MAX_DEPTH = 4
SHORT_SEQUENCE = 16
SCALARS = (str, int, float, bool, bytes, type(None))
SCALAR_TYPES = frozenset(SCALARS)  # exact types: a cheaper test than isinstance


def fingerprint(value: Any, depth: int = 0) -> Hashable:
    kind = type(value)
    if kind in SCALAR_TYPES:
        return cast(Hashable, value)  # str caches its hash, so long texts cost one pass, once
    if depth >= MAX_DEPTH:
        return ("id", id(value))
    depth += 1
    # Node inputs are state dicts, fingerprinted at every node start: the cheap test first.
    if kind is dict or isinstance(value, Mapping):
        return tuple(
            [
                (key, item if type(item) in SCALAR_TYPES else fingerprint(item, depth))
                for key, item in value.items()
            ]
        )
    if isinstance(value, BaseMessage):  # before the generic tests: histories are long
        calls = value.__dict__.get("tool_calls") or ()  # pydantic's missing-field path is slow
        return (value.type, value.id, fingerprint(value.content, depth), fingerprint(calls, depth))
    if isinstance(value, list | tuple):
        if len(value) <= SHORT_SEQUENCE:
            return tuple([fingerprint(item, depth) for item in value])
        # Long lists are message histories in practice: they grow at the end.
        middle = value[len(value) // 2]
        ends = (value[0], middle, value[-2], value[-1])
        return (len(value), *(fingerprint(item, depth) for item in ends))
    if isinstance(value, SCALARS):  # subclasses: enums, named constants
        return cast(Hashable, value)
    message_id = getattr(value, "id", None)
    content = getattr(value, "content", None)
    if content is not None and hasattr(value, "type"):  # a message of another kind
        calls = getattr(value, "tool_calls", None) or ()
        return (value.type, message_id, fingerprint(content, depth), fingerprint(calls, depth))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return (type(value).__name__, fingerprint(fields, depth))
    model_fields = getattr(type(value), "model_fields", None)
    if isinstance(model_fields, dict):  # pydantic
        return (type(value).__name__, fingerprint(vars(value), depth))
    try:
        hash(value)
    except TypeError:
        return ("id", id(value))
    return cast(Hashable, value)
