"""``watchdog serve``: the control plane for the agent worker processes of one pod.

Workers enforce locally and never wait on this server on their hot path. It serves and
hot-reloads the policies, takes the workers' events in batches, keeps the live-run table of
the pod, exposes the pod's one ``/metrics``, and delivers cancels to the worker that owns the
run (each worker long-polls for its commands).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .._sinks.metrics import Metrics
from .fleet import FleetRegistry
from .link import EVENTS_BODY_LIMIT
from .policy_source import PolicySource
from .relay import CancelRelay
from .run_api import MAX_REASON, BodyError, cancel_reason, refusal, timestamp
from .table import MAX_RUNS, MAX_TRACES, Ack, LiveRun, SidecarState

if TYPE_CHECKING:
    import uvicorn

__all__ = ["StartError", "create_app", "serve"]

MAX_BATCH = 10_000
MAX_WAIT_SECONDS = 30.0
CANCEL_WAIT = 5.0  # seconds a cancel waits for its worker to take it, by default
# Request bodies are read only once the token is checked, and never past these sizes: an
# event batch of 1,000 events takes about 300 KB, every other body a few hundred bytes.
BODY_LIMIT = 64 * 1024
READ_TIMEOUT = 10.0  # seconds for a request's headers, and again for its body
KEEP_ALIVE_TIMEOUT = 5.0
HEARTBEAT = 2.0  # seconds between a pod's listings of its runs in the fleet's registry
HEARTBEATS_TO_EXPIRE = 5  # a pod whose listing is this many heartbeats old has gone
MAX_FLEET_RUNS = 2000  # of one pod's runs, listed in the fleet's registry (all are counted)
OPEN_PATHS = frozenset(("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/redoc"))

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class EventBatch(BaseModel):
    worker: str = Field(min_length=1, max_length=200)
    incarnation: str = Field(default="", max_length=64)
    events: list[dict[str, Any]] = Field(max_length=MAX_BATCH)
    # Every run the worker has now, listed after the events before it were taken.
    live: list[LiveRun] | None = Field(default=None, max_length=MAX_RUNS)


class CommandPoll(BaseModel):
    worker: str = Field(min_length=1, max_length=200)
    incarnation: str = Field(default="", max_length=64)
    wait: float = Field(default=20.0, ge=0, le=MAX_WAIT_SECONDS)
    acks: list[Ack] = Field(default_factory=list, max_length=1000)


# /v1/events reads its body itself (see ``_event_batch``); this documents it all the same.
EVENT_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": EventBatch.model_json_schema()}},
    }
}


def _event_batch(body: bytes) -> EventBatch:
    """A batch of events parsed and validated in one pass of pydantic's JSON parser.

    That takes half the time ``json.loads`` and then validating the objects took, and the
    events are most of what the sidecar does. A bad batch is a 422 shaped as FastAPI's own.
    """
    try:
        return EventBatch.model_validate_json(body)
    except ValidationError as error:
        refused = error
    if any(problem["type"] == "json_invalid" for problem in refused.errors()):
        # Python's parser reads JSON that pydantic's refuses: a lone surrogate in a string
        # (a path decoded with surrogateescape, say). Take what json.loads takes, as ever,
        # with such characters as "?", which the metrics and the run table can encode.
        try:
            text = json.dumps(json.loads(body), ensure_ascii=False)
        except (ValueError, RecursionError):  # not JSON, or nested too deep to read
            pass
        else:
            try:
                return EventBatch.model_validate_json(text.encode("utf-8", "replace"))
            except ValidationError as error:
                refused = error  # what is wrong once the JSON is read
    problems = [
        {
            **problem,
            "loc": ("body", *problem["loc"]),
            # Not the whole body back: FastAPI does not send it back either.
            **({"input": {}} if problem["type"] == "json_invalid" else {}),
        }
        for problem in refused.errors(include_url=False)
    ]
    raise RequestValidationError(problems)


CANCEL_REASON = "cancelled through the sidecar"


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # as cancel_reason reads it

    reason: str = Field(default=CANCEL_REASON, max_length=MAX_REASON)


# The cancel reads its body itself, as JSON whatever its Content-Type (see ``cancel_reason``).
CANCEL_BODY = {
    "requestBody": {
        "required": False,
        "description": "Read as JSON whatever the Content-Type; an empty body gives no reason.",
        "content": {"application/json": {"schema": CancelRequest.model_json_schema()}},
    }
}


def _cancel_reason(body: bytes) -> str:
    """The reason a cancel's body gives; a bad body is a 422 shaped as FastAPI's own."""
    try:
        return cancel_reason(body, CANCEL_REASON)
    except BodyError as error:
        loc = ("body",) if error.key is None else ("body", error.key)
        raise RequestValidationError(
            [{"type": "value_error", "loc": loc, "msg": str(error)}]
        ) from None


# A time as ``timestamp`` writes it: RFC 3339, in UTC, to the millisecond.
Time = Annotated[
    str, Field(json_schema_extra={"format": "date-time", "example": "2026-11-23T21:10:27.123Z"})
]


class CancelState(BaseModel):
    reason: str
    requested_at: Time
    delivered: bool = Field(description="whether the worker took it")
    applied: bool | None = Field(
        description="whether its cancel stopped the run (false: it was stopping already); "
        "null until it is delivered"
    )


class RunState(BaseModel):
    """A run of the table: the worker process that owns it, and what it said of the run."""

    run_id: str
    worker: str
    incarnation: str
    thread_id: str | None
    graph: str
    status: str = Field(
        description="running or cancelling; once ended, completed, cancelled, failed, or "
        "lost when its end never arrived"
    )
    started_at: Time | None = Field(description="null when its worker never said")
    finished_at: Time | None = Field(description="when it left the table; null while live")
    elapsed_s: float | None = Field(
        description="seconds since it started; once ended, how long it ran. Null when its "
        "start is unknown"
    )
    steps: int = Field(description="steps so far, as its worker last said (every 2 s)")
    tokens: int = Field(description="tokens used so far, as its worker last said")
    policies: list[str]
    cancel: CancelState | None = Field(description="the last cancel asked for through the sidecar")
    pod: str | None = Field(None, description="with fleet=true: the pod whose worker has it")


class PodState(BaseModel):
    """A pod of the fleet, as the registry in Redis has it."""

    pod: str
    heartbeat_at: Time = Field(description="when its sidecar last listed its runs")
    runs: int = Field(description="its live runs; the fleet lists at most 2,000 of a pod's")


class RunList(BaseModel):
    runs: list[RunState]
    pods: list[PodState] | None = Field(None, description="with fleet=true: every live pod")


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        detail = f"the request body is larger than this endpoint takes ({limit} bytes)"
        super().__init__(status_code=413, detail=detail, headers={"Connection": "close"})


class BodyTooSlow(HTTPException):
    def __init__(self, seconds: float) -> None:
        detail = f"the request body did not arrive within {seconds:g} s"
        super().__init__(status_code=408, detail=detail, headers={"Connection": "close"})


def _authorization(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return bytes(value)
    return None


async def _refuse(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]]) -> None:
    """Answer without reading the body, and close the connection: what is left of the body
    is never read."""
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Guard:
    """The sidecar's door, in front of FastAPI, which reads and parses a body before any
    dependency runs: every path but the open ones needs the token before anything is read,
    a body is refused past its size (at once when its Content-Length says so), and must
    arrive within ``read_timeout``."""

    def __init__(self, app: ASGIApp, *, token: str, read_timeout: float) -> None:
        self.app = app
        self.token = token.encode()
        self.read_timeout = read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path not in OPEN_PATHS and not path.startswith("/docs/"):
            refused = refusal(_authorization(scope), self.token)
            if refused is not None:
                detail, challenge = refused
                await _refuse(send, 401, detail, [(b"www-authenticate", challenge)])
                return
        limit = EVENTS_BODY_LIMIT if path == "/v1/events" else BODY_LIMIT
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                error = BodyTooLarge(limit)
                await _refuse(send, error.status_code, error.detail, [])
                return
        await self.app(scope, self._bounded(receive, limit), send)

    def _bounded(self, receive: Receive, limit: int) -> Receive:
        """``receive``, refusing a body past ``limit`` bytes or past the read deadline.

        Once the body is in, later calls (a long-poll waiting to hear of a disconnect) are
        not timed.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.read_timeout
        received = 0
        complete = False

        async def receive_body() -> Message:
            nonlocal received, complete
            if complete:
                return await receive()
            try:
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    message = await receive()
            except TimeoutError:
                raise BodyTooSlow(self.read_timeout) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
                complete = not message.get("more_body", False)
            else:
                complete = True  # the client is gone
            return message

        return receive_body


def create_app(  # noqa: PLR0915 - the routes are closures over the state
    source: PolicySource,
    *,
    token: str,
    registry: CollectorRegistry | None = None,
    poll_interval: float = 1.0,
    worker_timeout: float = 15.0,
    read_timeout: float = READ_TIMEOUT,
    docs: bool = False,
    redis_url: str | None = None,
    pod: str | None = None,
    heartbeat: float = HEARTBEAT,
) -> FastAPI:
    """The sidecar's ASGI app. ``token`` guards every path but ``/healthz``, ``/readyz``,
    ``/metrics`` and the API's description; ``docs`` serves ``/docs`` and ``/redoc``;
    with ``redis_url``, a cancel reaches runs of the other pods that share that Redis, and
    every ``heartbeat`` seconds this pod (``pod``, the host's name unless given) lists its
    live runs there for ``GET /v1/runs?fleet=true``."""
    registry = registry if registry is not None else source.metrics.registry
    state = SidecarState(source, registry, worker_timeout=worker_timeout)
    relay = CancelRelay(redis_url) if redis_url else None
    pod = pod or socket.gethostname()
    fleet: list[FleetRegistry] = []  # the pod's entry in the fleet's registry, once started

    def beat() -> None:
        now = time.time()
        listed = itertools.islice(state.runs.values(), MAX_FLEET_RUNS)
        fleet[0].beat([row.as_dict(now) for row in listed], len(state.runs))

    async def cancel_here(run_id: str, reason: str, wait: float) -> dict[str, Any] | None:
        """Cancel a run of this pod's workers and wait until its worker took the cancel;
        None when no worker of this pod has the run."""
        row = state.runs.get(run_id)
        if row is None:
            return None
        command = state.cancel(row, reason)
        await _any_done((command.taken.wait(), state.closing.wait()), wait)
        return {
            "run_id": run_id,
            "worker": row.worker,
            "incarnation": row.incarnation,
            "reason": reason,
            "delivered": command.taken.is_set() and command.live,
            "applied": command.applied,
        }

    def authorized(authorization: Annotated[str | None, Header()] = None) -> None:
        given = None if authorization is None else authorization.encode("latin-1")
        refused = refusal(given, token.encode())
        if refused is not None:
            detail, challenge = refused
            headers = {"WWW-Authenticate": challenge.decode()}
            raise HTTPException(status_code=401, detail=detail, headers=headers)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks = [
            asyncio.create_task(state.loops["policy_watch"].run(source.check, poll_interval)),
            asyncio.create_task(state.loops["reaper"].run(state.reap, poll_interval)),
        ]
        loop = asyncio.get_running_loop()
        if relay is not None:
            assert redis_url is not None
            relay.start(loop, cancel_here)
            fleet.append(FleetRegistry(redis_url, pod, ttl=heartbeat * HEARTBEATS_TO_EXPIRE))
            beating = state.add_loop("fleet_heartbeat")
            beating.once(beat)
            tasks.append(asyncio.create_task(beating.run(beat, heartbeat)))
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(
                signal.SIGHUP, state.loops["policy_watch"].once, partial(source.check, force=True)
            )
        try:
            yield
        finally:
            if relay is not None:
                relay.stop()
            for entry in fleet:
                await asyncio.to_thread(entry.stop)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = FastAPI(
        title="langgraph-watchdog sidecar",
        description="Policies, events, metrics and cancels for the agent workers of a pod.",
        version="1",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
    )
    app.add_middleware(Guard, token=token, read_timeout=read_timeout)
    app.state.sidecar = state
    # The Guard has checked the token already; this documents it, and holds if it moves.
    guarded = [Depends(authorized)]

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> dict[str, Any]:
        # Always ready: a pod's readiness gates its agent's traffic, and a sidecar that
        # keeps the last good policies while it reports a problem still serves them.
        return {
            "ready": True,
            "policies": {
                "hash": source.hash,
                "count": len(source.policies),
                "files_valid": source.error is None,
                "reload_error": source.error,
            },
            "loops": {name: loop.as_dict() for name, loop in state.loops.items()},
            "workers": len(state.workers),
            "polling": sum(1 for worker in state.workers.values() if worker.polling),
            "runs": len(state.runs),
        }

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/policies", dependencies=guarded)
    async def policies(request: Request, response: Response) -> Any:
        etag = f'"{source.hash}"'
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag})
        response.headers["ETag"] = etag
        return source.as_dict()

    @app.post("/v1/policies/reload", dependencies=guarded)
    async def reload() -> dict[str, Any]:
        state.loops["policy_watch"].once(partial(source.check, force=True))
        return {"hash": source.hash, "reload_error": source.error}

    @app.post("/v1/events", status_code=202, dependencies=guarded, openapi_extra=EVENT_BATCH_BODY)
    async def events(request: Request) -> dict[str, int]:
        batch = _event_batch(await request.body())
        state.ingest(batch.worker, batch.events, incarnation=batch.incarnation, live=batch.live)
        return {"accepted": len(batch.events)}

    @app.post("/v1/commands", dependencies=guarded)
    async def commands(poll: CommandPoll, request: Request) -> dict[str, list[dict[str, Any]]]:
        """A worker's long-poll: it acknowledges the commands of its last answer, and waits
        up to ``wait`` seconds for more."""
        row = state.worker(poll.worker, poll.incarnation)
        state.acknowledged(row, poll.acks)
        if not row.queued and poll.wait > 0 and not state.closing.is_set():
            row.wake.clear()
            row.polling += 1
            try:
                if not await _woken(row.wake, request, poll.wait):
                    return {"commands": []}  # it went away: what is queued waits for it
            finally:
                row.polling -= 1
                row.last_seen = state.clock()
        return {"commands": state.take_commands(row)}

    @app.get(
        "/v1/runs", dependencies=guarded, response_model=RunList, response_model_exclude_unset=True
    )
    async def runs(
        fleet_wide: Annotated[bool, Query(alias="fleet")] = False,
    ) -> dict[str, list[dict[str, Any]]]:
        """The live runs of this pod's workers; with ``fleet=true``, of every pod that shares
        this sidecar's Redis (``pod`` says whose; another pod's runs are as of its last
        heartbeat, ``pods`` says when that was)."""
        now = time.time()
        here = [row.as_dict(now) for row in state.runs.values()]
        if not fleet_wide:
            return {"runs": here}
        if not fleet:
            msg = (
                "this sidecar has no Redis (WATCHDOG_REDIS_URL) to list the fleet's runs from; "
                "without fleet=true it lists its own pod's"
            )
            raise HTTPException(status_code=409, detail=msg)
        try:
            entries = await asyncio.to_thread(fleet[0].read)
        except Exception as error:
            msg = (
                f"the fleet's registry in Redis did not answer ({type(error).__name__}: "
                f"{error}); without fleet=true this sidecar lists its own pod's runs"
            )
            raise HTTPException(status_code=503, detail=msg) from None
        others = [entry for entry in entries if entry["pod"] != pod]
        pods = [{"pod": pod, "heartbeat_at": timestamp(now), "runs": len(here)}]
        pods += [
            {"pod": e["pod"], "heartbeat_at": timestamp(e["heartbeat_at"]), "runs": e["total"]}
            for e in others
        ]
        listed = [{**run, "pod": pod} for run in here]
        listed += [{**run, "pod": entry["pod"]} for entry in others for run in entry["runs"]]
        return {"runs": listed, "pods": pods}

    @app.get("/v1/traces", dependencies=guarded, response_class=Response)
    async def traces(
        graph: str | None = None, limit: Annotated[int, Query(ge=1, le=MAX_TRACES)] = MAX_TRACES
    ) -> Response:
        """The traces of the pod's last runs (of workers that record them), oldest first, as
        JSON lines for ``watchdog replay``; ``graph`` keeps one graph's."""
        kept = [t for t in state.traces if graph is None or t.graph == graph][-limit:]
        body = "".join(trace.to_json() + "\n" for trace in kept)
        return Response(body, media_type="application/x-ndjson")

    @app.get("/v1/runs/{run_id}", dependencies=guarded, response_model=RunState)
    async def run(run_id: str) -> dict[str, Any]:
        """A live run, or one that ended lately (``status`` says how: ``completed``,
        ``cancelled``, ``failed``, or ``lost`` when its end never arrived)."""
        row = state.runs.get(run_id) or state.ended.get(run_id)
        if row is None:
            raise HTTPException(status_code=404, detail=f"no run {run_id!r} in the table")
        return row.as_dict(time.time())

    @app.post(
        "/v1/runs/{run_id}/cancel",
        status_code=202,
        dependencies=guarded,
        openapi_extra=CANCEL_BODY,
    )
    async def cancel(
        run_id: str,
        request: Request,
        wait: Annotated[float, Query(ge=0, le=MAX_WAIT_SECONDS)] = CANCEL_WAIT,
    ) -> dict[str, Any]:
        """Cancel a run in the worker that owns it. The answer comes once that worker has
        taken the cancel (``applied``: whether it stopped the run; false when it was
        stopping already), or 504 when it did not within ``wait`` seconds (503 when the
        sidecar stopped first)."""
        reason = _cancel_reason(await request.body())
        row = state.runs.get(run_id)
        if row is None and relay is not None:
            # Not a run of this pod: the sidecar of the pod that has it answers.
            try:
                answer = await relay.ask(run_id, reason, wait)
            except Exception as error:
                msg = (
                    f"no live run {run_id!r} in this pod, and Redis, which reaches the other "
                    f"pods, did not answer ({type(error).__name__}: {error})"
                )
                raise HTTPException(status_code=503, detail=msg) from None
            if answer is None:
                raise HTTPException(status_code=404, detail=f"no live run {run_id!r} in any pod")
            if not answer["delivered"]:
                msg = (
                    f"the pod that has run {run_id!r} did not deliver its cancel within {wait:g} s"
                )
                raise HTTPException(status_code=504, detail=msg)
            return {**answer, "relayed": True}
        if row is None:
            raise HTTPException(status_code=404, detail=f"no live run {run_id!r}")
        command = state.cancel(row, reason)
        await _any_done((command.taken.wait(), state.closing.wait()), wait)
        where = f"worker {row.worker!r} (incarnation {row.incarnation or 'unknown'})"
        if not command.taken.is_set() and state.closing.is_set():
            msg = (
                f"the sidecar is stopping, and {where} had not taken the cancel of run "
                f"{run_id!r}: it may not reach the run; ask again once the sidecar is back"
            )
            raise HTTPException(status_code=503, detail=msg)
        if not command.taken.is_set():
            msg = (
                f"{where} did not take the cancel of run {run_id!r} within {wait:g} s; it "
                f"stays queued for that worker, and GET /v1/runs/{run_id} shows when it is "
                "delivered"
            )
            raise HTTPException(status_code=504, detail=msg)
        if not command.live:
            msg = f"{where} has no run {run_id!r}: it has left the table"
            raise HTTPException(status_code=404, detail=msg)
        return {
            "run_id": run_id,
            "worker": row.worker,
            "incarnation": row.incarnation,
            "reason": reason,
            "delivered": True,
            "applied": command.applied,
        }

    @app.post("/v1/threads/{thread_id}/reset", dependencies=guarded)
    async def reset_thread_totals(
        thread_id: str,
        response: Response,
        wait: Annotated[float, Query(ge=0, le=MAX_WAIT_SECONDS)] = CANCEL_WAIT,
    ) -> dict[str, Any]:
        """Reset a thread's ``scope: thread`` totals, so a thread that reached its limit
        takes runs again: every worker process resets them in the checkpointers it knows.
        200 once every worker has taken it (``checkpointers``: how many held totals of the
        thread); 202 when some did not within ``wait`` seconds (``taken`` false: it stays
        queued for them); 409 when no worker is linked."""
        commands = state.reset_thread_totals(thread_id)
        if not commands:
            msg = "no worker is linked to the sidecar: none can reset the thread's totals"
            raise HTTPException(status_code=409, detail=msg)
        taken = asyncio.gather(*(command.taken.wait() for command in commands.values()))
        await _any_done((taken, state.closing.wait()), wait)  # a stopping server answers now
        if not all(command.taken.is_set() for command in commands.values()):
            response.status_code = 202
        return {
            "thread_id": thread_id,
            "checkpointers": sum(command.checkpointers or 0 for command in commands.values()),
            "workers": [
                {
                    "worker": name,
                    "incarnation": incarnation,
                    "taken": command.taken.is_set(),
                    "checkpointers": command.checkpointers,
                }
                for (name, incarnation), command in commands.items()
            ],
        }

    return app


async def _any_done(awaitables: tuple[Awaitable[Any], ...], timeout: float) -> None:
    """Wait until one of ``awaitables`` is done, at most ``timeout`` seconds."""
    waits = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()


async def _woken(wake: asyncio.Event, request: Request, timeout: float) -> bool:
    """Wait for ``wake`` up to ``timeout``; False when the client went away first.

    A long-poll whose worker is gone (killed, restarted) must not take the commands meant for
    it: they would be answered into a closed socket and lost.
    """

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    woken, left = asyncio.ensure_future(wake.wait()), asyncio.ensure_future(gone())
    try:
        await asyncio.wait({woken, left}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        woken.cancel()
        left.cancel()
    return not (left.done() and not left.cancelled())


class StartError(Exception):
    """``watchdog serve`` cannot start; the message says why, in one line."""


def serve(
    policies: str,
    *,
    host: str = "127.0.0.1",
    port: int = 9464,
    token_file: str | None = None,
    poll_interval: float = 1.0,
    worker_timeout: float = 15.0,
    read_timeout: float = READ_TIMEOUT,
    heartbeat: float = HEARTBEAT,
    docs: bool = False,
) -> int:
    """Run the sidecar until interrupted.

    ``StartError`` when the token cannot be read or the address cannot be listened on,
    ``PolicyError`` when the policies are invalid.
    """
    import uvicorn  # noqa: PLC0415 - the sidecar extra

    token = _read_token(token_file)
    metrics = Metrics(CollectorRegistry())
    source = PolicySource(policies, metrics)
    metrics.policy_reloads.labels("ok").inc()
    app = create_app(
        source,
        token=token,
        poll_interval=poll_interval,
        worker_timeout=worker_timeout,
        read_timeout=read_timeout,
        docs=docs,
        redis_url=os.environ.get("WATCHDOG_REDIS_URL") or source.policies.redis_url,
        pod=os.environ.get("WATCHDOG_POD_NAME") or None,
        heartbeat=heartbeat,
    )
    listener = _listen(host, port)
    address, bound_port = listener.getsockname()[:2]
    shown = f"[{address}]" if ":" in address else address
    names = ", ".join(p.name for p in source.policies.policies)
    print(f"watchdog serve: listening on http://{shown}:{bound_port}", file=sys.stderr)
    print(
        f"watchdog serve: {len(source.policies)} policies from {policies} "
        f"(hash {source.hash}): {names}",
        file=sys.stderr,
        flush=True,
    )
    config = uvicorn.Config(
        app,
        log_level="warning",
        http=_http_protocol(read_timeout),
        timeout_keep_alive=int(KEEP_ALIVE_TIMEOUT),
    )
    server = _server(config, app.state.sidecar)
    # uvicorn stops gracefully on SIGTERM or SIGINT, then raises it again for the handler it
    # found there: a stop that was asked for is a clean exit, not a kill or a traceback.
    signal.signal(signal.SIGTERM, _stopped)
    signal.signal(signal.SIGINT, _stopped)
    server.run(sockets=[listener])
    return 0


def _stopped(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _server(config: uvicorn.Config, state: SidecarState) -> uvicorn.Server:
    """A uvicorn server that, as it stops, ends the open long-polls and the cancels waiting
    for their worker: its graceful shutdown waits for every open request, and a worker's
    long-poll lasts up to 30 s."""
    import uvicorn  # noqa: PLC0415 - the sidecar extra

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            state.close()
            await super().shutdown(sockets)

    return Server(config)


def _listen(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        listener = socket.socket(family, kind, proto)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(2048)
    except OSError as error:
        msg = f"cannot listen on {host}:{port}: {error.strerror or error}"
        raise StartError(msg) from error
    return listener


def _http_protocol(header_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol, closing a connection whose request line and headers do not
    all arrive within ``header_timeout``: uvicorn times idle connections out only between
    requests, so a client that sends nothing, or trickles its headers, held its socket for
    ever. (The body has its own deadline, in ``Guard``.)"""
    from uvicorn.protocols.http.h11_impl import H11Protocol  # noqa: PLC0415

    class HeaderDeadlineProtocol(H11Protocol):
        _header_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            before = self.cycle
            super().data_received(data)
            if self.cycle is not before:  # a request's headers are all in
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request on this connection has its own deadline

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._header_deadline = self.loop.call_later(header_timeout, self._expired)

        def _disarm(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _expired(self) -> None:
            self._header_deadline = None
            waiting = self.cycle is None or self.cycle.response_complete
            if waiting and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadlineProtocol


def _read_token(token_file: str | None) -> str:
    if token_file is not None:
        try:
            with open(token_file, encoding="utf-8") as file:
                token = file.read().strip()
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or str(error)
            msg = f"cannot read the token file {token_file}: {reason}"
            raise StartError(msg) from error
        if not token:
            msg = f"the token file {token_file} is empty"
            raise StartError(msg)
        return token
    token = os.environ.get("WATCHDOG_SIDECAR_TOKEN", "").strip()
    if not token:
        msg = (
            "the sidecar needs a bearer token for its API: --token-file FILE, "
            "or WATCHDOG_SIDECAR_TOKEN"
        )
        raise StartError(msg)
    return token
