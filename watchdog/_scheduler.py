"""One deadline heap and one thread for every timer of a supervisor.

Runs never get a task or a thread of their own: a run that is due is an entry in the heap.
Entries are not removed when a run's deadline moves; the action checks whether it is still
wanted, which keeps scheduling O(log n) and free of bookkeeping on the hot path.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable

__all__ = ["Scheduler"]

Action = Callable[[], None]


class Scheduler:
    def __init__(self, clock: Callable[[], float], *, on_error: Callable[[BaseException], None]):
        self._clock = clock
        self._on_error = on_error
        self._heap: list[tuple[float, int, Action]] = []
        self._order = itertools.count()  # ties keep their order, and actions are never compared
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def call_at(self, when: float, action: Action) -> None:
        with self._wake:
            heapq.heappush(self._heap, (when, next(self._order), action))
            if self._heap[0][2] is action:
                self._wake.notify()

    def start(self) -> None:
        """Run due actions from a daemon thread from now on (real clocks only)."""
        with self._wake:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._serve, name="watchdog-timers", daemon=True
                )
                self._thread.start()

    def run_due(self) -> int:
        """Run every action that is due; returns how many ran. For tests with a fake clock."""
        ran = 0
        while True:
            with self._wake:
                if not self._heap or self._heap[0][0] > self._clock():
                    return ran
                _, _, action = heapq.heappop(self._heap)
            try:
                action()
            except Exception as exc:
                self._on_error(exc)
            ran += 1

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._heap.clear()
            self._wake.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=1)

    def __len__(self) -> int:
        return len(self._heap)

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
