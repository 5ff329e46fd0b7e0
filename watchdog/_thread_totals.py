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
"""

from __future__ import annotations

import threading
from typing import Any, cast

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver, CheckpointMetadata, empty_checkpoint

from ._state import RunState, ThreadLedger, ThreadTotals, ThreadView

__all__ = ["Ledgers", "aload", "asave", "load", "save", "used_by"]

NAMESPACE = "__watchdog__"
METADATA_KEY = "watchdog_thread_usage"

Saver = BaseCheckpointSaver[Any]


def _config(thread_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": NAMESPACE}}


def _metadata(usage: ThreadTotals) -> CheckpointMetadata:
    metadata: dict[str, Any] = {"source": "update", "step": -1, "parents": {}}
    metadata[METADATA_KEY] = usage.as_dict()
    return cast(CheckpointMetadata, metadata)


def _add(totals: ThreadTotals, saved: Any) -> ThreadTotals:
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


def used_by(state: RunState) -> ThreadTotals:
    """What one run used, as the record it adds."""
    return ThreadTotals().plus(state)


def load(saver: Saver, thread_id: str) -> ThreadTotals:
    totals = ThreadTotals()
    for saved in saver.list(_config(thread_id)):
        totals = _add(totals, saved)
    return totals


async def aload(saver: Saver, thread_id: str) -> ThreadTotals:
    totals = ThreadTotals()
    async for saved in saver.alist(_config(thread_id)):
        totals = _add(totals, saved)
    return totals


def save(saver: Saver, thread_id: str, usage: ThreadTotals) -> None:
    # A fresh checkpoint id each time: a record of its own, never an overwrite.
    saver.put(_config(thread_id), empty_checkpoint(), _metadata(usage), {})


async def asave(saver: Saver, thread_id: str, usage: ThreadTotals) -> None:
    await saver.aput(_config(thread_id), empty_checkpoint(), _metadata(usage), {})


class Ledgers:
    """The ledgers of the threads that have live runs in this process.

    A run finds its thread's ledger, or loads the records to make one, joins it, and leaves
    it once its own record is saved, so a run starting meanwhile counts it either way.
    """

    def __init__(self) -> None:
        self._ledgers: dict[tuple[int, str], ThreadLedger] = {}  # guarded by _lock
        self._lock = threading.Lock()

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
