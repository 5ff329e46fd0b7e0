"""A supervisor's shared budgets: token budgets whose scope spans pods, kept in Redis.

A run whose policies have a shared budget gets a charge for each: before each model call it
reserves the policy's estimate (refused: a violation, as for any limit), and after the call
it settles the real usage. When Redis cannot be reached the call goes on: the error is
counted and logged (once until Redis answers again), and the local limits still hold.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .._core.policies import Policy, TokenBudget
from .._shared.budget import Grant, SharedBudget
from .._shared.windows import window_of

__all__ = ["Charge", "SharedBudgets"]

MAX_BUDGETS = 10_000  # budgets kept by name (one per scope value and window); then forgotten
MAX_OWED = 100_000  # settlements kept while Redis is away; the oldest go first
RETRY_AFTER = 1.0  # seconds after a failure before Redis is tried again
PLAIN = re.compile(r"[A-Za-z0-9_.:@-]{1,64}")


def shared_policies(policies: tuple[Policy, ...]) -> tuple[Policy, ...]:
    return tuple(p for p in policies if isinstance(p.kind, TokenBudget) and p.kind.shared)


@dataclass(slots=True)
class Charge:
    """One run's share of one shared budget."""

    policy: Policy
    budget: SharedBudget
    estimate: int
    whose: str  # what the budget is of, for reasons: "tenant 'acme'", "graph 'x'", "all runs"
    window: str
    reported: bool = False  # a run reports a refused budget once

    @property
    def local_share(self) -> int:
        """The tokens this worker may spend on its own while Redis does not answer: none
        when the policy fails closed."""
        kind = self.policy.kind
        assert isinstance(kind, TokenBudget)
        return 0 if kind.fail_closed else int(self.budget.limit * kind.local_share)

    def reason(self, grant: Grant, amount: int) -> str:
        if grant.local:
            if self.local_share == 0:
                return (
                    f"The budget of {self.whose} for {self.window} could not be checked "
                    f"(Redis did not answer), and policy {self.policy.name!r} stops calls "
                    "until it can be."
                )
            return (
                f"Redis did not answer, and this worker has spent {grant.used:,} of its local "
                f"share of {self.local_share:,} tokens of the budget of {self.whose} for "
                f"{self.window}, so a call of {amount:,} more would pass it (policy "
                f"{self.policy.name!r})."
            )
        return (
            f"The budget of {self.whose} for {self.window} has {grant.used:,} tokens used and "
            f"{grant.reserved:,} held by calls in flight, so a call of {amount:,} more "
            f"would pass the {self.budget.limit:,} that policy {self.policy.name!r} allows."
        )


class SharedBudgets:
    """The Redis client (made at first use) and the budgets by name, for one supervisor.

    A settlement Redis did not take is kept (up to ``MAX_OWED``) and sent again after the
    next operation Redis answers: settling is idempotent, so each call counts once however
    often it is sent.
    """

    def __init__(
        self,
        url: str | None,
        *,
        on_error: Callable[[str, BaseException, bool], None],
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.url = url
        self._on_error = on_error
        self._clock = clock  # for how long Redis rests after a failure
        self._now = now or (lambda: datetime.now(UTC))  # which window a budget is in
        self._client: Any = None
        self._budgets: dict[str, SharedBudget] = {}
        self._lock = threading.Lock()
        self._owed: deque[tuple[Charge, str, int]] = deque(maxlen=MAX_OWED)
        self._down = False  # the last operation failed: the next success says it is back
        self._retry_at = 0.0  # while down, Redis is tried again from this time on
        self._last_error: BaseException = ConnectionError("Redis has not been tried")
        # Tokens granted on local shares, by budget, since Redis stopped answering.
        self._spent_locally: dict[str, int] = {}

    def reserve(self, charge: Charge, call: str, amount: int) -> Grant:
        """Reserve ``amount`` for ``call``. While Redis does not answer, the call is granted
        on this worker's local share of the limit (none when the policy fails closed)."""
        if self._resting():
            self._on_error(charge.policy.name, self._last_error, False)
            return self._locally(charge, amount)
        try:
            grant = charge.budget.reserve(call, amount)
        except Exception as error:
            self._failed(charge, error)
            return self._locally(charge, amount)
        self._answered()
        return grant

    def _resting(self) -> bool:
        """Whether Redis failed so lately that a call does not wait on it again yet: a
        Redis that hangs costs a worker one timeout a second, not one a call."""
        return self._down and self._clock() < self._retry_at

    def _locally(self, charge: Charge, amount: int) -> Grant:
        name = charge.budget.name
        with self._lock:
            spent = self._spent_locally.get(name, 0)
            if spent + amount > charge.local_share:
                return Grant(granted=False, used=spent, reserved=0, local=True)
            self._spent_locally[name] = spent + amount
        return Grant(granted=True, used=spent, reserved=amount, local=True)

    def settle(self, charge: Charge, call: str, used: int) -> None:
        """Count what ``call`` used; kept to send again when Redis does not answer."""
        if self._resting():
            self._owed.append((charge, call, used))
            self._on_error(charge.policy.name, self._last_error, False)
            return
        try:
            charge.budget.settle(call, used)
        except Exception as error:
            self._owed.append((charge, call, used))
            self._failed(charge, error)
            return
        self._answered()

    def _failed(self, charge: Charge, error: BaseException) -> None:
        self._on_error(charge.policy.name, error, not self._down)
        self._down, self._last_error = True, error
        self._retry_at = self._clock() + RETRY_AFTER

    def _answered(self) -> None:
        if self._down:
            self._down = False
            with self._lock:
                self._spent_locally.clear()  # the shares start again at the next outage
        if self._owed:
            self._settle_owed()

    def _settle_owed(self) -> None:
        owed = self._owed
        while owed:
            try:
                charge, call, used = owed.popleft()
            except IndexError:  # another thread took the last one
                return
            try:
                charge.budget.settle(call, used)
            except Exception:
                owed.appendleft((charge, call, used))
                return

    def charges(
        self, policies: tuple[Policy, ...], graph: str, metadata: Mapping[str, object]
    ) -> tuple[Charge, ...]:
        """A run's charges: one per shared budget of its policies that applies to it (a
        budget per metadata value applies to the runs that carry the key)."""
        found = []
        for policy in shared_policies(policies):
            kind = policy.kind
            assert isinstance(kind, TokenBudget)
            assert kind.window is not None  # the policy file requires one
            scope = str(kind.scope)
            if scope == "graph":
                value, whose = graph, f"graph {graph!r}"
            elif scope == "global":
                value, whose = "*", "all runs"
            else:
                key = scope.removeprefix("metadata.")
                raw = metadata.get(key)
                if raw is None:
                    continue
                value, whose = str(raw), f"{key} {str(raw)!r}"
            window, left = window_of(kind.window, kind.time_zone, self._now())
            name = f"{policy.name}|{scope}={_tag_safe(value)}|{window}"
            limit = kind.max_total_tokens or 0
            budget = self._budget(name, limit, key_ttl=left + 86_400)
            found.append(Charge(policy, budget, kind.estimate_tokens, whose, window))
        return tuple(found)

    def _budget(self, name: str, limit: int, *, key_ttl: float) -> SharedBudget:
        with self._lock:
            budget = self._budgets.get(name)
            if budget is None or budget.limit != limit:
                if len(self._budgets) >= MAX_BUDGETS:
                    del self._budgets[next(iter(self._budgets))]
                budget = self._budgets[name] = SharedBudget(
                    self._redis(), name, limit, key_ttl=key_ttl
                )
            return budget

    def _redis(self) -> Any:
        if self._client is None:
            if self.url is None:
                msg = "a shared budget needs Redis: set WATCHDOG_REDIS_URL"
                raise RuntimeError(msg)
            import redis  # noqa: PLC0415 - the redis extra, needed only by shared budgets

            # Short timeouts: a call waits on Redis at most this long, then goes on.
            self._client = redis.Redis.from_url(
                self.url, socket_timeout=0.25, socket_connect_timeout=0.25
            )
        return self._client


def _tag_safe(value: str) -> str:
    """A scope value as a Redis key's hash tag may hold it (no braces, bounded)."""
    if PLAIN.fullmatch(value):
        return value
    return "sha1:" + hashlib.sha1(value.encode(), usedforsecurity=False).hexdigest()[:20]
