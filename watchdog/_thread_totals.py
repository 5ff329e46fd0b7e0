"""Thread totals for ``scope: thread`` limits, kept by the graph's own checkpointer.

They live in a checkpoint namespace of their own on the same thread, so they survive a
restart with a persistent checkpointer, and go when the thread is deleted. LangGraph's
state and history of the thread (namespace "") never see them.
"""

from __future__ import annotations

from typing import Any

from langgraph.checkpoint.base import empty_checkpoint

from ._state import ThreadTotals

__all__ = ["aload", "asave", "load", "save"]

NAMESPACE = "__watchdog__"
METADATA_KEY = "watchdog_thread_totals"


def _config(thread_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": NAMESPACE}}


def _metadata(totals: ThreadTotals) -> dict[str, Any]:
    return {"source": "update", "step": -1, "parents": {}, METADATA_KEY: totals.as_dict()}


def _totals(saved: Any) -> ThreadTotals:
    found = saved.metadata.get(METADATA_KEY) if saved is not None else None
    return ThreadTotals.from_dict(found) if isinstance(found, dict) else ThreadTotals()


def load(checkpointer: Any, thread_id: str) -> ThreadTotals:
    return _totals(checkpointer.get_tuple(_config(thread_id)))


async def aload(checkpointer: Any, thread_id: str) -> ThreadTotals:
    return _totals(await checkpointer.aget_tuple(_config(thread_id)))


def save(checkpointer: Any, thread_id: str, totals: ThreadTotals) -> None:
    checkpointer.put(_config(thread_id), empty_checkpoint(), _metadata(totals), {})


async def asave(checkpointer: Any, thread_id: str, totals: ThreadTotals) -> None:
    await checkpointer.aput(_config(thread_id), empty_checkpoint(), _metadata(totals), {})
