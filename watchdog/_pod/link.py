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
import uuid
from typing import Any, Protocol

from .._core.policies import PolicySet
from .._core.runs import RunInfo
from .._core.trace import Trace
from .._files.loading import load_policy_texts
from .._sinks import events as _events
from .._sinks.metrics import Metrics
from .run_api import shown

__all__ = ["LinkedSupervisor", "SidecarLink", "fetch_policies"]

BATCH = 1000
MAX_BACKOFF = 5.0
# The most the sidecar takes in one event batch; a batch larger than this is sent with its
# long texts cut, and in halves if it is still too large.
EVENTS_BODY_LIMIT = 4 * 1024 * 1024
TRACE_EVENT = "watchdog.run_trace"  # a run's trace, sent among the events; never logged
MAX_LINKED_TRACE_EVENTS = 20_000  # about 1 MB of JSON: a trace a batch can carry
MAX_EVENT_TEXT = 4096  # characters of one text of an event; the worker's own log has it whole
MAX_SYNC_RUNS = 20_000  # the most runs the sidecar's table holds
MAX_LISTED_TEXT = 256  # characters of a graph name or thread id the sidecar's table keeps
MAX_ANSWERED = 1000
# Answers that say the token (or a proxy's credentials) is wrong, not the batch: an operator
# fixes those while the worker runs, so the link keeps its events and retries, as when the
# sidecar is away, and reports the problem once rather than losing every event meanwhile.
AUTH_STATUSES = frozenset({401, 403, 407})
# Answers that ask to come back later: the same batch may well be taken then.
RETRY_STATUSES = frozenset({408, 425, 429})


Listed = list[str | int | float | None]  # a live run, as the sidecar's table lists it


class SidecarAnswerError(ValueError):
    """The sidecar (or something in its place, a proxy) answered what it never sends."""


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
        refused = " (the sidecar refused the token)" if error.code in AUTH_STATUSES else ""
        msg = f"{url}: HTTP {error.code}{refused}"
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


class LinkedSupervisor(Protocol):
    """What a link needs of the supervisor it serves."""

    metrics: Metrics

    def emit(self, name: str, **fields: Any) -> None: ...

    def add_listener(self, listener: _events.Listener) -> None: ...

    def remove_listener(self, listener: _events.Listener) -> None: ...

    def reload(self, policies: PolicySet, source: str = "") -> None: ...

    def cancel(self, run_id: str, reason: str = ...) -> bool: ...

    def reset_thread_totals(self, thread_id: str) -> int: ...

    def internal_error(self, error: BaseException) -> None: ...

    def runs(self) -> list[RunInfo]: ...


class SidecarLink:
    """Background threads that keep one supervisor in touch with its sidecar.

    The link names its worker (``worker``, default ``hostname-pid``, which a restarted
    container or two containers of a pod share) and draws an ``incarnation`` of its own, so
    the sidecar tells every worker process apart and delivers each cancel to the one that
    owns the run. Every ``sync_interval`` it lists the worker's live runs to the sidecar,
    whose table so forgets runs whose end was lost and learns of runs whose start was.
    """

    def __init__(
        self,
        supervisor: LinkedSupervisor,
        url: str,
        token: str | None,
        *,
        etag: str | None = None,
        worker: str | None = None,
        flush_interval: float = 0.1,
        policy_interval: float = 1.0,
        max_buffer: int = 10_000,
        command_wait: float = 10.0,
        sync_interval: float = 2.0,
    ) -> None:
        self.supervisor = supervisor
        self.url = url.rstrip("/")
        self.token = token
        self.etag = etag
        self.worker = worker or f"{socket.gethostname()}-{os.getpid()}"
        self.incarnation = uuid.uuid4().hex[:16]
        self.flush_interval = flush_interval
        self.policy_interval = policy_interval
        self.max_buffer = max_buffer
        self.command_wait = command_wait
        self.sync_interval = sync_interval
        self._buffer: collections.deque[dict[str, Any]] = collections.deque()
        self._lock = threading.Lock()  # guards _buffer, _enqueued and _taken
        self._stopped = threading.Event()
        # Set when a full batch waits: a busy worker's events go out at once, not at the
        # next interval, so a burst is sent rather than dropped when the buffer fills.
        self._batch_waiting = threading.Event()
        self._auth_reported = False  # whether the sidecar's refusing the token was reported
        # Events put in the buffer, and taken out of it, since the start: a list of live runs
        # goes with the batch that takes the last event buffered before it was made.
        self._enqueued = self._taken = 0
        # What this worker answered to the commands it took lately, by command id: a command
        # sent again (its acknowledgement was lost) is answered alike, not applied twice.
        self._answered: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        metrics = supervisor.metrics
        self._dropped = metrics.events_dropped
        supervisor.add_listener(self.enqueue)  # this supervisor's events, no other's
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
            self._enqueued += 1
            if len(self._buffer) >= BATCH and not self._batch_waiting.is_set():
                self._batch_waiting.set()

    def send_trace(self, trace: Trace) -> None:
        """Send a run's trace with the events, for the sidecar to keep; one too large for a
        batch is left out (the file, if one is written, still has it)."""
        record = trace.as_record()
        if len(trace.events) <= MAX_LINKED_TRACE_EVENTS:
            self.enqueue({"event": TRACE_EVENT, "trace": record})

    @property
    def buffered(self) -> int:
        """How many events wait to be sent."""
        return len(self._buffer)

    def _take(self) -> list[dict[str, Any]]:
        with self._lock:
            count = min(BATCH, len(self._buffer))
            self._taken += count
            return [self._buffer.popleft() for _ in range(count)]

    def _give_back(self, batch: list[dict[str, Any]]) -> None:
        with self._lock:
            room = self.max_buffer - len(self._buffer)
            kept = batch[:room]
            self._buffer.extendleft(reversed(kept))
            self._taken -= len(kept)
            if len(batch) > len(kept):
                self._dropped.inc(len(batch) - len(kept))

    def _refused(self, batch: list[dict[str, Any]], status: int) -> None:
        """Drop a batch the sidecar will never take, count it, and say so (without its
        events, and without the sidecar's answer, which may quote them)."""
        self._dropped.inc(len(batch))
        if all(event.get("event") == "watchdog.sidecar_batch_refused" for event in batch):
            return  # only our own reports of refusals: reporting again would never end
        self.supervisor.emit(
            "sidecar_batch_refused", url=self.url, status=status, events=len(batch)
        )

    def _live_runs(self) -> list[Listed] | None:
        """The worker's live runs, as the sidecar's table lists them: id, graph, thread,
        steps, tokens and start (epoch seconds). None when there are more than the sidecar
        keeps (it could not take the list)."""
        runs = self.supervisor.runs()
        if len(runs) > MAX_SYNC_RUNS:
            return None
        return [
            [
                run.run_id,
                run.graph[:MAX_LISTED_TEXT],
                run.thread_id and run.thread_id[:MAX_LISTED_TEXT],
                run.steps,
                run.tokens,
                round(run.started_at.timestamp(), 3),
            ]
            for run in runs
        ]

    def flush(self, *, sync: bool = False, timeout: float = 5.0) -> bool:
        """Send what is buffered now, and with ``sync`` the list of live runs; False when the
        sidecar could not take it.

        The list is made first and sent with the batch that takes the last event buffered
        before it: the sidecar then has every event older than the list, and a run of its
        table missing from the list has certainly ended. A batch the sidecar refuses (a 4xx
        but for credentials and "later") is dropped, counted and reported, and the rest is
        sent: sending it again would never succeed.
        """
        live, listed_after = (self._live_runs(), self._enqueued) if sync else (None, 0)
        while True:
            batch = self._take()
            due = live if live is not None and self._taken >= listed_after else None
            if not batch and due is None:
                return True
            try:
                batch, data, live_sent = self._fitting(batch, due)
                _request(f"{self.url}/v1/events", token=self.token, data=data, timeout=timeout)
            except SidecarError as error:
                if (status := _refusal(error)) is not None:
                    self._refused(batch, status)
                    if live_sent:
                        live = None  # refused with it: not sent again and again
                    continue
                self._give_back(batch)
                if error.status in AUTH_STATUSES and not self._auth_reported:
                    self._auth_reported = True
                    self.supervisor.emit(
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
            if live_sent:
                live = None

    def _fitting(
        self, batch: list[dict[str, Any]], live: list[Listed] | None = None
    ) -> tuple[list[dict[str, Any]], bytes, bool]:
        """The batch as a body the sidecar takes: long texts cut if it is too large, and only
        its first half (the rest back in the buffer) while it still is. With the body, whether
        it lists the ``live`` runs: not when part of the batch went back, as the list must
        come after every event older than it."""

        def body(events: list[dict[str, Any]], live: list[Listed] | None) -> bytes:
            fields: dict[str, Any] = {"worker": self.worker, "incarnation": self.incarnation}
            return _encode({**fields, "events": events, **({} if live is None else {"live": live})})

        data = body(batch, live)
        if len(data) > EVENTS_BODY_LIMIT:
            batch = [_trimmed(event) for event in batch]
            data = body(batch, live)
        while len(data) > EVENTS_BODY_LIMIT and len(batch) > 1:
            half = len(batch) // 2
            self._give_back(batch[half:])
            batch, live = batch[:half], None
            data = body(batch, live)
        return batch, data, live is not None

    def _send_loop(self) -> None:
        backoff = 0.0
        next_policy_check = time.monotonic() + self.policy_interval
        next_sync = time.monotonic() + self.sync_interval
        while not self._stopped.is_set():
            if backoff:
                self._stopped.wait(backoff)  # a full batch does not cut a backoff short
            else:
                until_sync = next_sync - time.monotonic()
                self._batch_waiting.wait(max(0.0, min(self.flush_interval, until_sync)))
            if self._stopped.is_set():
                return  # close() sends what is left
            self._batch_waiting.clear()
            try:
                sync = time.monotonic() >= next_sync
                sent = self.flush(sync=sync)
                if sync and sent:
                    next_sync = time.monotonic() + self.sync_interval
                if time.monotonic() >= next_policy_check:
                    sent = self._check_policies() and sent
                    next_policy_check = time.monotonic() + self.policy_interval
            except Exception as error:  # the thread must live on, to send later events
                self.supervisor.internal_error(error)
                sent = False
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
        """Long-poll for commands, apply them, and acknowledge them with the next poll.

        Whatever goes wrong in a round (the sidecar away, an answer that is not what the
        sidecar sends, as a proxy's ``[]``, or a bug of ours) is counted, backed off from,
        and the loop goes on: a worker must never stop taking cancels.
        """
        backoff = 0.0
        acks: list[dict[str, Any]] = []
        while not self._stopped.wait(backoff):
            try:
                acks = self._poll(acks)
            except SidecarError:
                backoff = min(max(0.1, backoff * 2), MAX_BACKOFF)
                continue
            except Exception as error:
                self.supervisor.internal_error(error)
                backoff = min(max(0.1, backoff * 2), MAX_BACKOFF)
                continue
            backoff = 0.0

    def _poll(self, acks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One long-poll, acknowledging ``acks``; returns the acknowledgements of what came."""
        url = f"{self.url}/v1/commands"
        _, _, answer = _request(
            url,
            token=self.token,
            body={
                "worker": self.worker,
                "incarnation": self.incarnation,
                "wait": self.command_wait,
                "acks": acks,
            },
            timeout=self.command_wait + 5,
        )
        commands = answer.get("commands") if isinstance(answer, dict) else None
        if not isinstance(commands, list):
            msg = f"{url} answered {shown(answer)}, which is not {{'commands': [...]}}"
            raise SidecarAnswerError(msg)
        answered = []
        for command in commands:
            try:
                answered.append(self._apply(command))
            except SidecarAnswerError as error:  # one bad command does not stop the others
                self.supervisor.internal_error(error)
        return answered

    def _apply(self, command: object) -> dict[str, Any]:
        """Apply a command the sidecar sent, once: one sent again gets the same answer."""
        if not (isinstance(command, dict) and isinstance(command.get("id"), str)):
            msg = f"{self.url}/v1/commands sent {shown(command)}, which is not a command"
            raise SidecarAnswerError(msg)
        known = self._answered.get(command["id"])
        if known is not None:
            return known
        kind = command.get("type")
        if kind == "cancel" and isinstance(command.get("run_id"), str):
            run_id, reason = command["run_id"], command.get("reason")
            reason = reason if isinstance(reason, str) else "cancelled"
            applied = self.supervisor.cancel(run_id, reason)
            live = applied or any(run.run_id == run_id for run in self.supervisor.runs())
            ack = {"id": command["id"], "applied": applied, "live": live}
        elif kind == "reset_thread_totals" and isinstance(command.get("thread_id"), str):
            reset = self.supervisor.reset_thread_totals(command["thread_id"])
            ack = {"id": command["id"], "applied": reset > 0, "checkpointers": reset}
        else:
            msg = (
                f"{self.url}/v1/commands sent {shown(command)}, which is not a cancel or a "
                "reset of a thread's totals"
            )
            raise SidecarAnswerError(msg)
        self._answered[command["id"]] = ack
        while len(self._answered) > MAX_ANSWERED:
            self._answered.popitem(last=False)
        return ack

    # -- closing ---------------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Stop, sending what is buffered within ``timeout`` seconds (retrying while the
        sidecar is away); what could not be sent by then is counted as dropped and reported
        as a ``watchdog.sidecar_events_unsent`` event."""
        if self._stopped.is_set():
            return
        deadline = time.monotonic() + timeout
        self._stopped.set()
        self._batch_waiting.set()
        self.supervisor.remove_listener(self.enqueue)
        self._threads[0].join(max(0.0, deadline - time.monotonic()))  # its batch goes first
        backoff = 0.05
        while self.buffered:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                sent = self.flush(timeout=max(0.05, min(5.0, left)))
            except Exception as error:
                self.supervisor.internal_error(error)
                break
            if not sent:
                time.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
                backoff = min(backoff * 2, 1.0)
        unsent = self.buffered
        if unsent:
            with self._lock:
                self._buffer.clear()
            self._dropped.inc(unsent)
            self.supervisor.emit(
                "sidecar_events_unsent", url=self.url, events=unsent, waited_s=timeout
            )
