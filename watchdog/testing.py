"""Helpers for testing code that uses the watchdog; users get them too."""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatResult

from ._core.state import RunState
from ._sinks import events as _events

__all__ = [
    "FakeChatModel",
    "FakeClock",
    "capture_cancellations",
    "capture_events",
    "dangling_tool_calls",
    "make_run_state",
    "reset",
]


class FakeClock:
    """A clock that moves only when told to; pass it as ``clock=`` wherever one is taken."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def make_run_state(
    *,
    elapsed: float = 0.0,
    idle: float = 0.0,
    steps: int = 0,
    node_runs: int = 0,
    llm_calls: int = 0,
    tool_calls: int = 0,
    input_tokens: int = 0,
    output_tokens: int = 0,
    open_nodes: dict[Hashable, tuple[str, float]] | None = None,
) -> RunState:
    """A run state as it stands ``elapsed`` seconds into a run, built directly.

    ``open_nodes`` maps a key to (node name, seconds the node has been running).
    """
    state = RunState(started_at=0.0)
    state.now = elapsed
    state.last_progress = elapsed - idle
    state.steps = steps
    state.node_runs = node_runs
    state.llm_calls = llm_calls
    state.tool_calls = tool_calls
    state.input_tokens = input_tokens
    state.output_tokens = output_tokens
    state.total_tokens = input_tokens + output_tokens
    for key, (name, running) in (open_nodes or {}).items():
        state.open_nodes[key] = (name, elapsed - running)
    return state


class FakeChatModel(FakeMessagesListChatModel):
    """A chat model that answers from a script, reports token usage, and needs no network.

    It cycles through ``responses`` (AI messages, tool calls included) and gives every answer
    ``usage_metadata`` (``input_tokens``/``output_tokens`` per call unless the scripted
    message has its own), so token budgets see real numbers. ``bind_tools`` returns the
    model itself: the script already says which tools to call.
    """

    model_name: str = "fake-model"
    input_tokens: int = 100
    output_tokens: int = 20
    # Like real providers (OpenAI and Anthropic answer 400), refuse a conversation in which
    # a tool call has no tool message answering it right after its assistant message.
    rejects_dangling_tool_calls: bool = False

    def bind_tools(self, tools: Any, **kwargs: Any) -> FakeChatModel:
        return self

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.rejects_dangling_tool_calls and (dangling := dangling_tool_calls(messages)):
            msg = (
                "400 Bad Request: an assistant message with 'tool_calls' must be followed "
                f"by tool messages responding to each 'tool_call_id'; missing: {dangling}"
            )
            raise ValueError(msg)
        scripted = super()._generate(messages, stop, run_manager, **kwargs).generations[0].message
        # A fresh copy each time: add_messages gives each message an id, in place.
        answer = scripted.model_copy(update={"id": None}, deep=True)
        if isinstance(answer, AIMessage) and answer.usage_metadata is None:
            answer.usage_metadata = UsageMetadata(
                input_tokens=self.input_tokens,
                output_tokens=self.output_tokens,
                total_tokens=self.input_tokens + self.output_tokens,
            )
        return ChatResult(generations=[ChatGeneration(message=answer)])


def dangling_tool_calls(messages: Sequence[BaseMessage]) -> list[str]:
    """The ids of the tool calls in ``messages`` that no tool message answers right after
    their assistant message (the ones a provider refuses)."""
    dangling: list[str] = []
    for at, message in enumerate(messages):
        if not isinstance(message, AIMessage) or not message.tool_calls:
            continue
        answered = set()
        for later in messages[at + 1 :]:
            if not isinstance(later, ToolMessage):
                break
            answered.add(later.tool_call_id)
        dangling += [c["id"] for c in message.tool_calls if c["id"] and c["id"] not in answered]
    return dangling


@contextmanager
def capture_events() -> Iterator[list[dict[str, Any]]]:
    """Collect every watchdog event emitted inside the block, as flat dicts."""
    events: list[dict[str, Any]] = []
    _events.add_listener(events.append)
    try:
        yield events
    finally:
        _events.remove_listener(events.append)


@contextmanager
def capture_cancellations() -> Iterator[list[dict[str, Any]]]:
    """Collect the ``watchdog.run_cancelled`` events emitted inside the block."""
    cancellations: list[dict[str, Any]] = []

    def keep(event: dict[str, Any]) -> None:
        if event["event"] == "watchdog.run_cancelled":
            cancellations.append(event)

    _events.add_listener(keep)
    try:
        yield cancellations
    finally:
        _events.remove_listener(keep)


def reset() -> None:
    """Forget the watchdog's global state (event listeners, the fallback logger)."""
    _events.reset()
