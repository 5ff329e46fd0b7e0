"""``watchdog demo``: runaway agents, supervised, side by side with one that behaves.

Everything is local: the chat model is fake (it reports token usage like a real one), the
graphs are real compiled LangGraph graphs, and so are the watchdog's policies, events and
metrics.
"""

from __future__ import annotations

import asyncio
import operator
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Annotated, Any, ClassVar, TextIO, TypedDict

import structlog
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode, tools_condition
from prometheus_client import CollectorRegistry

from .._adapter.supervisor import Supervisor
from .._core.errors import RunCancelled
from .._core.policies import Policy, PolicySet
from .._files.loading import load_policy_text
from ..testing import FakeChatModel

__all__ = ["run_demo"]

# Each runaway is scoped to the policy meant for it; a wall-time backstop covers them all.
DEMO_POLICIES = """\
version: 1
defaults: {grace_seconds: 0.2, warn_at: null}
policies:
  - name: backstop
    description: No demo run may take more than five seconds.
    wall_time: {max_seconds: 5}
  - name: steps
    match: {graph: [endless-loop]}
    step_count: {max_steps: 25}
  - name: tool-loop
    match: {graph: [same-tool-forever]}
    loop: {max_tool_repeats: 3}
  - name: tokens
    match: {graph: [token-hungry]}
    token_budget:
      max_total_tokens: 100000
      max_cost_usd: 1.0
      prices: {default: {input_per_mtok: 2.5, output_per_mtok: 10}}
  - name: llm-burst
    match: {graph: [llm-burst]}
    rate: {max_events: 10, per_seconds: 1, of: llm_calls}
  - name: hung-tool
    match: {graph: [hung-tool]}
    wall_time: {node_seconds: 0.5}
  - name: cycles
    match: {graph: [subgraph-loop]}
    loop: {max_cycle_repeats: 5}
  - name: research-budget
    match: {graph: [soft-landing]}
    on_violation: wrap_up
    token_budget: {max_total_tokens: 2500}
  - name: default-budget
    match: {graph: [good-agent]}
    token_budget: {max_total_tokens: 20000}
"""


class Counter(TypedDict):
    count: int


class Chat(TypedDict):
    messages: Annotated[list[BaseMessage], add_messages]


class Notes(TypedDict):
    notes: Annotated[list[str], operator.add]


@tool
async def search(query: str) -> str:
    """Search the knowledge base."""
    return f"3 results for {query!r}"


@tool
async def fetch_report(report_id: str) -> str:
    """Fetch a report from a slow upstream service."""
    await asyncio.Event().wait()  # the upstream never answers
    return "unreachable"


def _call(query: str, call_id: str, name: str = "search") -> AIMessage:
    args = {"report_id": query} if name == "fetch_report" else {"query": query}
    return AIMessage("", tool_calls=[{"name": name, "args": args, "id": call_id}])


def _react(model: FakeChatModel, tools: list[Any]) -> Any:
    async def agent(state: Chat) -> dict[str, list[BaseMessage]]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    builder = StateGraph(Chat)
    builder.add_node("agent", agent)
    builder.add_node("tools", ToolNode(tools))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=InMemorySaver())


def endless_loop() -> Any:
    """The loop of the cancel-concept notes: ``work`` routes back to itself forever."""

    async def long_task(state: Counter) -> dict[str, int]:
        await asyncio.sleep(0.005)  # a slow tool or LLM
        return {"count": state["count"] + 1}

    def router(state: Counter) -> str:
        return END if state["count"] >= 100_000 else "work"  # intentionally unreachable

    builder = StateGraph(Counter)
    builder.add_node("work", long_task)
    builder.set_entry_point("work")
    builder.add_conditional_edges("work", router, {"work": "work", END: END})
    return builder.compile(checkpointer=InMemorySaver())


def same_tool_forever() -> Any:
    return _react(FakeChatModel(responses=[_call("order 1234 status", "c1")]), [search])


def token_hungry() -> Any:
    """Each turn re-reads a long document: 30,000 tokens a call."""
    model = FakeChatModel(
        responses=[_call(f"section {i}", f"c{i}") for i in range(50)],
        input_tokens=28_000,
        output_tokens=2_000,
    )
    return _react(model, [search])


def llm_burst() -> Any:
    """A node that fires LLM calls as fast as it can."""
    model = FakeChatModel(responses=[AIMessage("ok")], input_tokens=50, output_tokens=5)

    async def spam(state: Counter) -> dict[str, int]:
        for _ in range(100):
            await model.ainvoke("classify this")
        return {"count": state["count"] + 1}

    builder = StateGraph(Counter)
    builder.add_node("classify", spam)
    builder.add_edge(START, "classify")
    builder.add_edge("classify", END)
    return builder.compile(checkpointer=InMemorySaver())


def hung_tool() -> Any:
    return _react(
        FakeChatModel(responses=[_call("Q3-revenue", "c1", "fetch_report")]), [fetch_report]
    )


def subgraph_loop() -> Any:
    """A research subgraph that plans and critiques forever, its notes always new."""

    def plan(state: Notes) -> dict[str, list[str]]:
        return {"notes": [f"plan {len(state['notes'])}"]}

    def critique(state: Notes) -> dict[str, list[str]]:
        return {"notes": [f"critique {len(state['notes'])}"]}

    inner = StateGraph(Notes)
    inner.add_node("plan", plan)
    inner.add_node("critique", critique)
    inner.add_edge(START, "plan")
    inner.add_edge("plan", "critique")
    inner.add_conditional_edges("critique", lambda s: "plan")
    builder = StateGraph(Notes)
    builder.add_node("intake", lambda state: {"notes": ["question"]})
    builder.add_node("research", inner.compile())
    builder.add_edge(START, "intake")
    builder.add_edge("intake", "research")
    builder.add_edge("research", END)
    return builder.compile(checkpointer=InMemorySaver())


def soft_landing() -> Any:
    """A research agent that would search on and on; 1,000 tokens a model call."""
    model = FakeChatModel(
        responses=[
            _call("battery recycling rates", "c1"),
            _call("lithium recovery costs", "c2"),
            _call("recycling plants in Europe", "c3"),
            AIMessage(
                "From the two sources I read: about 5% of lithium batteries are recycled, and "
                "recovery costs are falling. This answer may be incomplete."
            ),
        ],
        input_tokens=800,
        output_tokens=200,
    )
    return _react(model, [search])


def good_agent() -> Any:
    model = FakeChatModel(
        responses=[
            _call("refund policy", "c1"),
            _call("order 1234", "c2"),
            _call("shipping times", "c3"),
            AIMessage("Your refund for order 1234 was issued; expect it in 3-5 days."),
        ]
    )
    return _react(model, [search])


@dataclass(frozen=True)
class Expected:
    """What a scenario should show; None leaves that detail unjudged."""

    policy: str | None  # None: the run must complete
    node: str | None = None  # the node the policy stopped
    phase: str | None = None  # drained or hard
    lands: bool = False  # the policy lands the run softly (on_violation: wrap_up)

    def __str__(self) -> str:
        if self.policy is None:
            return "completes"
        if self.lands:
            return f"landed softly by {self.policy}"
        at = f" at node '{self.node}'" if self.node else ""
        return f"stopped by {self.policy}{at}" + (f" ({self.phase})" if self.phase else "")


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    build: Callable[[], Any]
    graph_input: Any
    expected: Expected


SCENARIOS = [
    Scenario(
        "endless-loop",
        "a node that routes to itself forever",
        endless_loop,
        {"count": 0},
        Expected("steps"),
    ),
    Scenario(
        "same-tool-forever",
        "a ReAct agent calling one tool with the same arguments",
        same_tool_forever,
        {"messages": [("user", "where is my order?")]},
        Expected("tool-loop"),
    ),
    Scenario(
        "token-hungry",
        "an agent that re-reads a long document every turn",
        token_hungry,
        {"messages": [("user", "summarise the annual report")]},
        Expected("tokens"),
    ),
    Scenario(
        "llm-burst",
        "a node firing LLM calls as fast as it can",
        llm_burst,
        {"count": 0},
        Expected("llm-burst"),
    ),
    Scenario(
        "hung-tool",
        "a tool waiting on an upstream that never answers",
        hung_tool,
        {"messages": [("user", "get the Q3 report")]},
        # Only the tool hangs: the hung node must be 'tools', and only a hard cancel frees it.
        Expected("hung-tool", node="tools", phase="hard"),
    ),
    Scenario(
        "subgraph-loop",
        "a plan/critique cycle inside a subgraph",
        subgraph_loop,
        {"notes": []},
        Expected("cycles"),
    ),
    Scenario(
        "soft-landing",
        "a research agent past its token budget, told to answer with what it has",
        soft_landing,
        {"messages": [("user", "how much of a battery gets recycled?")]},
        Expected("research-budget", lands=True),
    ),
    Scenario(
        "good-agent",
        "a support agent that answers in three tool calls",
        good_agent,
        {"messages": [("user", "I want a refund")]},
        Expected(None),
    ),
]

LANDED = (
    "at its limit the run drained, then was resumed once more to answer with what it had "
    "(on_violation: wrap_up)"
)
PHASES = {
    "drained": "the run stopped at its next step boundary; its last step is checkpointed",
    "hard": "a node still ran grace_seconds after the stop, so its task was cancelled",
}


@dataclass
class Outcome:
    scenario: Scenario
    outcome: str = "running"
    policy: str = ""
    node: str = ""
    reason: str = ""
    phase: str = ""
    steps: int = 0
    tokens: int = 0
    elapsed: float = 0.0

    def __str__(self) -> str:
        if self.outcome == "landed":
            return f"landed softly by {self.policy}"
        if self.outcome != "cancelled":
            return self.outcome
        at = f" at node '{self.node}'" if self.node else ""
        return f"stopped by {self.policy}{at} ({self.phase})"

    @property
    def mismatch(self) -> str | None:
        """How this run differs from what its scenario should show; None when it does not."""
        expected = self.scenario.expected
        if expected.policy is None:
            return None if self.outcome == "completed" else f"expected it to complete, got {self}"
        if expected.lands:
            landed = self.outcome == "landed" and self.policy == expected.policy
            return None if landed else f"expected it {expected}, got {self}"
        if (
            self.outcome != "cancelled"
            or self.policy != expected.policy
            or expected.node not in (None, self.node)
            or expected.phase not in (None, self.phase)
        ):
            return f"expected {expected}, got {self}"
        return None


class Style:
    """ANSI colour on a terminal; plain text when piped or when ``NO_COLOR`` is set."""

    CODES: ClassVar[dict[str, str]] = {"bold": "1", "dim": "2", "red": "31", "green": "32"}
    CODES |= {"yellow": "33"}

    def __init__(self, stream: TextIO) -> None:
        # no-color.org: any non-empty NO_COLOR turns colour off.
        self.enabled = stream.isatty() and not os.environ.get("NO_COLOR")

    def __call__(self, text: str, style: str) -> str:
        return f"\x1b[{self.CODES[style]}m{text}\x1b[0m" if self.enabled else text


def _configure_logging(as_json: bool, out: TextIO) -> None:
    if as_json:
        structlog.configure(
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.JSONRenderer(),
            ],
            logger_factory=structlog.PrintLoggerFactory(out),
        )
    else:
        # The demo prints its own progress; the events are there with --json.
        structlog.configure(processors=[_drop], logger_factory=structlog.PrintLoggerFactory(out))


def _drop(logger: Any, method: str, event: Any) -> Any:
    raise structlog.DropEvent


def _limits(policy: Policy) -> str:
    """A policy's limits as they are written in its file, e.g. ``max_steps: 25``."""
    kind = policy.kind
    written = []
    for spec in fields(kind):
        value = getattr(kind, spec.name)
        if spec.init and spec.name != "prices" and value not in (None, spec.default):
            written.append(
                f"{spec.name}: {value:g}" if isinstance(value, float) else f"{spec.name}: {value}"
            )
    return ", ".join(written)


def _policy_lines(policies: PolicySet) -> list[str]:
    rows = [
        (p.name, p.kind.name, _limits(p), ", ".join(p.match.graphs) or "every graph")
        for p in policies.policies
    ]
    return _columns(("policy", "kind", "limits", "applies to"), rows)


def _columns(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return [line(header), line(tuple("-" * w for w in widths)), *(line(r) for r in rows)]


async def _run_all(supervisor: Supervisor, outcomes: list[Outcome], report: Reporter) -> None:
    by_run: dict[str, Outcome] = {}

    def listen(event: dict[str, Any]) -> None:
        outcome = by_run.get(event.get("run_id", ""))
        if outcome is None:
            return
        if event["event"] == "watchdog.run_cancelled":
            outcome.node = event["node"] or ""
        elif event["event"] == "watchdog.landed_softly":
            outcome.outcome, outcome.policy = "landed", event["policy"]
            outcome.reason = event["reason"]
        elif event["event"] == "watchdog.run_finished":
            outcome.steps, outcome.tokens = event["steps"], event["tokens"]

    supervisor.add_listener(listen)

    async def one(outcome: Outcome) -> None:
        scenario = outcome.scenario
        app = supervisor.attach(scenario.build(), name=scenario.name)
        run_id = uuid.uuid4()
        by_run[str(run_id)] = outcome
        config = {"run_id": run_id, "configurable": {"thread_id": scenario.name}}
        started = time.monotonic()
        try:
            await app.ainvoke(scenario.graph_input, config)
            if outcome.outcome != "landed":
                outcome.outcome = "completed"
        except RunCancelled as cancelled:
            outcome.outcome = "cancelled"
            outcome.policy = cancelled.policy or cancelled.kind
            outcome.reason = cancelled.reason
            outcome.phase = cancelled.phase
        except Exception as error:
            outcome.outcome = "failed"
            outcome.reason = f"{type(error).__name__}: {error}"
        outcome.elapsed = time.monotonic() - started
        report.ended(outcome)

    try:
        await asyncio.gather(*(one(o) for o in outcomes))
    finally:
        supervisor.remove_listener(listen)


@dataclass
class Reporter:
    """The demo's story, for a person: on standard output, or standard error with --json."""

    stream: TextIO

    def __post_init__(self) -> None:
        self.style = Style(self.stream)

    def say(self, text: str = "") -> None:
        print(text, file=self.stream, flush=True)

    def heading(self, text: str) -> None:
        self.say(self.style(text, "bold"))

    def ended(self, outcome: Outcome) -> None:
        mismatch = outcome.mismatch
        verdict = self.style("PASS", "green") if mismatch is None else self.style("FAIL", "red")
        name = outcome.scenario.name.ljust(18)
        if outcome.outcome in ("cancelled", "landed"):
            self.say(f"  {verdict}  {name} {outcome} after {outcome.elapsed:.2f} s")
        else:
            self.say(f"  {verdict}  {name} {outcome.outcome} in {outcome.elapsed:.2f} s")
        indent = " " * 10
        if outcome.reason:
            self.say(indent + self.style(outcome.reason, "dim"))
        if mismatch is not None:
            self.say(indent + self.style(mismatch, "red"))

    def table(self, outcomes: list[Outcome]) -> None:
        rows = [
            (
                o.scenario.name,
                o.outcome,
                o.policy or "-",
                o.node or "-",
                o.phase or "-",
                str(o.steps),
                f"{o.tokens:,}",
                f"{o.elapsed:.2f} s",
                "yes" if o.mismatch is None else "NO",
            )
            for o in outcomes
        ]
        header = ("scenario", "outcome", "policy", "node", "phase", "steps", "tokens", "elapsed")
        for line in _columns((*header, "as expected"), rows):
            self.say(line)


def run_demo(*, serve_metrics: int | None = None, as_json: bool = False) -> int:
    """Run every scenario concurrently; 0 when each ended as it should."""
    out = sys.stdout
    # With --json, standard output carries only events; the story goes to standard error.
    report = Reporter(sys.stderr if as_json else sys.stdout)
    _configure_logging(as_json, out)
    registry = CollectorRegistry()
    policies = load_policy_text(DEMO_POLICIES, "demo policies")
    supervisor = Supervisor(policies, registry=registry)
    server = None
    if serve_metrics is not None:
        server = supervisor.serve_metrics(serve_metrics)
        report.say(f"metrics at http://127.0.0.1:{server.server_port}/metrics")
    report.heading(f"{len(SCENARIOS)} agents, run at once under the watchdog (all local):")
    for scenario in SCENARIOS:
        report.say(f"  {scenario.name:<18} {scenario.what}; should be {scenario.expected}")
    report.say()
    report.heading("The policies in play:")
    for line in _policy_lines(policies):
        report.say(f"  {line}")
    report.say()
    report.heading("Runs, as they end:")
    outcomes = [Outcome(s) for s in SCENARIOS]
    try:
        asyncio.run(_run_all(supervisor, outcomes, report))
    finally:
        supervisor.emit(
            "demo_summary",
            runs=[
                {
                    "scenario": o.scenario.name,
                    "outcome": o.outcome,
                    "policy": o.policy or None,
                    "node": o.node or None,
                    "phase": o.phase or None,
                    "as_expected": o.mismatch is None,
                }
                for o in outcomes
            ],
        )
        supervisor.close()
    report.say()
    report.table(outcomes)
    report.say()
    for phase, meaning in PHASES.items():
        report.say(f"{phase}: {meaning}.")
    report.say(f"landed: {LANDED}.")
    report.say()
    cancelled = sum(o.outcome == "cancelled" for o in outcomes)
    landed = sum(o.outcome == "landed" for o in outcomes)
    completed = sum(o.outcome == "completed" for o in outcomes)
    wrong = [o.scenario.name for o in outcomes if o.mismatch is not None]
    counts = f"{cancelled} runaway runs cancelled, {landed} landed softly, {completed} completed; "
    if wrong:
        report.say(counts + report.style(f"NOT AS EXPECTED: {', '.join(wrong)}.", "red"))
    else:
        report.say(counts + report.style("every run ended as expected.", "green"))
    if server is not None:
        report.say(
            f"Serving metrics at http://127.0.0.1:{server.server_port}/metrics; Ctrl-C stops."
        )
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            server.shutdown()
    return 1 if wrong else 0
