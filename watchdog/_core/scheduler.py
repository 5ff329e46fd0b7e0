"""One deadline heap and one thread for every timer of a supervisor.

Runs never get a task or a thread of their own: a run that is due is an entry in the heap.
An entry holds its callback weakly, and a run takes its entries back when it ends, so a
finished run is never kept alive by a deadline it no longer has. Taken-back entries stay in
the heap until they come up, or until they are the larger part of it and it is rebuilt:
scheduling stays O(log n) with no search on the hot path.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["Scheduler", "Timer"]

COMPACT_AT = 64  # taken-back entries before a rebuild is considered


class Timer:
    """One scheduled call: ``method(*args)`` at ``when``, unless cancelled first."""

    __slots__ = ("args", "function", "owner", "pending", "when")

    def __init__(self, when: float, method: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.when = when
        # The bound method's object, held weakly, and its function: a plain reference to an
        # object is made once and shared, where a WeakMethod is two more a timer.
        self.owner = weakref.ref(method.__self__)  # type: ignore[attr-defined]
        self.function: Callable[..., None] = method.__func__  # type: ignore[attr-defined]
        self.args = args
        self.pending = True  # in the heap and not cancelled


class Scheduler:
    """Runs timers when they fall due: from a thread of its own, started with the first
    timer, when ``threaded``; else only when ``run_due()`` is called (tests, fake clocks)."""

    # _wake guards _heap, _cancelled, _thread and _closed.
    def __init__(
        self,
        clock: Callable[[], float],
        *,
        on_error: Callable[[BaseException], None],
        threaded: bool = True,
    ):
        self._clock = clock
        self._threaded = threaded
        self._on_error = on_error
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()  # ties keep their order, and timers are never compared
        self._cancelled = 0  # cancelled timers still in the heap
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def call_at(self, when: float, method: Callable[..., None], *args: Any) -> Timer:
        """Call the bound ``method(*args)`` at ``when``; it is held weakly."""
        timer = Timer(when, method, args)
        with self._wake:
            heapq.heappush(self._heap, (when, next(self._order), timer))
            if self._threaded and self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._serve, name="watchdog-timers", daemon=True
                )
                self._thread.start()
            elif self._heap[0][2] is timer:
                self._wake.notify()
        return timer

    def cancel(self, timer: Timer) -> None:
        with self._wake:
            if not timer.pending:
                return
            timer.pending = False
            self._cancelled += 1
            heap = self._heap
            if self._cancelled > COMPACT_AT and self._cancelled * 2 > len(heap):
                self._heap = [entry for entry in heap if entry[2].pending]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def run_due(self) -> int:
        """Run every timer that is due; returns how many ran. For tests with a fake clock."""
        ran = 0
        while True:
            with self._wake:
                if not self._heap or self._heap[0][0] > self._clock():
                    return ran
                _, _, timer = heapq.heappop(self._heap)
                if not timer.pending:
                    self._cancelled -= 1
                    continue
                timer.pending = False
            owner = timer.owner()
            if owner is None:
                continue  # its owner is gone
            try:
                timer.function(owner, *timer.args)
            except Exception as exc:
                self._on_error(exc)
            ran += 1

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._heap.clear()
            self._cancelled = 0
            self._wake.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=1)

    def _serve(self) -> None:
        while True:
            with self._wake:
                while not self._closed:
                    if not self._heap:
                        self._wake.wait()
                        continue
                    wait = self._heap[0][0] - self._clock()
                    if wait <= 0:
                        break
                    self._wake.wait(wait)
                if self._closed:
                    return
            self.run_due()
