"""langgraph-watchdog: policies that keep LangGraph runs from running away."""

from __future__ import annotations

from ._engine import Engine, NearLimit, RunMonitor, Verdict
from ._errors import PolicyError, PolicyProblem
from ._loading import load_policies, load_policy_text
from ._policies import Loop, Match, Policy, PolicySet, Rate, StepCount, TokenBudget, WallTime
from ._state import Price, RunState

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
    "RunMonitor",
    "RunState",
    "StepCount",
    "TokenBudget",
    "Verdict",
    "WallTime",
    "load_policies",
    "load_policy_text",
]
