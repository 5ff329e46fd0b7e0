"""Thread repair: a cancelled run leaves no tool call of its thread without a result.

Providers refuse a conversation in which a tool call of an assistant message has no tool
message answering it (OpenAI and Anthropic answer 400), so a run cancelled while its tools ran
would break every later turn of its thread. After such a run, the thread's tool calls that
have no result get one: the result of a tool that finished before the cancel (LangGraph keeps
it only as a pending write of the interrupted step, which the thread's next input drops), or
a ``ToolMessage`` with ``status="error"`` saying the call was cancelled and why.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, RemoveMessage, ToolMessage
from langchain_core.messages.tool import ToolCall
from langgraph.channels import BinaryOperatorAggregate
from langgraph.graph.message import REMOVE_ALL_MESSAGES
from langgraph.pregel import Pregel
from langgraph.types import StateSnapshot

__all__ = ["ThreadRepair", "cancelled_result", "messages_channel", "repair"]


def messages_channel(graph: Pregel[Any, Any, Any, Any]) -> str | None:
    """The channel a graph keeps its conversation in: one that ``add_messages`` reduces
    (``MessagesState``, ``create_agent``); ``messages`` when there are several."""
    found = [
        name
        for name, channel in graph.channels.items()
        if isinstance(channel, BinaryOperatorAggregate) and _adds_messages(channel.operator)
    ]
    return "messages" if "messages" in found else next(iter(found), None)


def _adds_messages(reducer: object) -> bool:
    # add_messages is a function made by a decorator: known by where it was made.
    return getattr(reducer, "__module__", None) == "langgraph.graph.message" and getattr(
        reducer, "__name__", None
    ) in {"add_messages", "_add_messages"}


@dataclass(frozen=True, slots=True)
class ThreadRepair:
    """What to write to a thread's messages channel, and as which node."""

    messages: list[BaseMessage]
    as_node: str | None
    cancelled: int  # tool calls answered as cancelled
    recovered: int  # results of tools that finished before the cancel, written again


def cancelled_result(call: ToolCall, reason: str) -> ToolMessage:
    """The result a tool call gets when its run was cancelled before it answered."""
    return ToolMessage(
        f"Tool call cancelled: {reason} Its result is not available.",
        tool_call_id=call["id"],
        name=call["name"],
        status="error",
    )


def repair(snapshot: StateSnapshot, channel: str, reason: str) -> ThreadRepair | None:
    """The update that answers every tool call in ``snapshot``'s messages, or None when each
    already has its result."""
    messages = _messages(snapshot.values, channel)
    if not messages:
        return None
    finished = _finished_results(snapshot.tasks, channel)
    repaired: list[BaseMessage] = []
    written: list[BaseMessage] = []  # what the update adds, for a repair at the end
    cancelled = recovered = 0
    at, end = 0, len(messages)
    in_the_middle = False
    while at < end:
        message = messages[at]
        repaired.append(message)
        at += 1
        if not isinstance(message, AIMessage) or not message.tool_calls:
            continue
        answered = set()
        while at < end and isinstance(messages[at], ToolMessage):
            answered.add(messages[at].tool_call_id)
            repaired.append(messages[at])
            at += 1
        for call in message.tool_calls:
            call_id = call["id"]
            if call_id is None:
                continue
            result = finished.get(call_id)
            if result is not None:
                # Shown in the snapshot or not, it is only a pending write: written again.
                written.append(result)
                recovered += 1
            elif call_id not in answered:
                result = cancelled_result(call, reason)
                written.append(result)
                cancelled += 1
            if result is not None and call_id not in answered:
                repaired.append(result)
                in_the_middle = in_the_middle or at < end
    if not (cancelled or recovered):
        return None
    if in_the_middle:
        # add_messages appends what it has not seen: a result must follow its call, so the
        # whole conversation is written again, in order.
        written = [RemoveMessage(id=REMOVE_ALL_MESSAGES), *repaired]
    return ThreadRepair(written, _writer(snapshot.tasks), cancelled, recovered)


def _messages(values: Any, channel: str) -> Sequence[Any]:
    found = values.get(channel) if isinstance(values, Mapping) else getattr(values, channel, None)
    return found if isinstance(found, Sequence) else ()


def _finished_results(tasks: Iterable[Any], channel: str) -> dict[str, ToolMessage]:
    """The tool messages the step's finished tasks wrote, by tool call."""
    results: dict[str, ToolMessage] = {}
    for task in tasks:
        if not isinstance(task.result, Mapping):
            continue
        written = task.result.get(channel)
        for message in written if isinstance(written, list) else [written]:
            if isinstance(message, ToolMessage):
                results[message.tool_call_id] = message
    return results


def _writer(tasks: Sequence[Any]) -> str | None:
    """The node the update is written as: the one whose task the cancel interrupted (the
    node that runs the tools), so the thread goes on from there as after any tool step."""
    unfinished = [task.name for task in tasks if task.result is None]
    return next(iter(unfinished or [task.name for task in tasks]), None)
