"""Running cleanup hooks to the end, each within a time limit.

A hook of an async run runs in a task of its own, not in the task of the run: when that task
is being cancelled (a hard cancel, or anyio/Starlette cancelling a request whose client left),
the hook still runs to completion. A hook that hangs past its time limit is abandoned and
logged, and the run ends all the same.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable
from typing import Any

from .._sinks import events as _events

__all__ = ["DEFAULT_HOOK_TIMEOUT", "Hook", "run_hook_async", "run_hook_sync", "spawn"]

DEFAULT_HOOK_TIMEOUT = 5.0

Hook = Callable[..., Any]

# Strong references to hook tasks: the loop keeps only weak ones, and a hook whose caller has
# gone must not be collected half-way. No lock: the tasks' own event loops (one a thread) only
# add and discard, each atomic.
_running: set[asyncio.Task[None]] = set()


def _name(hook: Hook) -> str:
    return getattr(hook, "__qualname__", None) or repr(hook)


def spawn(
    hook: Hook,
    args: tuple[Any, ...],
    timeout: float,
    fields: dict[str, Any],
    emit: _events.Emit = _events.emit,
) -> asyncio.Task[None]:
    """Start ``hook(*args)`` in a task of its own, in the running loop."""
    task = asyncio.get_running_loop().create_task(run_hook_async(hook, args, timeout, fields, emit))
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task


async def run_hook_async(
    hook: Hook,
    args: tuple[Any, ...],
    timeout: float,
    fields: dict[str, Any],
    emit: _events.Emit = _events.emit,
) -> None:
    try:
        async with asyncio.timeout(timeout):
            if inspect.iscoroutinefunction(hook):
                await hook(*args)
            else:
                result = await asyncio.to_thread(hook, *args)  # a sync hook may block
                if inspect.isawaitable(result):
                    await result
    except TimeoutError:
        emit("cleanup_abandoned", **fields, hook=_name(hook), timeout_s=timeout)
    except Exception as error:
        emit("cleanup_failed", **fields, hook=_name(hook), error=repr(error))


def run_hook_sync(
    hook: Hook,
    args: tuple[Any, ...],
    timeout: float,
    fields: dict[str, Any],
    emit: _events.Emit = _events.emit,
) -> None:
    """For sync runs: run the hook in a thread and wait for it, at most ``timeout``."""
    done = threading.Event()

    def target() -> None:
        try:
            if inspect.iscoroutinefunction(hook):
                asyncio.run(run_hook_async(hook, args, timeout, fields, emit))
            else:
                hook(*args)
        except Exception as error:
            emit("cleanup_failed", **fields, hook=_name(hook), error=repr(error))
        finally:
            done.set()

    threading.Thread(target=target, name="watchdog-cleanup", daemon=True).start()
    if not done.wait(timeout):
        emit("cleanup_abandoned", **fields, hook=_name(hook), timeout_s=timeout)
