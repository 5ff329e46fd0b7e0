"""langgraph-watchdog: policies that keep LangGraph runs from running away.

The root is lazy: each name is imported on first use, so the ``watchdog`` command (``check``,
``serve``, ``--version``) never pays for importing LangGraph.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._adapter.cleanup import cleanup
    from ._adapter.graph import SupervisedGraph
    from ._adapter.run import RunInfo
    from ._adapter.supervisor import RunHandle, Supervisor
    from ._core.engine import Engine, NearLimit, RunMonitor, Verdict
    from ._core.errors import PolicyError, PolicyProblem, RunCancelled
    from ._core.policies import (
        Loop,
        Match,
        Policy,
        PolicySet,
        Rate,
        StepCount,
        TokenBudget,
        WallTime,
    )
    from ._core.state import Price, RunState
    from ._files.loading import load_policies, load_policy_text

_MODULES = {
    "._adapter.cleanup": ["cleanup"],
    "._core.engine": ["Engine", "NearLimit", "RunMonitor", "Verdict"],
    "._core.errors": ["PolicyError", "PolicyProblem", "RunCancelled"],
    "._adapter.graph": ["SupervisedGraph"],
    "._files.loading": ["load_policies", "load_policy_text"],
    "._core.policies": [
        "Loop", "Match", "Policy", "PolicySet", "Rate", "StepCount", "TokenBudget", "WallTime",
    ],
    "._adapter.run": ["RunInfo"],
    "._core.state": ["Price", "RunState"],
    "._adapter.supervisor": ["RunHandle", "Supervisor"],
}  # fmt: skip
_MODULE_OF = {name: module for module, names in _MODULES.items() for name in names}

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


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
