"""The live runs of every pod, in Redis: at each heartbeat a sidecar writes its pod's runs
there with a time to live, so ``GET /v1/runs?fleet=true`` on any pod lists the fleet's, and
a pod that died drops out of the list when its entry expires.

One key per pod holds its runs (one JSON document, written whole), and one sorted set names
the pods by the time their entry expires, so a listing reads the live pods without scanning
the key space.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from typing import Any

__all__ = ["FleetRegistry"]

PODS = "watchdog:fleet:pods"
RUNS = "watchdog:fleet:runs:"  # + the pod's name


class FleetRegistry:
    """One sidecar's entry in the fleet's registry, and its view of the others'.

    The sidecar's event loop hands its runs to ``beat``; a thread of this registry writes
    them, so the loop never waits on Redis. ``read`` blocks: call it from a thread.
    """

    def __init__(self, url: str, pod: str, *, ttl: float) -> None:
        import redis  # noqa: PLC0415 - the redis extra, needed only across pods

        self.pod, self.ttl = pod, ttl
        self._redis = redis.Redis.from_url(
            url, socket_timeout=1, socket_connect_timeout=1, decode_responses=True
        )
        self._pending: tuple[list[dict[str, Any]], int] | None = None
        self._error: Exception | None = None
        self._wake = threading.Condition()
        self._stopped = False
        self._writer = threading.Thread(target=self._write, name="watchdog-fleet", daemon=True)
        self._writer.start()

    def beat(self, runs: list[dict[str, Any]], total: int) -> None:
        """Have this pod's live runs written (``total``: how many it has, when ``runs`` lists
        only some); raises the error of the last write that failed (since the last beat), so
        the loop that beats reports it."""
        with self._wake:
            self._pending = runs, total
            self._wake.notify()
            error, self._error = self._error, None
        if error is not None:
            raise error

    def _write(self) -> None:
        while True:
            with self._wake:
                while self._pending is None and not self._stopped:
                    self._wake.wait()
                pending, self._pending = self._pending, None
                if self._stopped or pending is None:
                    return
            runs, total = pending
            listed = {"pod": self.pod, "heartbeat_at": time.time(), "runs": runs, "total": total}
            entry = json.dumps(listed)
            try:
                with self._redis.pipeline(transaction=False) as pipe:
                    pipe.set(RUNS + self.pod, entry, px=int(self.ttl * 1000))
                    pipe.zadd(PODS, {self.pod: time.time() + self.ttl})
                    pipe.execute()
            except Exception as error:
                with self._wake:
                    self._error = error

    def read(self) -> list[dict[str, Any]]:
        """Every live pod's entry, ``{"pod", "heartbeat_at", "runs", "total"}``, by pod name."""
        now = time.time()
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(PODS, "-inf", now)
            pipe.zrange(PODS, 0, -1)
            _, pods = pipe.execute()
        names = sorted(pods)
        if not names:
            return []
        entries = self._redis.mget([RUNS + name for name in names])
        # An entry that expired since the pods were read is a pod gone: left out.
        return [json.loads(entry) for entry in entries if entry is not None]

    def stop(self) -> None:
        """Stop writing, and leave the registry: a pod that stops cleanly is not listed."""
        with self._wake:
            self._stopped = True
            self._wake.notify()
        self._writer.join(timeout=2)
        with contextlib.suppress(Exception), self._redis.pipeline(transaction=False) as pipe:
            pipe.delete(RUNS + self.pod)
            pipe.zrem(PODS, self.pod)
            pipe.execute()
        with contextlib.suppress(Exception):
            self._redis.close()
