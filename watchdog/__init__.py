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
    from ._adapter.supervisor import RunHandle, Supervisor
    from ._core.errors import PolicyError, PolicyProblem, RunCancelled
    from ._core.findings import Finding
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
    from ._core.replay import Verdict, replay
    from ._core.runs import RunInfo
    from ._core.state import Price
    from ._core.trace import Trace, read_traces
    from ._files.loading import load_policies, load_policy_text

_MODULES = {
    "._core.errors": ["PolicyError", "PolicyProblem", "RunCancelled"],
    "._core.findings": ["Finding"],
    "._core.policies": [
        "Loop", "Match", "Policy", "PolicySet", "Rate", "StepCount", "TokenBudget", "WallTime",
    ],
    "._core.replay": ["Verdict", "replay"],
    "._core.runs": ["RunInfo"],
    "._core.state": ["Price"],
    "._core.trace": ["Trace", "read_traces"],
    "._files.loading": ["load_policies", "load_policy_text"],
    "._adapter.cleanup": ["cleanup"],
    "._adapter.graph": ["SupervisedGraph"],
    "._adapter.supervisor": ["RunHandle", "Supervisor"],
}  # fmt: skip
_MODULE_OF = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "Finding",
    "Loop",
    "Match",
    "Policy",
    "PolicyError",
    "PolicyProblem",
    "PolicySet",
    "Price",
    "Rate",
    "RunCancelled",
    "RunHandle",
    "RunInfo",
    "StepCount",
    "SupervisedGraph",
    "Supervisor",
    "TokenBudget",
    "Trace",
    "Verdict",
    "WallTime",
    "cleanup",
    "load_policies",
    "load_policy_text",
    "read_traces",
    "replay",
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
