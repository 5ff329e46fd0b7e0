"""Cleanup hooks: code that must run when a run ends or is cancelled, to the end.

A hook runs in a task the supervisor owns, not in the task of the run: when that task is
being cancelled (a hard cancel, or anyio/Starlette cancelling a request whose client left),
the hook still runs to completion. Every hook has a time limit; one that hangs past it is
abandoned and logged, and the run ends all the same.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from langgraph.config import get_config

from . import _events

if TYPE_CHECKING:
    from ._run import Run

__all__ = ["DEFAULT_HOOK_TIMEOUT", "Hook", "cleanup", "run_hook_async", "run_hook_sync"]

DEFAULT_HOOK_TIMEOUT = 5.0

Hook = Callable[..., Any]

# Strong references to hook tasks: the loop keeps only weak ones, and a hook whose caller has
# gone must not be collected half-way.
_running: set[asyncio.Task[None]] = set()


def _name(hook: Hook) -> str:
    return getattr(hook, "__qualname__", None) or repr(hook)


def spawn(
    hook: Hook, args: tuple[Any, ...], timeout: float, fields: dict[str, Any]
) -> asyncio.Task[None]:
    """Start ``hook(*args)`` in a task of its own, in the running loop."""
    task = asyncio.get_running_loop().create_task(run_hook_async(hook, args, timeout, fields))
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task


async def run_hook_async(
    hook: Hook, args: tuple[Any, ...], timeout: float, fields: dict[str, Any]
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
        _events.emit("cleanup_abandoned", **fields, hook=_name(hook), timeout_s=timeout)
    except Exception as error:
        _events.emit("cleanup_failed", **fields, hook=_name(hook), error=repr(error))


def run_hook_sync(
    hook: Hook, args: tuple[Any, ...], timeout: float, fields: dict[str, Any]
) -> None:
    """For sync runs: run the hook in a thread and wait for it, at most ``timeout``."""
    done = threading.Event()

    def target() -> None:
        try:
            if inspect.iscoroutinefunction(hook):
                asyncio.run(run_hook_async(hook, args, timeout, fields))
            else:
                hook(*args)
        except Exception as error:
            _events.emit("cleanup_failed", **fields, hook=_name(hook), error=repr(error))
        finally:
            done.set()

    threading.Thread(target=target, name="watchdog-cleanup", daemon=True).start()
    if not done.wait(timeout):
        _events.emit("cleanup_abandoned", **fields, hook=_name(hook), timeout_s=timeout)


def _current_run() -> Run | None:
    """The supervised run whose node is running in this context, if any."""
    from ._probe import RUN_KEY  # noqa: PLC0415 - a cycle otherwise

    try:
        configurable = get_config().get("configurable") or {}
    except RuntimeError:
        return None
    return configurable.get(RUN_KEY)


class cleanup:
    """Run ``hook()`` when the block ends, however it ends, in a task the supervisor owns.

    ``async with cleanup(conn.aclose):`` in an async node; ``with cleanup(conn.close):`` in a
    sync one. When the node's task is cancelled, the hook still runs to completion (at most
    ``timeout`` seconds), and the supervised run's caller hears of the cancel only after it.
    Outside a supervised run the hook simply runs at the end of the block.
    """

    def __init__(self, hook: Hook, *, timeout: float = DEFAULT_HOOK_TIMEOUT) -> None:
        self.hook = hook
        self.timeout = timeout
        self._run: Run | None = None

    def _fields(self) -> dict[str, Any]:
        return self._run.fields if self._run is not None else {}

    async def __aenter__(self) -> None:
        self._run = _current_run()

    async def __aexit__(self, *exc_info: object) -> None:
        task = spawn(self.hook, (), self.timeout, self._fields())
        if self._run is not None:
            self._run.spawned(task)
        # Under anyio a cancelled node stops waiting here at once; the task goes on.
        await asyncio.shield(task)

    def __enter__(self) -> None:
        self._run = _current_run()

    def __exit__(self, *exc_info: object) -> None:
        run_hook_sync(self.hook, (), self.timeout, self._fields())
