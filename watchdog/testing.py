"""Helpers for testing code that uses the watchdog; users get them too."""

from __future__ import annotations

from collections.abc import Hashable

from ._state import RunState

__all__ = ["FakeClock", "make_run_state"]


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
