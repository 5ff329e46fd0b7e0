"""langgraph-watchdog: policies that keep LangGraph runs from running away."""

from __future__ import annotations

from ._cleanup import cleanup
from ._engine import Engine, NearLimit, RunMonitor, Verdict
from ._errors import PolicyError, PolicyProblem, RunCancelled
from ._graph import SupervisedGraph
from ._loading import load_policies, load_policy_text
from ._policies import Loop, Match, Policy, PolicySet, Rate, StepCount, TokenBudget, WallTime
from ._run import RunInfo
from ._state import Price, RunState
from ._supervisor import RunHandle, Supervisor

__all__ = [
    "Engine",
    "Loop",
    "Match",
    "NearLimit",
    "Policy",
    "PolicyError",
    "PolicyProblem",
    "PolicySet",
    "Price",
    "Rate",
    "RunCancelled",
    "RunHandle",
    "RunInfo",
    "RunMonitor",
    "RunState",
    "StepCount",
    "SupervisedGraph",
    "Supervisor",
    "TokenBudget",
    "Verdict",
    "WallTime",
    "cleanup",
    "load_policies",
    "load_policy_text",
]
