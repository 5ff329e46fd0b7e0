"""Cancels that reach a run in any pod: sidecars ask one another through Redis.

A sidecar asked to cancel a run it does not have publishes the request on one channel that
every sidecar of the fleet listens on. The sidecar whose worker owns the run queues the
cancel as for its own callers, waits until the worker took it, and pushes its answer to a
list named in the request, on which the asking sidecar waits; every other sidecar answers
at once that the run is not its. Every answer "not here", or none within the wait: no pod
has the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["CHANNEL", "CancelRelay"]

CHANNEL = "watchdog:cancels"
REPLY_TTL = 60  # seconds an answer waits for the sidecar that asked

Handler = Callable[[str, str, float], Coroutine[Any, Any, dict[str, Any] | None]]


class CancelRelay:
    """One sidecar's end of the fleet's cancel channel."""

    def __init__(self, url: str) -> None:
        import redis  # noqa: PLC0415 - the redis extra, needed only across pods

        # No read timeout: an answer is waited for with BLPOP's own.
        self._redis = redis.Redis.from_url(url, socket_connect_timeout=2)
        self._listener: threading.Thread | None = None
        self._pubsub: Any = None
        self._stopped = threading.Event()

    async def ask(self, run_id: str, reason: str, wait: float) -> dict[str, Any] | None:
        """Ask every other sidecar to cancel ``run_id``; the owner's answer, or None."""
        reply = f"watchdog:cancel-reply:{uuid.uuid4()}"
        request = json.dumps({"run_id": run_id, "reason": reason, "wait": wait, "reply": reply})
        return await asyncio.to_thread(self._ask, request, reply, wait)

    def _ask(self, request: str, reply: str, wait: float) -> dict[str, Any] | None:
        # Every sidecar listening answers, this one too: the owner once its worker took the
        # cancel (within ``wait``), the others at once that the run is not theirs.
        listening = self._redis.publish(CHANNEL, request)
        deadline = time.monotonic() + wait + 1  # a little more, for the round trips
        while listening > 0 and (left := deadline - time.monotonic()) > 0:
            found = self._redis.blpop([reply], timeout=max(0.01, left))
            if found is None:
                return None
            answer: dict[str, Any] = json.loads(found[1])
            if answer.get("here", True):
                return answer
            listening -= 1
        return None

    def start(self, loop: asyncio.AbstractEventLoop, handler: Handler) -> None:
        """Listen for other sidecars' requests; ``handler(run_id, reason, wait)`` runs on
        ``loop`` and answers for a run of this pod, or returns None."""
        # Subscribed by the listener, which tries again while Redis is away: a sidecar
        # starts, and serves its own pod, whether Redis is up or not.
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        self._listener = threading.Thread(
            target=self._listen, args=(loop, handler), name="watchdog-cancel-relay", daemon=True
        )
        self._listener.start()

    def _listen(self, loop: asyncio.AbstractEventLoop, handler: Handler) -> None:
        subscribed = False
        while not self._stopped.is_set():
            try:
                if not subscribed:
                    self._pubsub.subscribe(CHANNEL)
                    subscribed = True
                message = self._pubsub.get_message(timeout=0.5)
            except Exception:  # Redis away: listen again once it is back
                subscribed = False
                self._stopped.wait(0.5)
                continue
            if message is None or message.get("type") != "message":
                continue
            with contextlib.suppress(Exception):  # a malformed request is not ours to answer
                request = json.loads(message["data"])
                run_id, reason = str(request["run_id"]), str(request["reason"])
                wait, reply = float(request["wait"]), str(request["reply"])
                future: Any = asyncio.run_coroutine_threadsafe(handler(run_id, reason, wait), loop)
                threading.Thread(
                    target=self._answer, args=(future, reply, wait), daemon=True
                ).start()

    def _answer(self, future: Any, reply: str, wait: float) -> None:
        with contextlib.suppress(Exception):
            answer = future.result(timeout=wait + 1)
            self._redis.rpush(reply, json.dumps({"here": False} if answer is None else answer))
            self._redis.expire(reply, REPLY_TTL)

    def stop(self) -> None:
        self._stopped.set()
        if self._listener is not None:
            self._listener.join(timeout=2)
        with contextlib.suppress(Exception):
            if self._pubsub is not None:
                self._pubsub.close()
            self._redis.close()
