"""Live runs as the API lists them: the supervisor's ``runs()``, a worker's sidecar link."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

__all__ = ["RunInfo", "Status"]

Status = Literal["running", "cancelling", "completed", "cancelled", "failed"]


@dataclass(frozen=True, slots=True)
class RunInfo:
    """A live run, as ``Supervisor.runs()`` lists it."""

    run_id: str
    thread_id: str | None
    graph: str
    started_at: datetime
    steps: int
    tokens: int
    status: Status
