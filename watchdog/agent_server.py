"""The watchdog on LangGraph's Agent Server (``langgraph dev``, ``langgraph up``, a
self-hosted server): supervised graphs in ``langgraph.json``, and the watchdog's run API
beside the server's own.

In the graph's module, attach with the server process's supervisor::

    from watchdog.agent_server import supervisor

    graph = supervisor().attach(builder.compile(), name="support-agent")

and in ``langgraph.json``, ``"http": {"app": "watchdog.agent_server:app"}``. The supervisor
takes its policies from ``WATCHDOG_POLICIES`` (a file or a directory), re-reads them every
``WATCHDOG_POLL_INTERVAL`` seconds (default 1) and takes a changed set when it is valid. Its
metrics are on the default Prometheus registry, which the server's own ``/metrics`` serves.
Runs the server makes are supervised under the server's run and thread ids; the server's
own cancel is recorded as a manual cancel, with the reason it gives.

``app`` serves, under ``/watchdog``, the live runs and their cancel (``WATCHDOG_TOKEN``, or
``WATCHDOG_TOKEN_FILE``, is the bearer token they need, as on the sidecar), a reload, and
the watchdog's metrics; it starts the policy watch with the server and closes the supervisor
when the server stops.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ._adapter.supervisor import Supervisor
from ._core.runs import RunInfo
from ._pod.policy_source import PolicySource
from ._pod.run_api import BodyError, cancel_reason, refusal, timestamp

__all__ = ["app", "supervisor"]

PREFIX = "/watchdog"
MAX_BODY = 64 * 1024

# The one supervisor of this server process, made on first use; _lock guards both.
_supervisor: Supervisor | None = None
_watch: _PolicyWatch | None = None
_lock = threading.Lock()


class _PolicyWatch:
    """Re-reads the policy files from a thread of its own, and reloads on a valid change."""

    def __init__(self, source: PolicySource, target: Supervisor, interval: float) -> None:
        self.source = source
        self.target = target
        self.interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="watchdog-policies", daemon=True)
        self._thread.start()

    def check(self, *, force: bool = False) -> bool:
        if self.source.check(force=force):
            self.target.reload(self.source.policies, self.source.path)
            return True
        return False

    def _serve(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                self.check()
            except Exception as error:  # the watch must outlive any error of its own
                self.target.internal_error(error)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)


def supervisor() -> Supervisor:
    """This server process's supervisor, made from ``WATCHDOG_POLICIES`` on first use.

    ``RuntimeError`` when ``WATCHDOG_POLICIES`` is unset; ``PolicyError`` when its files are
    invalid, so the server refuses to load the graph rather than run it unsupervised.
    """
    global _supervisor, _watch  # noqa: PLW0603 - one per process, made on first use
    with _lock:
        if _supervisor is None:
            path = os.environ.get("WATCHDOG_POLICIES")
            if not path:
                msg = (
                    "WATCHDOG_POLICIES is not set: set it to the watchdog's policy file or "
                    "directory (in langgraph.json's env, or the server's environment)"
                )
                raise RuntimeError(msg)
            made = Supervisor.from_path(path, lends_checkpointer=True)
            interval = float(os.environ.get("WATCHDOG_POLL_INTERVAL", "1"))
            _watch = _PolicyWatch(PolicySource(path, made.metrics), made, interval)
            _supervisor = made
        return _supervisor


def _token() -> str | None:
    token = os.environ.get("WATCHDOG_TOKEN")
    if token:
        return token.strip()
    path = os.environ.get("WATCHDOG_TOKEN_FILE")
    if path:
        return Path(path).read_text(encoding="utf-8").strip() or None
    return None


Handler = Callable[[Request], Awaitable[Response]]


def _with_token(handler: Handler) -> Handler:
    """Refuse a request without the bearer token, before reading anything it sent."""

    async def guarded(request: Request) -> Response:
        token = _token()
        if token is None:
            return JSONResponse(
                {"detail": "the watchdog's run API is off: set WATCHDOG_TOKEN to turn it on"},
                status_code=503,
            )
        given = request.headers.get("authorization")
        refused = refusal(None if given is None else given.encode("latin-1"), token.encode())
        if refused is not None:
            detail, challenge = refused
            headers = {"WWW-Authenticate": challenge.decode()}
            return JSONResponse({"detail": detail}, status_code=401, headers=headers)
        return await handler(request)

    return guarded


def _run_dict(info: RunInfo, now: float) -> dict[str, object]:
    """A live run as the API shows it, ``now`` (epoch seconds) being when it is asked."""
    started = info.started_at.timestamp()
    return {
        "run_id": info.run_id,
        "thread_id": info.thread_id,
        "graph": info.graph,
        "status": info.status,
        "started_at": timestamp(started),
        "elapsed_s": round(max(0.0, now - started), 3),
        "steps": info.steps,
        "tokens": info.tokens,
    }


async def _list_runs(request: Request) -> Response:
    now = time.time()
    return JSONResponse({"runs": [_run_dict(run, now) for run in supervisor().runs()]})


async def _get_run(request: Request) -> Response:
    run_id = request.path_params["run_id"]
    for run in supervisor().runs():
        if run.run_id == run_id:
            return JSONResponse(_run_dict(run, time.time()))
    return JSONResponse({"detail": f"no live run {run_id!r}"}, status_code=404)


async def _cancel_run(request: Request) -> Response:
    run_id = request.path_params["run_id"]
    body = b""
    async for chunk in request.stream():  # read no more than the cap, whatever is sent
        body += chunk
        if len(body) > MAX_BODY:
            detail = f"the request body is larger than this endpoint takes ({MAX_BODY} bytes)"
            return JSONResponse({"detail": detail}, status_code=413)
    try:
        reason = cancel_reason(body, "cancelled by request")
    except BodyError as error:
        return JSONResponse({"detail": str(error)}, status_code=422)
    if supervisor().cancel(run_id, reason):
        return JSONResponse({"run_id": run_id, "cancelled": True}, status_code=202)
    return JSONResponse({"detail": f"no live run {run_id!r} to cancel"}, status_code=404)


async def _reset_thread_totals(request: Request) -> Response:
    thread_id = request.path_params["thread_id"]
    reset = await supervisor().areset_thread_totals(thread_id)
    return JSONResponse({"thread_id": thread_id, "checkpointers": reset})


async def _reload(request: Request) -> Response:
    supervisor()
    assert _watch is not None
    changed = _watch.check(force=True)
    source = _watch.source
    return JSONResponse(
        {"reloaded": changed, "hash": source.hash, "error": source.error},
        status_code=200 if source.error is None else 422,
    )


async def _metrics(request: Request) -> Response:
    return Response(generate_latest(supervisor().metrics.registry), media_type=CONTENT_TYPE_LATEST)


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    global _supervisor, _watch  # noqa: PLW0603
    supervisor()  # the graphs made it already, unless none is supervised
    try:
        yield
    finally:
        with _lock:
            if _watch is not None:
                _watch.stop()
            if _supervisor is not None:
                _supervisor.close()
            _supervisor = _watch = None


app = Starlette(
    routes=[
        Route(f"{PREFIX}/metrics", _metrics, methods=["GET"]),
        Route(f"{PREFIX}/v1/runs", _with_token(_list_runs), methods=["GET"]),
        Route(f"{PREFIX}/v1/runs/{{run_id}}", _with_token(_get_run), methods=["GET"]),
        Route(f"{PREFIX}/v1/runs/{{run_id}}/cancel", _with_token(_cancel_run), methods=["POST"]),
        Route(
            f"{PREFIX}/v1/threads/{{thread_id}}/reset",
            _with_token(_reset_thread_totals),
            methods=["POST"],
        ),
        Route(f"{PREFIX}/v1/policies/reload", _with_token(_reload), methods=["POST"]),
    ],
    lifespan=_lifespan,
)
