"""A worker's link to its sidecar: policies in, events out, cancels in.

Nothing here is on the hot path: events go into a bounded buffer that a background thread
sends in batches, policies are polled by their hash, and cancels arrive over one long-poll.
When the sidecar is away the worker goes on enforcing the policies it has, keeps what events
fit in the buffer (counting the ones it drops), and retries with backoff. A batch the sidecar
refuses outright is dropped, and counted, so it never holds up the events behind it. Only the
standard library is used, so workers need nothing of the sidecar extra.
"""

from __future__ import annotations

import collections
import http.client
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

from . import _events
from ._loading import load_policy_texts

if TYPE_CHECKING:
    from ._policies import PolicySet
    from ._supervisor import Supervisor

__all__ = ["SidecarLink", "fetch_policies"]

BATCH = 1000
MAX_BACKOFF = 5.0
# The most the sidecar takes in one event batch; a batch larger than this is sent with its
# long texts cut, and in halves if it is still too large.
EVENTS_BODY_LIMIT = 4 * 1024 * 1024
MAX_EVENT_TEXT = 4096  # characters of one text of an event; the worker's own log has it whole
# Answers that say the token (or a proxy's credentials) is wrong, not the batch: an operator
# fixes those while the worker runs, so the link keeps its events and retries, as when the
# sidecar is away, and reports the problem once rather than losing every event meanwhile.
AUTH_STATUSES = frozenset({401, 403, 407})
# Answers that ask to come back later: the same batch may well be taken then.
RETRY_STATUSES = frozenset({408, 425, 429})


class SidecarError(OSError):
    """The sidecar could not be reached, or answered with an error (``status``, if it did)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _refusal(error: SidecarError) -> int | None:
    """The status when the sidecar answered that it will never take this request: a 4xx that
    is about neither credentials nor coming back later."""
    status = error.status
    if status is None or not 400 <= status < 500 or status in AUTH_STATUSES | RETRY_STATUSES:
        return None
    return status


def _text(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def _encode(body: Any) -> bytes:
    """``body`` as JSON: values json cannot write go as their text, keys it cannot write are
    left out. What still cannot be written (a cycle) raises, and that batch is dropped."""
    return json.dumps(body, default=_text, skipkeys=True).encode()


def _trimmed(event: dict[str, Any]) -> dict[str, Any]:
    """``event`` with each text longer than ``MAX_EVENT_TEXT`` cut, and saying so."""
    long = [
        key
        for key, value in event.items()
        if isinstance(value, str) and len(value) > MAX_EVENT_TEXT
    ]
    if not long:
        return event
    trimmed = dict(event)
    for key in long:
        text = event[key]
        trimmed[key] = f"{text[:MAX_EVENT_TEXT]}... ({len(text) - MAX_EVENT_TEXT} more characters)"
    return trimmed


def _request(
    url: str,
    *,
    token: str | None,
    body: Any = None,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float,
) -> tuple[int, dict[str, str], Any]:
    """One request: a POST of ``body`` (as JSON) or of ``data`` when either is given."""
    if body is not None:
        data = _encode(body)
    request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = response.read()
            return response.status, dict(response.headers), json.loads(payload or b"null")
    except urllib.error.HTTPError as error:
        if error.code == 304:
            return 304, dict(error.headers), None
        msg = f"{url}: HTTP {error.code}"
        raise SidecarError(msg, error.code) from error
    # OSError covers URLError, timeouts and connection errors; http.client's errors are a
    # connection cut mid-answer; ValueError a body that is not JSON, or not even UTF-8.
    except (OSError, http.client.HTTPException, ValueError) as error:
        msg = f"{url}: {getattr(error, 'reason', error)}"
        raise SidecarError(msg) from error


def fetch_policies(
    url: str, token: str | None, etag: str | None = None, timeout: float = 5.0
) -> tuple[PolicySet, str] | None:
    """The sidecar's policies and their ETag; None when they have not changed."""
    headers = {"If-None-Match": etag} if etag else {}
    status, answer_headers, body = _request(
        f"{url}/v1/policies", token=token, headers=headers, timeout=timeout
    )
    if status == 304:
        return None
    etag = answer_headers.get("ETag") or answer_headers.get("etag") or ""
    return load_policy_texts(body["files"]), etag


class SidecarLink:
    """Background threads that keep one supervisor in touch with its sidecar."""

    def __init__(
        self,
        supervisor: Supervisor,
        url: str,
        token: str | None,
        *,
        etag: str | None = None,
        worker: str | None = None,
        flush_interval: float = 0.1,
        policy_interval: float = 1.0,
        max_buffer: int = 10_000,
        command_wait: float = 10.0,
    ) -> None:
        self.supervisor = supervisor
        self.url = url.rstrip("/")
        self.token = token
        self.etag = etag
        self.worker = worker or f"{socket.gethostname()}-{os.getpid()}"
        self.flush_interval = flush_interval
        self.policy_interval = policy_interval
        self.max_buffer = max_buffer
        self.command_wait = command_wait
        self._buffer: collections.deque[dict[str, Any]] = collections.deque()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        # Set when a full batch waits: a busy worker's events go out at once, not at the
        # next interval, so a burst is sent rather than dropped when the buffer fills.
        self._batch_waiting = threading.Event()
        self._auth_reported = False  # whether the sidecar's refusing the token was reported
        metrics = supervisor.metrics
        self._dropped = metrics.events_dropped
        _events.add_listener(self.enqueue)
        self._threads = [
            threading.Thread(target=self._send_loop, name="watchdog-sidecar-events", daemon=True),
            threading.Thread(
                target=self._command_loop, name="watchdog-sidecar-commands", daemon=True
            ),
        ]
        for thread in self._threads:
            thread.start()

    # -- events out ------------------------------------------------------------------------

    def enqueue(self, event: dict[str, Any]) -> None:
        """Buffer one event to send; the link hears every watchdog event through this.

        When the buffer is full the event is dropped, and counted.
        """
        with self._lock:
            if len(self._buffer) >= self.max_buffer:
                self._dropped.inc()
                return
            self._buffer.append({**event, "timestamp": time.time()})
            if len(self._buffer) >= BATCH and not self._batch_waiting.is_set():
                self._batch_waiting.set()

    @property
    def buffered(self) -> int:
        """How many events wait to be sent."""
        return len(self._buffer)

    def _take(self) -> list[dict[str, Any]]:
        with self._lock:
            count = min(BATCH, len(self._buffer))
            return [self._buffer.popleft() for _ in range(count)]

    def _give_back(self, batch: list[dict[str, Any]]) -> None:
        with self._lock:
            room = self.max_buffer - len(self._buffer)
            kept = batch[:room]
            self._buffer.extendleft(reversed(kept))
            if len(batch) > len(kept):
                self._dropped.inc(len(batch) - len(kept))

    def _refused(self, batch: list[dict[str, Any]], status: int) -> None:
        """Drop a batch the sidecar will never take, count it, and say so (without its
        events, and without the sidecar's answer, which may quote them)."""
        self._dropped.inc(len(batch))
        if all(event.get("event") == "watchdog.sidecar_batch_refused" for event in batch):
            return  # only our own reports of refusals: reporting again would never end
        _events.emit("sidecar_batch_refused", url=self.url, status=status, events=len(batch))

    def flush(self) -> bool:
        """Send what is buffered now; False when the sidecar could not take it.

        A batch the sidecar refuses (a 4xx but for credentials and "later") is dropped,
        counted and reported, and the rest is sent: sending it again would never succeed.
        """
        while batch := self._take():
            try:
                batch, data = self._fitting(batch)
                _request(f"{self.url}/v1/events", token=self.token, data=data, timeout=5.0)
            except SidecarError as error:
                if (status := _refusal(error)) is not None:
                    self._refused(batch, status)
                    continue
                self._give_back(batch)
                if error.status in AUTH_STATUSES and not self._auth_reported:
                    self._auth_reported = True
                    _events.emit(
                        "sidecar_unauthorized",
                        url=self.url,
                        status=error.status,
                        buffered=self.buffered,
                    )
                return False
            except Exception:
                self._dropped.inc(len(batch))  # a bug of ours: _send_loop reports it
                raise
            self._auth_reported = False
        return True

    def _fitting(self, batch: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bytes]:
        """The batch as a body the sidecar takes: long texts cut if it is too large, and only
        its first half (the rest back in the buffer) while it still is."""
        data = _encode({"worker": self.worker, "events": batch})
        if len(data) > EVENTS_BODY_LIMIT:
            batch = [_trimmed(event) for event in batch]
            data = _encode({"worker": self.worker, "events": batch})
        while len(data) > EVENTS_BODY_LIMIT and len(batch) > 1:
            half = len(batch) // 2
            self._give_back(batch[half:])
            batch = batch[:half]
            data = _encode({"worker": self.worker, "events": batch})
        return batch, data

    def _send_loop(self) -> None:
        backoff = 0.0
        next_policy_check = time.monotonic() + self.policy_interval
        while not self._stopped.is_set():
            if backoff:
                self._stopped.wait(backoff)  # a full batch does not cut a backoff short
            else:
                self._batch_waiting.wait(self.flush_interval)
            if self._stopped.is_set():
                return  # close() sends what is left
            self._batch_waiting.clear()
            try:
                sent = self.flush()
            except Exception as error:  # the thread must live on, to send later events
                self.supervisor.internal_error(error)
                sent = False
            if time.monotonic() >= next_policy_check:
                sent = self._check_policies() and sent
                next_policy_check = time.monotonic() + self.policy_interval
            backoff = 0.0 if sent else min(max(0.1, backoff * 2), MAX_BACKOFF)

    # -- policies in ---------------------------------------------------------------------

    def _check_policies(self) -> bool:
        try:
            fetched = fetch_policies(self.url, self.token, self.etag)
        except SidecarError:
            return False
        except Exception as error:
            self.supervisor.internal_error(error)
            return True
        if fetched is not None:
            policies, self.etag = fetched
            self.supervisor.reload(policies, f"{self.url}/v1/policies")
        return True

    # -- commands in -----------------------------------------------------------------------

    def _command_loop(self) -> None:
        backoff = 0.0
        query = urllib.parse.urlencode({"worker": self.worker, "wait": self.command_wait})
        while not self._stopped.wait(backoff):
            try:
                _, _, body = _request(
                    f"{self.url}/v1/commands?{query}",
                    token=self.token,
                    timeout=self.command_wait + 5,
                )
            except SidecarError:
                backoff = min(max(0.1, backoff * 2), MAX_BACKOFF)
                continue
            backoff = 0.0
            for command in body.get("commands", []):
                if command.get("type") == "cancel":
                    self.supervisor.cancel(command["run_id"], command.get("reason", "cancelled"))

    def close(self) -> None:
        self._stopped.set()
        self._batch_waiting.set()
        _events.remove_listener(self.enqueue)
        self.flush()
