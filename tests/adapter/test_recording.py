"""Recorded runs of real graphs, replayed: the same policies give the live outcome exactly
(policy, kind, step), and a tightened policy changes exactly the runs it should."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage

from tests.graphs import Bodies, endless, hanging, policies, react_agent, scripted, tool_call
from watchdog import RunCancelled, Supervisor, Trace, read_traces, replay
from watchdog._core.replay import changed

# One policy of each kind, each for a graph of its own.
FIVE_KINDS = """
- name: wall
  match: {graph: hangs}
  wall_time: {max_seconds: 0.05}
  grace_seconds: 0.01
- name: steps
  match: {graph: counts}
  step_count: {max_steps: 5}
- name: loops
  match: {graph: repeats}
  loop: {max_repeats: 3}
- name: tokens
  match: {graph: spends}
  token_budget: {max_total_tokens: 500}
- name: calls
  match: {graph: calls}
  rate: {max_events: 2, per_seconds: 60, of: llm_calls}
"""


def searching(calls: int) -> Any:
    return react_agent(scripted(*(tool_call(f"q{i}", f"c{i}") for i in range(calls))))


async def run_all(supervisor: Supervisor) -> list[RunCancelled]:
    """One run of each graph; each is stopped by its own policy."""
    graphs = {
        "hangs": (hanging(), {"count": 0}),
        "counts": (endless(Bodies(), is_async=True), {"count": 0}),
        "repeats": (endless(Bodies(), is_async=True, progress=False), {"count": 0}),
        "spends": (searching(20), {"messages": [("user", "go")]}),
        "calls": (searching(20), {"messages": [("user", "go")]}),
    }
    stopped = []
    for name, (graph, graph_input) in graphs.items():
        app = supervisor.attach(graph, name=name)
        config = {"configurable": {"thread_id": name}}
        with pytest.raises(RunCancelled) as raised:
            await app.ainvoke(graph_input, config)
        stopped.append(raised.value)
    return stopped


def test_replayed_under_the_same_policies_each_kind_stops_where_it_stopped_live(
    tmp_path: Path,
) -> None:
    traces_file = tmp_path / "traces.jsonl"
    supervisor = Supervisor(policies(FIVE_KINDS), record=traces_file)
    live = asyncio.run(run_all(supervisor))
    traces = read_traces(traces_file.read_text(), str(traces_file))
    assert [t.graph for t in traces] == ["hangs", "counts", "repeats", "spends", "calls"]
    verdicts = replay(policies(FIVE_KINDS), traces)
    assert [(v.finding and v.finding.policy, v.finding and v.finding.kind) for v in verdicts] == [
        (c.policy, c.kind) for c in live
    ]
    assert [(v.outcome, v.stop) for v in verdicts] == [
        ("cancelled", (c.policy, c.kind, c.finding.key, c.step)) for c in live
    ]
    assert [t.end for t in traces] == [
        {
            "elapsed_s": t.end["elapsed_s"],
            "outcome": "cancelled",
            "policy": c.policy,
            "kind": c.kind,
            "key": c.finding.key,
            "step": c.step,
        }
        for t, c in zip(traces, live, strict=True)
    ]


def test_under_a_tightened_policy_the_diff_lists_exactly_the_runs_that_change(
    tmp_path: Path,
) -> None:
    traces: list[Trace] = []
    supervisor = Supervisor(policies(FIVE_KINDS), record=traces.append)
    asyncio.run(run_all(supervisor))
    tightened = FIVE_KINDS.replace("max_steps: 5", "max_steps: 3").replace(
        "max_total_tokens: 500", "max_total_tokens: 100"
    )
    old, new = replay(policies(FIVE_KINDS), traces), replay(policies(tightened), traces)
    assert [(a.graph, a.stop, b.stop) for a, b in changed(old, new)] == [
        (
            "counts",
            ("steps", "step_count", "max_steps", 6),
            ("steps", "step_count", "max_steps", 4),
        ),
        (
            "spends",
            ("tokens", "token_budget", "max_total_tokens", old[3].stop[3]),  # type: ignore[index]
            ("tokens", "token_budget", "max_total_tokens", 1),
        ),
    ]


def test_a_trace_holds_no_state_value_message_or_argument(tmp_path: Path) -> None:
    traces: list[Trace] = []
    supervisor = Supervisor(policies(FIVE_KINDS), record=traces.append)
    model = scripted(tool_call("secret query", "c1"), AIMessage("secret answer"))
    app = supervisor.attach(react_agent(model), name="chat")
    app.invoke({"messages": [("user", "secret question")]}, {"metadata": {"tenant": "acme"}})
    (trace,) = traces
    text = trace.to_json()
    assert "secret" not in text
    assert json.loads(text)["metadata"] == {"tenant": "acme"}
    assert [event[1] for event in trace.events] == [
        "node", "llm", "usage", "node_end", "node", "tool", "tool_end", "node_end",
        "node", "llm", "usage", "node_end",
    ]  # fmt: skip
    assert trace.end == {"elapsed_s": trace.end["elapsed_s"], "outcome": "completed"}
    assert Trace.from_json(text) == trace


def test_the_environment_turns_recording_on_and_takes_a_share_of_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def one_run(supervisor: Supervisor) -> None:
        app = supervisor.attach(react_agent(scripted(AIMessage("hello"))), name="chat")
        app.invoke({"messages": [("user", "hi")]})

    monkeypatch.delenv("WATCHDOG_RECORD", raising=False)
    monkeypatch.delenv("WATCHDOG_RECORD_SHARE", raising=False)
    assert Supervisor(policies(FIVE_KINDS)).record_trace is None
    traces = tmp_path / "traces.jsonl"
    monkeypatch.setenv("WATCHDOG_RECORD", str(traces))
    monkeypatch.setenv("WATCHDOG_RECORD_SHARE", "0")
    one_run(Supervisor(policies(FIVE_KINDS)))
    assert not traces.exists()  # recording on, but for no run
    monkeypatch.setenv("WATCHDOG_RECORD_SHARE", "1")
    one_run(Supervisor(policies(FIVE_KINDS)))
    (trace,) = read_traces(traces.read_text(), str(traces))
    assert (trace.graph, trace.end["outcome"]) == ("chat", "completed")
    monkeypatch.setenv("WATCHDOG_RECORD_SHARE", "lots")
    with pytest.raises(ValueError, match="WATCHDOG_RECORD_SHARE must be a part of the runs"):
        Supervisor(policies(FIVE_KINDS))
