"""Thread totals for ``scope: thread`` limits: kept by the graph's own checkpointer, and
shared live between the runs of a thread in one process.

Each run that ends adds a record of what it used to a checkpoint namespace of its own on
the thread; a thread's totals are the sum of its records. Records are only ever added, so
runs that overlap, in one process or in processes sharing one checkpointer, never overwrite
each other's use. They survive a restart with a persistent checkpointer and go when the
thread is deleted; LangGraph's state and history of the thread (namespace "") never see
them.

While runs of a thread are live in one process they share one ``ThreadLedger``: what ended
runs used plus what the live ones use so far, so a thread's limit holds across concurrent
runs, each checking at its own events (at most one step over per run live at once). Runs
in other processes count once they have ended: a ledger reads the records when it is made.

A reset is a record too, a marker: a thread's totals are the sum of its records newer than
its last reset (checkpoint ids order in time), so a reset in one process holds for all.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from typing import Any, cast

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    CheckpointMetadata,
    CheckpointTuple,
    empty_checkpoint,
)

from .._core.state import RunState, ThreadLedger, ThreadTotals, ThreadView

__all__ = ["Ledgers", "aload", "areset", "asave", "load", "reset", "save", "used_by"]

NAMESPACE = "__watchdog__"
METADATA_KEY = "watchdog_thread_usage"
RESET_KEY = "watchdog_thread_reset"

Saver = BaseCheckpointSaver[Any]


def _config(thread_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": NAMESPACE}}


def _metadata(record: dict[str, Any]) -> CheckpointMetadata:
    metadata: dict[str, Any] = {"source": "update", "step": -1, "parents": {}}
    metadata.update(record)
    return cast(CheckpointMetadata, metadata)


def _add(totals: ThreadTotals, saved: CheckpointTuple) -> ThreadTotals:
    record = saved.metadata.get(METADATA_KEY)
    if not isinstance(record, dict):
        return totals
    usage = ThreadTotals.from_dict(record)
    total = ThreadTotals()
    for name in ("steps", "node_runs", "input_tokens", "output_tokens", "total_tokens"):
        setattr(total, name, getattr(totals, name) + getattr(usage, name))
    total.cost_usd = dict(totals.cost_usd)
    for key, cost in usage.cost_usd.items():
        total.cost_usd[key] = total.cost_usd.get(key, 0.0) + cost
    return total


def _since_reset(records: Iterable[CheckpointTuple]) -> ThreadTotals:
    """The sum of the records newer than the last reset among them."""
    records = list(records)

    def checkpoint_id(saved: CheckpointTuple) -> str:
        return str(saved.config["configurable"]["checkpoint_id"])

    last_reset = max((checkpoint_id(r) for r in records if r.metadata.get(RESET_KEY)), default="")
    totals = ThreadTotals()
    for saved in records:
        if checkpoint_id(saved) > last_reset:
            totals = _add(totals, saved)
    return totals


def used_by(state: RunState) -> ThreadTotals:
    """What one run used, as the record it adds."""
    return ThreadTotals().plus(state)


def load(saver: Saver, thread_id: str) -> ThreadTotals:
    return _since_reset(saver.list(_config(thread_id)))


async def aload(saver: Saver, thread_id: str) -> ThreadTotals:
    return _since_reset([saved async for saved in saver.alist(_config(thread_id))])


def save(saver: Saver, thread_id: str, usage: ThreadTotals) -> None:
    # A fresh checkpoint id each time: a record of its own, never an overwrite.
    saver.put(_config(thread_id), empty_checkpoint(), _metadata(_usage(usage)), {})


async def asave(saver: Saver, thread_id: str, usage: ThreadTotals) -> None:
    await saver.aput(_config(thread_id), empty_checkpoint(), _metadata(_usage(usage)), {})


def _usage(usage: ThreadTotals) -> dict[str, Any]:
    return {METADATA_KEY: usage.as_dict()}


def reset(saver: Saver, thread_id: str) -> bool:
    """Add a reset marker to a thread that has records; whether it had any."""
    if saver.get_tuple(_config(thread_id)) is None:
        return False
    saver.put(_config(thread_id), empty_checkpoint(), _metadata({RESET_KEY: True}), {})
    return True


async def areset(saver: Saver, thread_id: str) -> bool:
    if await saver.aget_tuple(_config(thread_id)) is None:
        return False
    await saver.aput(_config(thread_id), empty_checkpoint(), _metadata({RESET_KEY: True}), {})
    return True


class Ledgers:
    """The ledgers of the threads that have live runs in this process.

    A run finds its thread's ledger, or loads the records to make one, joins it, and leaves
    it once its own record is saved, so a run starting meanwhile counts it either way.
    """

    def __init__(self) -> None:
        self._ledgers: dict[tuple[int, str], ThreadLedger] = {}  # guarded by _lock
        # Every checkpointer seen, attached or lent to a run: where a reset must go. A server
        # may lend each run a fresh one over one store (the Agent Server does): the last one
        # used is kept, so a reset between runs still reaches that store.
        self._savers: weakref.WeakSet[Saver] = weakref.WeakSet()  # guarded by _lock
        self._last_used: Saver | None = None  # guarded by _lock
        self._lock = threading.Lock()

    def note(self, saver: Saver) -> None:
        with self._lock:
            self._savers.add(saver)

    def savers(self) -> list[Saver]:
        with self._lock:
            return list(self._savers)

    def has(self, saver: Saver, thread_id: str) -> bool:
        """Whether a run of this thread is live here: a new one then needs no load."""
        return (id(saver), thread_id) in self._ledgers

    def join(
        self, saver: Saver, thread_id: str, loaded: ThreadTotals | None, state: RunState
    ) -> None:
        """``state``'s run counts on its thread's ledger from now on; ``loaded`` is what the
        thread's records say, needed when no run of it is live."""
        key = (id(saver), thread_id)
        with self._lock:
            self._savers.add(saver)
            self._last_used = saver
            ledger = self._ledgers.get(key)
            if ledger is None:
                ledger = self._ledgers[key] = ThreadLedger(loaded or ThreadTotals())
            base, live = ledger.now
            ledger.now = (base, (*live, state))
        state.thread = ThreadView(ledger, state)

    def leave(self, saver: Saver, thread_id: str, state: RunState) -> None:
        """The run has ended and saved its record."""
        key = (id(saver), thread_id)
        with self._lock:
            ledger = self._ledgers.get(key)
            if ledger is None:
                return
            base, live = ledger.now
            if state not in live:
                return
            live = tuple(s for s in live if s is not state)
            ledger.now = (base.plus(state), live)
            if not live:
                del self._ledgers[key]

    def reset(self, saver: Saver, thread_id: str) -> None:
        """The thread's totals start again from zero; its live runs count in full, as their
        records, saved after the reset marker, will."""
        with self._lock:
            ledger = self._ledgers.get((id(saver), thread_id))
            if ledger is not None:
                ledger.now = (ThreadTotals(), ledger.now[1])
