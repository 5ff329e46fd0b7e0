"""What a recorded run keeps of the events shown to it, already in its trace's form: whole
microseconds from the run's start, and numbers for node runs and inputs (equal where the
engine saw equal inputs: by the hash it uses), so that ending the run only writes them out."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

__all__ = ["MAX_RECORDED", "Recorder"]

MAX_RECORDED = 100_000  # events kept of one run; a longer run's trace is cut


class Recorder:
    __slots__ = ("_inputs", "_keys", "_start", "events")

    def __init__(self, start: float) -> None:
        self._start = start
        self.events: list[tuple[Any, ...]] = []
        self._keys: dict[Hashable, int] = {}
        self._inputs: dict[int, int] = {}

    @property
    def truncated(self) -> bool:
        return len(self.events) >= MAX_RECORDED

    def add(self, now: float, *event: Any) -> None:
        if len(self.events) < MAX_RECORDED:
            self.events.append((int((now - self._start) * 1e6), *event))

    def node(self, now: float, name: str, key: Hashable, fingerprint: Hashable, new: bool) -> None:
        if len(self.events) < MAX_RECORDED:
            keys, inputs = self._keys, self._inputs
            number = keys.setdefault(key, len(keys) + 1)
            entry = inputs.setdefault(hash((name, fingerprint)), len(inputs) + 1)
            at = int((now - self._start) * 1e6)
            self.events.append((at, "node", name, number, entry, int(new)))

    def node_end(self, now: float, key: Hashable) -> None:
        if len(self.events) < MAX_RECORDED:
            at = int((now - self._start) * 1e6)
            self.events.append((at, "node_end", self._keys.get(key, 0)))

    def tool(self, now: float, name: str, arguments: Hashable) -> None:
        if len(self.events) < MAX_RECORDED:
            inputs = self._inputs
            entry = inputs.setdefault(hash((name, arguments)), len(inputs) + 1)
            self.events.append((int((now - self._start) * 1e6), "tool", name, entry))
