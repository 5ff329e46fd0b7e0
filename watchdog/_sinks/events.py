"""Structured events: one namespaced structlog event per thing that happened, flat keys.

When the application has configured structlog, events go through its configuration. When it
has not, they are written as JSON lines to standard error, so a watchdog that was just
attached still leaves a readable trail.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import structlog

__all__ = ["NAMESPACE", "Emit", "Listener", "add_listener", "emit", "emit_to", "remove_listener"]

NAMESPACE = "watchdog"
WARNING_EVENTS = frozenset(
    {
        "violation",
        "drain_requested",
        "hard_cancel",
        "run_cancelled",
        "near_limit",
        "sidecar_batch_refused",
        "sidecar_unauthorized",
        "sidecar_events_unsent",
        "thread_repair_failed",
        "activity_after_cancel",
        "wrap_up_failed",
        "shared_budget_unavailable",
    }
)
ERROR_EVENTS = frozenset(
    {"internal_error", "policy_reload_failed", "cleanup_abandoned", "sidecar_loop_failed"}
)

Listener = Callable[[dict[str, Any]], None]
Emit = Callable[..., None]  # emit(name, **fields)
# Process-wide listeners (tests, capture helpers). No lock: changed only between runs, by
# tests. The loggers, no lock either: two threads may each build one, and either serves.
_listeners: list[Listener] = []
_fallback: Any = None
# The logger built from the application's configuration, and that configuration's values.
_configured: tuple[tuple[Any, ...], Any] | None = None


def _logger() -> Any:
    global _fallback, _configured  # noqa: PLW0603 - built on first use
    if structlog.is_configured():
        # structlog builds a logger from its configuration at every call of a logger it
        # gave out, unless told to cache it; a run logs twice at least. Kept here until the
        # configuration changes.
        # Equal values build an equal logger: a configuration set again alike keeps it.
        config = tuple(structlog.get_config().values())
        cached = _configured
        if cached is None or cached[0] != config:
            cached = _configured = (config, structlog.get_logger(NAMESPACE).bind())
        return cached[1]
    if _fallback is None:
        _fallback = structlog.wrap_logger(
            structlog.PrintLogger(sys.stderr),
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.JSONRenderer(),
            ],
        )
    return _fallback


def emit(name: str, **fields: Any) -> None:
    """Log ``watchdog.<name>`` with ``fields`` and hand it to the process-wide listeners."""
    emit_to((), name, **fields)


def emit_to(listeners: Sequence[Listener], name: str, **fields: Any) -> None:
    """``emit``, handing the event to ``listeners`` (one supervisor's) as well."""
    event = f"{NAMESPACE}.{name}"
    if _listeners or listeners:
        record = {"event": event, **fields}
        for listener in _listeners:
            listener(record)
        for listener in listeners:
            listener(record)
    logger = _logger()
    if name in ERROR_EVENTS:
        logger.error(event, **fields)
    elif name in WARNING_EVENTS:
        logger.warning(event, **fields)
    else:
        logger.info(event, **fields)


def add_listener(listener: Listener) -> None:
    _listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    _listeners.remove(listener)


def reset() -> None:
    """Forget listeners and the loggers (tests call this between tests)."""
    global _fallback, _configured  # noqa: PLW0603
    _listeners.clear()
    _fallback = _configured = None
