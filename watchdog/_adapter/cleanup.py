"""``watchdog.cleanup``: code in a node that must run to the end, however the node ends."""

from __future__ import annotations

import asyncio
from typing import Any

from .._sinks.events import Emit, emit
from .callbacks import current_run
from .hooks import DEFAULT_HOOK_TIMEOUT, Hook, run_hook_sync, spawn
from .run import Run

__all__ = ["cleanup"]


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

    def _emit(self) -> Emit:
        return self._run.host.emit if self._run is not None else emit

    async def __aenter__(self) -> None:
        self._run = current_run()

    async def __aexit__(self, *exc_info: object) -> None:
        task = spawn(self.hook, (), self.timeout, self._fields(), self._emit())
        if self._run is not None:
            self._run.spawned(task)
        # Under anyio a cancelled node stops waiting here at once; the task goes on.
        await asyncio.shield(task)

    def __enter__(self) -> None:
        self._run = current_run()

    def __exit__(self, *exc_info: object) -> None:
        run_hook_sync(self.hook, (), self.timeout, self._fields(), self._emit())
