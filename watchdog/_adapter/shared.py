"""A supervisor's shared limits: token budgets and rates whose scope spans pods, in Redis.

A run whose policies have a shared limit gets a charge for each: before each model call it
reserves the policy's estimate, in tokens or dollars (refused: a violation, as for any
limit), and after the call it settles the real usage; a rate of calls counts each call as it
starts. When Redis cannot be reached the call goes on, on this worker's local share of the
limit: the error is counted and logged (once until Redis answers again), and the local
limits still hold.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from .._core.policies import Policy, Rate, Shareable, TokenBudget
from .._core.state import CostMeter
from .._shared.budget import Grant, SharedBudget
from .._shared.windows import window_of

__all__ = ["Charge", "Meter", "SharedBudgets"]

MAX_BUDGETS = 10_000  # budgets kept by name (one per scope value and window); then forgotten
MAX_OWED = 100_000  # settlements kept while Redis is away; the oldest go first
RETRY_AFTER = 1.0  # seconds after a failure before Redis is tried again
REPORT_EVERY = 10.0  # seconds between logs of failures that go on
PLAIN = re.compile(r"[A-Za-z0-9_.:@-]{1,64}")


Unit = Literal["tokens", "usd", "llm_calls", "tool_calls"]
NOUNS: dict[str, tuple[str, str]] = {"llm_calls": ("model call", "model calls")}
NOUNS["tool_calls"] = ("tool call", "tool calls")


def shared_policies(policies: tuple[Policy, ...]) -> tuple[Policy, ...]:
    return tuple(p for p in policies if isinstance(p.kind, Shareable) and p.kind.shared)


@dataclass(frozen=True, slots=True)
class Meter:
    """What one call counts in a shared limit, in whole units: tokens, millionths of a US
    dollar, or the call itself."""

    key: str  # the limit's key in the policy: max_total_tokens, max_cost_usd, max_events
    unit: Unit
    limit: int  # in units
    estimate: int = 0  # the tokens a model call reserves when its max_tokens says less
    prices: CostMeter | None = None  # for dollars

    @property
    def per_call(self) -> bool:
        """Whether a call counts one as it starts (a rate of calls), with nothing to settle."""
        return self.unit in NOUNS

    def reserved(self, model: str, max_tokens: int) -> int:
        """What a call reserves before it starts: its largest likely use."""
        if self.per_call:
            return 1
        tokens = max(self.estimate, max_tokens)
        if self.prices is None:
            return tokens
        # Input and output are not known apart yet: the dearer of the two prices.
        price = self.prices.price_of(model)
        return (
            0
            if price is None
            else math.ceil(tokens * max(price.input_per_mtok, price.output_per_mtok))
        )

    def used(self, model: str, input_tokens: int, output_tokens: int, total: int | None) -> int:
        """What a call counts once its usage is known."""
        if self.prices is None:
            return input_tokens + output_tokens if total is None else total
        price = self.prices.price_of(model)
        return 0 if price is None else math.ceil(price.cost(input_tokens, output_tokens) * 1e6)

    def value(self, amount: int) -> float:
        """An amount as the policy states its limit: dollars, tokens or calls."""
        return amount / 1e6 if self.unit == "usd" else float(amount)

    def show(self, amount: int) -> str:
        if self.unit == "usd":
            return f"${amount / 1e6:,.4f}"
        one, many = NOUNS.get(self.unit, ("token", "tokens"))
        return f"{amount:,} {one if amount == 1 else many}"


@dataclass(slots=True)
class Charge:
    """One run's share of one shared limit."""

    policy: Policy
    budget: SharedBudget
    meter: Meter
    whose: str  # what the limit is of, for reasons: "tenant 'acme'", "graph 'x'", "all runs"
    window: str  # for reasons: "for 2026-12-05", "within any 60 s"
    reported: bool = False  # a run reports a refused limit once, until it is extended
    extra: int = 0  # what a person let this run use past the limit (on_violation: ask)

    @property
    def limit(self) -> int:
        """This run's limit: the shared one, and what a person added to it."""
        return self.budget.limit + self.extra

    def extend(self, amount: float) -> None:
        """Let this run go ``amount`` further (tokens, dollars or calls, as the policy
        states its limit), and report the limit again when it is reached."""
        self.extra += int(amount * 1e6) if self.meter.unit == "usd" else int(amount)
        self.reported = False

    @property
    def local_share(self) -> int:
        """What this worker may spend on its own while Redis does not answer: nothing when
        the policy fails closed."""
        kind = self.policy.kind
        assert isinstance(kind, Shareable)
        return 0 if kind.fail_closed else int(self.budget.limit * kind.local_share)

    def reason(self, grant: Grant, amount: int) -> str:
        meter, policy = self.meter, self.policy.name
        show, what = meter.show, "rate" if isinstance(self.policy.kind, Rate) else "budget"
        more = "one more" if meter.per_call else f"a call of {show(amount)} more"
        if grant.local:
            if self.local_share == 0:
                return (
                    f"The {what} of {self.whose} {self.window} could not be checked "
                    f"(Redis did not answer), and policy {policy!r} stops calls until it can be."
                )
            return (
                f"Redis did not answer, and this worker has spent {show(grant.used)} of its "
                f"local share of {show(self.local_share)} of the {what} of {self.whose} "
                f"{self.window}, so {more} would pass it (policy {policy!r})."
            )
        if meter.per_call:
            return (
                f"{self.window.capitalize()}, {self.whose} may make at most "
                f"{show(self.limit)} (policy {policy!r}), and {show(grant.used)} were "
                "made: one more would pass it."
            )
        return (
            f"The {what} of {self.whose} {self.window} has {show(grant.used)} used and "
            f"{show(grant.reserved)} held by calls in flight, so {more} would pass the "
            f"{show(self.limit)} that policy {policy!r} allows."
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
        on_back: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.url = url
        self._on_error = on_error
        self._on_back = on_back
        self._clock = clock  # for how long Redis rests after a failure
        self._now = now or (lambda: datetime.now(UTC))  # which window a budget is in
        self._client: Any = None
        self._budgets: dict[str, SharedBudget] = {}
        self._lock = threading.Lock()
        self._owed: deque[tuple[Charge, str, int]] = deque(maxlen=MAX_OWED)
        self._down = False  # the last operation failed: the next success says it is back
        self._retry_at = 0.0  # while down, Redis is tried again from this time on
        self._last_error: BaseException = ConnectionError("Redis has not been tried")
        # What was granted on local shares, by budget (and span, for a rate), since Redis
        # stopped answering.
        self._spent_locally: dict[str, tuple[int, int]] = {}

    def point_at(self, url: str | None) -> None:
        """Keep shared limits at ``url`` from now on: a reloaded policy file may move them.
        Runs started before keep the budgets they had."""
        with self._lock:
            if url != self.url:
                self.url, self._client = url, None
                self._budgets.clear()

    def reserve(self, charge: Charge, call: str, amount: int) -> Grant:
        """Reserve ``amount`` for ``call``. While Redis does not answer, the call is granted
        on this worker's local share of the limit (none when the policy fails closed)."""
        if self._resting():
            self._on_error(charge.policy.name, self._last_error, False)
            return self._locally(charge, amount)
        try:
            grant = charge.budget.reserve(
                call, amount, count=charge.meter.per_call, limit=charge.limit
            )
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
        budget = charge.budget
        # A rate's local share is spent afresh in each span of its length.
        span = int(self._clock() // budget.rolling) if budget.rolling else 0
        with self._lock:
            spent_in, spent = self._spent_locally.get(budget.name, (span, 0))
            if spent_in != span:
                spent = 0
            if spent + amount > charge.local_share:
                return Grant(granted=False, used=spent, reserved=0, local=True)
            self._spent_locally[budget.name] = (span, spent + amount)
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
            self._on_back()
        if self._owed:
            self._settle_owed()

    def close(self) -> None:
        """Send the settlements still owed, once more: a worker that stops after an outage
        leaves its usage counted if Redis answers now."""
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
        """A run's charges: one per shared limit of its policies that applies to it (a limit
        per metadata value applies to the runs that carry the key)."""
        found = []
        for policy in shared_policies(policies):
            kind = policy.kind
            assert isinstance(kind, Shareable)
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
            name = f"{policy.name}|{scope}={_tag_safe(value)}"
            if isinstance(kind, Rate):
                meter = Meter("max_events", kind.of, kind.max_events, kind.estimate_tokens)  # type: ignore[arg-type]
                budget = self._budget(
                    f"{name}|{kind.per_seconds:g}s",
                    meter.limit,
                    rolling=kind.per_seconds,
                    key_ttl=kind.per_seconds + 3600,
                )
                found.append(
                    Charge(policy, budget, meter, whose, f"within any {kind.per_seconds:g} s")
                )
                continue
            assert isinstance(kind, TokenBudget)
            assert kind.window is not None  # the policy file requires one
            window, left = window_of(kind.window, kind.time_zone, self._now())
            for meter in _budget_meters(kind):
                suffix = "" if meter.unit == "tokens" else f"|{meter.unit}"
                budget = self._budget(
                    f"{name}|{window}{suffix}", meter.limit, key_ttl=left + 86_400
                )
                found.append(Charge(policy, budget, meter, whose, f"for {window}"))
        return tuple(found)

    def _budget(
        self, name: str, limit: int, *, key_ttl: float, rolling: float = 0.0
    ) -> SharedBudget:
        with self._lock:
            budget = self._budgets.get(name)
            if budget is None or budget.limit != limit:
                if len(self._budgets) >= MAX_BUDGETS:
                    del self._budgets[next(iter(self._budgets))]
                budget = self._budgets[name] = SharedBudget(
                    self._redis(), name, limit, rolling=rolling, key_ttl=key_ttl
                )
            return budget

    def _redis(self) -> Any:
        if self._client is None:
            if self.url is None:
                msg = "a shared limit needs Redis: set WATCHDOG_REDIS_URL or defaults.redis_url"
                raise RuntimeError(msg)
            import redis  # noqa: PLC0415 - the redis extra, needed only by shared budgets

            # Short timeouts: a call waits on Redis at most this long, then goes on.
            self._client = redis.Redis.from_url(
                self.url, socket_timeout=0.25, socket_connect_timeout=0.25
            )
        return self._client


def _budget_meters(kind: TokenBudget) -> list[Meter]:
    meters = []
    if kind.max_total_tokens is not None:
        meters.append(
            Meter("max_total_tokens", "tokens", kind.max_total_tokens, kind.estimate_tokens)
        )
    if kind.max_cost_usd is not None:
        limit = int(kind.max_cost_usd * 1e6)
        prices = CostMeter(kind.prices)
        meters.append(Meter("max_cost_usd", "usd", limit, kind.estimate_tokens, prices))
    return meters


def _tag_safe(value: str) -> str:
    """A scope value as a Redis key's hash tag may hold it (no braces, bounded)."""
    if PLAIN.fullmatch(value):
        return value
    return "sha1:" + hashlib.sha1(value.encode(), usedforsecurity=False).hexdigest()[:20]
