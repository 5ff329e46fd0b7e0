"""Fingerprints of node inputs, for loop detection (``max_repeats``).

A print is an int: the hash of the whole input read as a structure, every item of every list,
every key and value of every mapping, every field of a message. Equal inputs give equal
prints; different inputs give different prints but at the odds of a 64-bit hash collision.
Nothing is sampled and no object stands in for its content by its identity: a node that marks
one task of twenty done, or changes a list in place, must never look as if it got the same
input again, or a healthy run would be cancelled as a loop.

What is not understood (an object of another kind) gets a print that equals no other, not
even its own next time: that can only miss a loop, never invent one. So does an input nested
too deep to read, or one that contains itself.

Large inputs stay cheap in two ways. Long containers of plain data (dicts, lists, strings,
numbers) are read by the C pickler, which writes every value exactly, with its type. And a
message, or any pydantic model, keeps its print while it lives, beside a copy of its fields:
the print is reused while the fields still equal the copy, a comparison made in C that sees a
change made in place as well as a new value. A node start in a long conversation so reads
each old message with one comparison.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import fractions
import io
import itertools
import pathlib
import pickle
import struct
import threading
import uuid
import weakref
from collections.abc import Callable, Mapping, Set
from typing import Any

import xxhash
from pydantic import BaseModel

__all__ = ["fingerprint"]

# Immutable types whose hash tells any two different values apart, at hash-collision odds,
# but for "": Python hashes it as 0, as it does 0 and False, so it stands in as EMPTY_TEXT.
SCALARS = frozenset((str, bool, type(None)))
# Python hashes an int modulo 2**61 - 1, and -1 as -2: ints from 0 below that stand for
# themselves. A float is hashed as the fraction it is, modulo the same (1.0000000000000002 as
# 513), so floats are printed by their bits.
SCALARS_AND_INTS = SCALARS | {int}
HASH_MODULUS = 2**61 - 1
IMMUTABLE = SCALARS_AND_INTS | {float, bytes}  # what a copy of a model's fields can share
# Immutable value types, hashed by their value.
VALUES = (
    datetime.date,
    datetime.time,
    datetime.timedelta,
    decimal.Decimal,
    fractions.Fraction,
    uuid.UUID,
    pathlib.PurePath,
    complex,
    range,
)
# A provider's report on an LLM call (request ids, timings, token counts): no node acts on
# it, and it differs from call to call.
REPORT_FIELDS = frozenset(("response_metadata", "usage_metadata"))
MODEL_CACHE_SIZE = 100_000
# Containers at least this long are tried with the C pickler, several times faster than
# reading them here; shorter ones cost less read here than setting the pickler up.
PICKLE_FROM = 8
# What the C pickler writes itself; a container holding anything else is read here.
PLAIN = SCALARS_AND_INTS | {float, bytes, bytearray, dict, list, tuple, set, frozenset}

# Markers that keep prints of different shapes apart: a list is not the dict of its pairs.
SEQUENCE, SET, NUMBER, FLOAT, BYTES, BYTEARRAY, PICKLED, UNIQUE, EMPTY_TEXT = (
    "\0seq",
    "\0set",
    "\0number",
    "\0float",
    "\0bytes",
    "\0bytearray",
    "\0pickle",
    "\0unique",
    "\0empty",
)

Handler = Callable[[Any], Any]
_DOUBLE = struct.Struct("<d").pack
_unique = itertools.count()
_unique_lock = threading.Lock()


def fingerprint(value: Any) -> int:
    """An int that equals another input's print only if the two inputs are equal."""
    try:
        return hash(
            value if type(value) in SCALARS and value != "" else _HANDLERS[type(value)](value)
        )
    except RecursionError:  # nested too deep to read, or it contains itself
        return hash(_never_equal(value))


def _never_equal(_value: object) -> tuple[str, int]:
    with _unique_lock:
        return (UNIQUE, next(_unique))


def _int(value: int) -> object:
    return value if 0 <= value < HASH_MODULUS else (NUMBER, repr(value))


def _float(value: float) -> object:
    return (FLOAT, _DOUBLE(value))


def _hash_apart(kinds: set[type], values: Any) -> bool:
    """Whether values of these kinds can stand for themselves in a print."""
    if not kinds <= SCALARS_AND_INTS or (str in kinds and "" in values):
        return False
    return int not in kinds or all(0 <= v < HASH_MODULUS for v in values if type(v) is int)


def _mapping(value: Mapping[Any, Any]) -> object:
    if len(value) < PICKLE_FROM:
        # A short mapping is read item by item: the sets below cost more than the loop. A
        # node's input is often a short mapping of plain values.
        for key, item in value.items():
            if type(key) not in SCALARS or key == "":
                break
            # Whether the item can stand for itself in a print (see ``_hash_apart``); written
            # out, as this is the hot path of a loop policy.
            kind = type(item)
            if not ((kind in SCALARS and item != "") or (kind is int and 0 <= item < HASH_MODULUS)):
                break
        else:
            return tuple(value.items())
    if not set(map(type, value)) <= SCALARS or "" in value:  # keys to read too
        return _pairs(value)
    kinds = set(map(type, value.values()))
    if _hash_apart(kinds, value.values()):
        return tuple(value.items())  # made in C: the common flat dict
    if len(value) >= PICKLE_FROM and kinds <= PLAIN and (plain := _pickled(value)) is not None:
        return plain
    return tuple(
        [
            (key, item if type(item) in SCALARS and item != "" else _HANDLERS[type(item)](item))
            for key, item in value.items()
        ]
    )


def _pairs(value: Mapping[Any, Any]) -> tuple[Any, ...]:
    return tuple(
        [
            (
                key if type(key) in SCALARS and key != "" else _HANDLERS[type(key)](key),
                item if type(item) in SCALARS and item != "" else _HANDLERS[type(item)](item),
            )
            for key, item in value.items()
        ]
    )


def _sequence(value: Any) -> object:
    kinds = set(map(type, value))
    if _hash_apart(kinds, value):
        return (SEQUENCE, *value)
    if len(value) >= PICKLE_FROM and kinds <= PLAIN and (plain := _pickled(value)) is not None:
        return plain
    return (
        SEQUENCE,
        *[
            item if type(item) in SCALARS and item != "" else _HANDLERS[type(item)](item)
            for item in value
        ],
    )


def _set(value: Set[Any]) -> object:
    if _hash_apart(set(map(type, value)), value):
        return (SET, frozenset(value))  # a frozenset's hash does not depend on order
    return _never_equal(value)  # no order to read it in that equal sets would share


class _Refused(Exception):
    pass


class _PlainPickler(pickle.Pickler):
    """Pickles plain data only. The C pickler writes dicts, lists, tuples, sets, strings,
    numbers, bytes, bytearrays, None and bools itself, each exactly and with its type, and
    asks here about any other object: those are refused, to be read by ``fingerprint``."""

    def reducer_override(self, obj: Any) -> Any:
        raise _Refused


_local = threading.local()


def _pickled(value: Any) -> tuple[str, int] | None:
    """The print of a container of plain data, read in C; None when it holds anything else.

    Equal data that shares an object differently pickles differently: that can only miss a
    loop.
    """
    try:
        pickler, buffer = _local.pickler
    except AttributeError:
        buffer = io.BytesIO()
        pickler = _PlainPickler(buffer, pickle.HIGHEST_PROTOCOL)
        _local.pickler = pickler, buffer
    buffer.seek(0)
    buffer.truncate()
    pickler.clear_memo()
    try:
        pickler.dump(value)
    except (_Refused, RecursionError):
        return None
    with buffer.getbuffer() as data:
        return (PICKLED, xxhash.xxh3_64_intdigest(data))


# id(model) -> (a weak reference to it, a copy of its fields, its print). An entry leaves
# with its model, so the cache keeps nothing alive. No lock: node threads share it, each dict
# operation is atomic, and an entry lost to a race only costs a fingerprint computed again.
_models: dict[int, tuple[weakref.ref[Any], dict[str, Any], int]] = {}


def _model(value: BaseModel) -> object:
    """A pydantic model (a LangChain message, say): its class and its fields."""
    fields = value.__dict__
    key = id(value)
    cached = _models.get(key)
    if cached is not None and cached[0]() is value and cached[1] == fields:
        return cached[2]
    extra = value.__pydantic_extra__
    read = [
        (name, item if type(item) in SCALARS and item != "" else _HANDLERS[type(item)](item))
        for name, item in fields.items()
        if name not in REPORT_FIELDS
    ]
    print_ = hash((type(value), *read, _pairs(extra) if extra else None))
    if not extra:  # extra fields live outside __dict__, where the copy cannot see them
        _remember(key, value, fields, print_)
    return print_


def _remember(key: int, value: BaseModel, fields: dict[str, Any], print_: int) -> None:
    try:
        copy = _copy(fields)
        reference = weakref.ref(value, lambda _: _models.pop(key, None))
    except (_Refused, TypeError):  # a field of another kind, or no weak references
        return
    if len(_models) >= MODEL_CACHE_SIZE:
        _models.clear()
    _models[key] = (reference, copy, print_)


def _copy(value: Any) -> Any:
    """A copy with new containers, so that ``==`` with it sees changes made in place."""
    kind = type(value)
    if kind in IMMUTABLE:
        return value
    if kind is dict:
        return {k: v if type(v) in IMMUTABLE else _copy(v) for k, v in value.items()}
    if kind is list:
        return [v if type(v) in IMMUTABLE else _copy(v) for v in value]
    if kind is tuple:
        return tuple([v if type(v) in IMMUTABLE else _copy(v) for v in value])
    raise _Refused


def _dataclass(value: Any) -> object:
    fields = [getattr(value, f.name) for f in dataclasses.fields(value)]
    return (type(value), _sequence(fields))


def _scalar_subclass(value: Any) -> object:
    """A member of a str or int enum, or another subclass of a scalar type."""
    plain: object
    if isinstance(value, str):
        plain = str(value)
    elif isinstance(value, int):
        plain = int(value)
    elif isinstance(value, float):
        plain = float(value)
    else:
        plain = bytes(value)
    return (
        type(value),
        plain if type(plain) in SCALARS and plain != "" else _HANDLERS[type(plain)](plain),
    )


def _handler_for(kind: type) -> Handler:
    if issubclass(kind, BaseModel):
        return _model
    if issubclass(kind, Mapping):
        return _mapping
    if issubclass(kind, list | tuple):
        return _sequence
    if issubclass(kind, Set):
        return _set
    if issubclass(kind, str | int | float | bytes):
        return _scalar_subclass
    if issubclass(kind, enum.Enum):
        return lambda member: (kind, member.name)  # members are singletons
    if issubclass(kind, VALUES):
        return lambda value: (kind, value)
    if dataclasses.is_dataclass(kind):
        return _dataclass
    return _never_equal


class _Handlers(dict[type, Handler]):
    """How to read each type, found on first sight and kept."""

    def __missing__(self, kind: type) -> Handler:
        handler = self[kind] = _handler_for(kind)
        return handler


_HANDLERS = _Handlers(
    {
        dict: _mapping,
        list: _sequence,
        tuple: _sequence,
        int: _int,
        float: _float,
        # The hash of bytes is that of the str of the same characters.
        str: lambda value: EMPTY_TEXT,  # comes here only when it is ""
        bytes: lambda value: (BYTES, value),
        bytearray: lambda value: (BYTEARRAY, bytes(value)),  # what it holds now
    }
)
