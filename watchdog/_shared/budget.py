"""A budget shared by every worker that uses it, in Redis: reserve before a call, settle after.

Each model call reserves an estimate of what it will use, atomically (a Lua script), and is
refused when the budget's settled usage plus every reservation in flight plus this one would
pass its limit. When the call's real usage arrives it is settled: added to the usage, its
reservation released. Both are idempotent for one call's id, so a retry never counts twice;
a reservation whose worker died expires after its time to live and stops holding the budget.

Amounts are whole numbers (tokens, millionths of a US dollar, or calls), so that totals are
exact. A rate is a budget over a rolling span: what each call counted is forgotten when it
leaves the span.
Every key of one budget shares a hash tag: a Redis Cluster keeps them in one slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Grant", "SharedBudget"]

# KEYS: the budget (used, reserved), its reservations by expiry, their amounts, the settled
# calls by time, and (for a rolling span) what each settled call counted. ARGV: limit, amount,
# call id, the reservation's time to live (ms), the keys' (s), the rolling span (ms; 0 for a
# fixed window), and 1 to count the amount at once (a rate of calls) rather than hold it.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  local amount = tonumber(redis.call('HGET', KEYS[3], id) or '0')
  redis.call('HDEL', KEYS[3], id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('HINCRBY', KEYS[1], 'reserved', -amount)
end
local span = tonumber(ARGV[6])
if span > 0 then
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now - span)) do
    local amount = tonumber(redis.call('HGET', KEYS[5], id) or '0')
    redis.call('HDEL', KEYS[5], id)
    redis.call('ZREM', KEYS[4], id)
    redis.call('HINCRBY', KEYS[1], 'used', -amount)
  end
end
local used = tonumber(redis.call('HGET', KEYS[1], 'used') or '0')
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
if redis.call('HEXISTS', KEYS[3], ARGV[3]) == 1 or redis.call('ZSCORE', KEYS[4], ARGV[3]) then
  return {1, used, reserved}
end
local amount = tonumber(ARGV[2])
if used + reserved + amount > tonumber(ARGV[1]) then
  return {0, used, reserved}
end
if ARGV[7] == '1' then
  redis.call('HINCRBY', KEYS[1], 'used', amount)
  redis.call('ZADD', KEYS[4], now, ARGV[3])
  if span > 0 then redis.call('HSET', KEYS[5], ARGV[3], amount) end
else
  redis.call('HSET', KEYS[3], ARGV[3], amount)
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[3])
  reserved = redis.call('HINCRBY', KEYS[1], 'reserved', amount)
end
for i = 1, 5 do redis.call('EXPIRE', KEYS[i], tonumber(ARGV[5])) end
return {1, used, reserved}
"""

# KEYS: as for _RESERVE. ARGV: the call id, its real usage, the keys' time to live (s), the
# rolling span (ms; 0 for a fixed window).
_SETTLE = """
if redis.call('ZSCORE', KEYS[4], ARGV[1]) then
  return {0, tonumber(redis.call('HGET', KEYS[1], 'used') or '0')}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local amount = redis.call('HGET', KEYS[3], ARGV[1])
if amount then
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HINCRBY', KEYS[1], 'reserved', -tonumber(amount))
end
local used = redis.call('HINCRBY', KEYS[1], 'used', tonumber(ARGV[2]))
redis.call('ZADD', KEYS[4], now, ARGV[1])
if tonumber(ARGV[4]) > 0 then redis.call('HSET', KEYS[5], ARGV[1], ARGV[2]) end
for i = 1, 5 do redis.call('EXPIRE', KEYS[i], tonumber(ARGV[3])) end
return {1, used}
"""


class Redis(Protocol):
    """The part of redis-py's client a shared budget uses."""

    def register_script(self, script: str) -> Any: ...

    def hgetall(self, name: str) -> Any: ...


@dataclass(frozen=True, slots=True)
class Grant:
    """What a reservation found: whether the call may start, and the budget as it stood."""

    granted: bool
    used: int  # settled usage, before this call
    reserved: int  # held by calls in flight, this one included when granted
    # Decided by this worker alone, on its local share, while Redis did not answer: ``used``
    # is what it spent of that share, and the share's size is the limit.
    local: bool = False


class SharedBudget:
    """One budget of ``limit`` shared through ``redis`` under ``name`` (the scope and the
    window, e.g. ``tokens:tenant=acme:2026-12-05``).

    With ``rolling`` (seconds), the budget is a rate: what a call counted is forgotten that
    long after it was counted, so the limit holds in every span of that length.
    """

    def __init__(
        self,
        redis: Redis,
        name: str,
        limit: int,
        *,
        rolling: float = 0.0,
        reservation_ttl: float = 120.0,
        key_ttl: float = 3 * 86_400.0,
    ) -> None:
        self.name, self.limit = name, limit
        tag = f"watchdog:{{{name}}}"  # one hash tag: one cluster slot for every key
        self._keys = [
            f"{tag}:{part}" for part in ("budget", "expiring", "reserved", "settled", "counted")
        ]
        self.rolling = rolling
        self._rolling_ms = int(rolling * 1000)
        self._reservation_ms = int(reservation_ttl * 1000)
        self._key_seconds = int(key_ttl)
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)
        self._redis = redis

    def reserve(
        self, call_id: str, amount: int, *, count: bool = False, limit: int | None = None
    ) -> Grant:
        """Hold ``amount`` for the call ``call_id`` until it is settled, if the budget has
        room; a call reserved (or settled) before is granted again and holds nothing more.
        With ``count``, the amount is counted at once (a call of a rate of calls), and the
        call needs no settling. ``limit``: this call's, when not the budget's (a person let
        its run go further)."""
        args = [self.limit if limit is None else limit, amount, call_id]
        args += [self._reservation_ms, self._key_seconds]
        args += [self._rolling_ms, int(count)]
        granted, used, reserved = self._reserve(keys=self._keys, args=args)
        return Grant(bool(granted), int(used), int(reserved))

    def settle(self, call_id: str, used: int) -> bool:
        """Count the call's real usage and release its reservation; False when the call was
        settled before (a retry), which counts nothing."""
        args = [call_id, used, self._key_seconds, self._rolling_ms]
        counted, _ = self._settle(keys=self._keys, args=args)
        return bool(counted)

    def totals(self) -> tuple[int, int]:
        """(settled usage, held by calls in flight), as Redis has them now."""
        found = self._redis.hgetall(self._keys[0])
        values = {_text(k): int(v) for k, v in dict(found).items()}
        return values.get("used", 0), values.get("reserved", 0)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
