"""One record for what stops or warns a run: a limit reached, a limit near, a manual cancel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .policies import Mode

__all__ = ["Finding"]


@dataclass(frozen=True, slots=True)
class Finding:
    """A limit of a policy was reached (a violation), or came near (``near``: the run used
    ``warn_at`` of it), or someone asked for the run to stop (kind ``manual``).

    Audit findings are reported, never enforced; a near finding is only a warning.
    """

    policy: str | None  # None for a manual cancel no policy asked for
    kind: str  # wall_time, step_count, loop, token_budget, rate or manual
    key: str | None  # which limit, e.g. "max_steps"; None for a manual cancel
    mode: Mode
    reason: str  # one readable sentence
    observed: float | None
    limit: float | None
    step: int
    node: str | None
    near: bool = False

    @property
    def enforced(self) -> bool:
        return self.mode == "enforce" and not self.near

    def fields(self) -> dict[str, Any]:
        """What an event about this finding carries (every key but ``key`` and ``near``,
        which the event's name says)."""
        return {
            "policy": self.policy,
            "kind": self.kind,
            "mode": self.mode,
            "reason": self.reason,
            "observed": self.observed,
            "limit": self.limit,
            "step": self.step,
            "node": self.node,
        }
