"""The supervisor: attaches to compiled graphs and watches every run they make."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import threading
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Callable
from fnmatch import fnmatchcase
from http.server import HTTPServer
from typing import Any, TypeVar, overload

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.pregel import Pregel
from langgraph.runtime import RunControl
from prometheus_client import CollectorRegistry, start_http_server

from .._core.engine import Engine
from .._core.errors import PolicyError, PolicyProblem
from .._core.policies import Policy, PolicySet
from .._core.runs import RunInfo
from .._core.scheduler import Scheduler
from .._core.trace import Trace
from .._files.loading import load_policies
from .._pod.link import SidecarError, SidecarLink, fetch_policies
from .._sinks import events as _events
from .._sinks import schema
from .._sinks.metrics import Metrics, record_metrics
from .._sinks.traces import TraceFile
from . import thread_totals as totals
from .graph import SupervisedGraph, supervise
from .hooks import DEFAULT_HOOK_TIMEOUT, Hook
from .repair import messages_channel
from .run import Run
from .shared import REPORT_EVERY, SharedBudgets, shared_policies

__all__ = ["RunHandle", "Supervisor"]

RunId = str | uuid.UUID
HookT = TypeVar("HookT", bound=Hook)


# Run ids come from a generator of their own: not ``uuid.uuid4`` (code that makes its own ids
# from a seeded or mocked uuid4, as LangGraph's tests do, gets the same ids supervised), nor
# the ``random`` module's (drawing from it would change what a seeded program draws next), nor
# ``os.urandom`` (a system call a run). Seeded from the system, and again in a forked child,
# so no two processes draw the same ids.
_ids = random.Random()  # ids, not secrets
_sampling = random.Random()  # which runs are recorded, when only a share of them is
os.register_at_fork(after_in_child=_ids.seed)


def new_run_id() -> uuid.UUID:
    """A random (version 4) run id."""
    return uuid.UUID(int=_ids.getrandbits(128), version=4)


def _as_uuid(run_id: object) -> uuid.UUID | None:
    if isinstance(run_id, uuid.UUID):
        return run_id
    if isinstance(run_id, str):
        try:
            return uuid.UUID(run_id)
        except ValueError:
            return None
    return None


class Supervisor:
    """Checks policies on every run of the graphs it is attached to, and cancels violators.

    ``registry`` is the prometheus_client registry for the metrics (default: the global
    one). ``clock`` replaces ``time.monotonic`` for tests; with an injected clock no timer
    thread runs, and ``check_timers()`` runs what is due. ``redis_url``: where limits shared
    across pods are kept. ``record``: where the trace of each run goes as it ends, for
    ``watchdog replay`` (a JSON-lines file, a callable, or True: only to the linked
    sidecar); ``record_share``: the part of runs recorded (default all).
    """

    def __init__(
        self,
        policies: PolicySet,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] | None = None,
        lends_checkpointer: bool = False,
        redis_url: str | None = None,
        record: str | os.PathLike[str] | Callable[[Trace], None] | bool | None = None,
        record_share: float | None = None,
    ) -> None:
        self.clock = clock or time.monotonic
        # Limits shared across pods, in Redis: the URL given, else WATCHDOG_REDIS_URL, else
        # the policy file's defaults.redis_url (which a reload may change).
        self._redis_url = redis_url or os.environ.get("WATCHDOG_REDIS_URL") or None
        self.shared = SharedBudgets(
            self._redis_url or policies.redis_url,
            on_error=self._shared_unavailable,
            on_back=self._shared_back,
            clock=self.clock,
        )
        # A server lends the graphs it runs a checkpointer of its own (LangGraph's Agent
        # Server does), so attach() need not find one on them for a cleanup_node.
        self.lends_checkpointer = lends_checkpointer
        self.engine = Engine(policies, clock=self.clock)
        self.record_trace = _recorder(record)
        # The part of runs recorded (WATCHDOG_RECORD_SHARE): a trace costs a recorded run a
        # few microseconds a step, so a busy service may record a sample.
        self.record_share = _share(record_share)
        self.metrics = Metrics.on(registry)
        # An injected clock moves only when told: its timers run by check_timers().
        self.scheduler = Scheduler(self.clock, on_error=self.internal_error, threaded=clock is None)
        self._runs: dict[uuid.UUID, Run] = {}  # live runs; _runs_lock guards it
        self._runs_lock = threading.Lock()
        self.cancel_hooks: list[tuple[Hook, float]] = []
        self.link: SidecarLink | None = None  # set by connect()
        self.ledgers = totals.Ledgers()
        # Failures of shared limits not logged yet, by policy: (how many, when the last
        # were logged, the last error).
        self._outages: dict[str, tuple[int, float, str]] = {}
        self._outages_lock = threading.Lock()
        # Listeners of this supervisor's events alone; replaced, never mutated, on change.
        self._listeners: list[_events.Listener] = []

    @overload
    def on_cancel(self, hook: HookT, *, timeout: float = DEFAULT_HOOK_TIMEOUT) -> HookT: ...

    @overload
    def on_cancel(
        self, hook: None = None, *, timeout: float = DEFAULT_HOOK_TIMEOUT
    ) -> Callable[[HookT], HookT]: ...

    def on_cancel(
        self, hook: HookT | None = None, *, timeout: float = DEFAULT_HOOK_TIMEOUT
    ) -> HookT | Callable[[HookT], HookT]:
        """Register ``hook(cancelled: RunCancelled)`` to run for every cancelled run.

        Use it as ``supervisor.on_cancel(hook)``, ``@supervisor.on_cancel`` or
        ``@supervisor.on_cancel(timeout=2)``. Sync or async; async runs run it in a task the
        supervisor owns, so it completes even when the caller's task is being cancelled.
        """

        def register(hook: HookT) -> HookT:
            self.cancel_hooks.append((hook, timeout))
            return hook

        return register if hook is None else register(hook)

    @classmethod
    def from_path(
        cls,
        path: str | os.PathLike[str],
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] | None = None,
        lends_checkpointer: bool = False,
    ) -> Supervisor:
        """A supervisor for the policies in a YAML file or directory; ``PolicyError`` if bad.

        It takes the constructor's keyword options.
        """
        policies = load_policies(path)
        supervisor = cls(
            policies, registry=registry, clock=clock, lends_checkpointer=lends_checkpointer
        )
        supervisor._loaded(policies, str(path))
        return supervisor

    @classmethod
    def connect(
        cls,
        url: str | None = None,
        token: str | None = None,
        *,
        fallback: str | os.PathLike[str] | None = None,
        worker: str | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] | None = None,
        record: str | os.PathLike[str] | Callable[[Trace], None] | bool | None = None,
        record_share: float | None = None,
    ) -> Supervisor:
        """A supervisor that takes its policies from a sidecar and reports to it (with
        ``record``, the traces of its runs too).

        ``url`` defaults to ``WATCHDOG_SIDECAR_URL``, ``token`` to ``WATCHDOG_SIDECAR_TOKEN``.
        When the sidecar cannot be reached at start, the supervisor starts on the local
        policies at ``fallback`` (default ``WATCHDOG_POLICIES``) and takes the sidecar's
        as soon as it answers; with no fallback, ``ConnectionError``.
        """
        url = (url or os.environ.get("WATCHDOG_SIDECAR_URL") or "").rstrip("/")
        if not url:
            msg = "no sidecar url: pass one, or set WATCHDOG_SIDECAR_URL"
            raise ValueError(msg)
        token = token or os.environ.get("WATCHDOG_SIDECAR_TOKEN") or None
        etag = None
        try:
            fetched = fetch_policies(url, token)
            assert fetched is not None
            policies, etag = fetched
            source = f"{url}/v1/policies"
        except SidecarError as error:
            fallback = fallback or os.environ.get("WATCHDOG_POLICIES")
            if fallback is None:
                msg = (
                    f"the sidecar at {url} cannot be reached ({error}); pass fallback= or "
                    "set WATCHDOG_POLICIES to start on local policies meanwhile"
                )
                raise ConnectionError(msg) from error
            policies, source = load_policies(fallback), str(fallback)
            _events.emit("sidecar_unreachable", url=url, error=str(error), fallback=source)
        supervisor = cls(
            policies, registry=registry, clock=clock, record=record, record_share=record_share
        )
        supervisor._loaded(policies, source)
        supervisor.link = SidecarLink(supervisor, url, token, etag=etag, worker=worker)
        return supervisor

    @property
    def policies(self) -> PolicySet:
        return self.engine.policies

    def reload(self, policies: PolicySet, source: str = "") -> None:
        """Swap in a new policy set; live runs take it up at their next check."""
        self.engine.reload(policies)
        self._loaded(policies, source)

    def _loaded(self, policies: PolicySet, source: str) -> None:
        self.metrics.policy_reloads.labels("ok").inc()
        self.emit(
            "policy_loaded",
            source=source,
            files=list(policies.files),
            policies=[p.name for p in policies.policies],
        )
        self.shared.point_at(self._redis_url or policies.redis_url)
        if self.shared.url is None:
            # attach() refuses them; a reload cannot: said, and left to the local limits.
            for policy in shared_policies(policies.policies):
                error = "no Redis to keep it in: set WATCHDOG_REDIS_URL or defaults.redis_url"
                self._report_outage(policy.name, error, 0)

    # -- attaching -----------------------------------------------------------------------

    def attach(self, graph: Any, *, name: str) -> Any:
        """A supervised copy of a compiled graph: a graph of the same kind (``Pregel``,
        ``CompiledStateGraph``), whose every run is watched.

        ``TypeError`` when ``graph`` is not a compiled graph; ``PolicyError`` when a policy
        that can apply to this graph names a ``cleanup_node`` the graph lacks, or when the
        graph has no checkpointer to resume it from.
        """
        if not isinstance(graph, Pregel):
            hint = " (call .compile() first)" if hasattr(graph, "compile") else ""
            msg = f"attach() takes a compiled LangGraph graph, got {type(graph).__name__}{hint}"
            raise TypeError(msg)
        problems = [
            problem
            for policy in self.policies.policies
            if (policy.cleanup_node or policy.on_violation != "cancel") and _may_apply(policy, name)
            for problem in _resume_problems(policy, graph, name, self.lends_checkpointer)
        ]
        if self.shared.url is None:
            problems += [
                PolicyProblem(
                    policy.file,
                    policy.line,
                    1,
                    f"policies.{policy.name}.{policy.kind.name}.scope",
                    f"a limit shared across pods ({policy.kind.scope}) is kept in Redis; "  # type: ignore[attr-defined]
                    "expected WATCHDOG_REDIS_URL set, defaults.redis_url in the policy file, "
                    "or Supervisor(redis_url=...)",
                )
                for policy in shared_policies(self.policies.policies)
                if _may_apply(policy, name)
            ]
        if problems:
            raise PolicyError(problems)
        if isinstance(graph.checkpointer, BaseCheckpointSaver):
            self.ledgers.note(graph.checkpointer)
        return supervise(graph, self, name)

    # -- runs ----------------------------------------------------------------------------

    def runs(self) -> list[RunInfo]:
        with self._runs_lock:
            live = list(self._runs.values())
        return [run.info() for run in live]

    def cancel(self, run_id: RunId, reason: str = "cancelled by request") -> bool:
        """Cancel a live run from any thread or task; True when this call cancelled it."""
        key = _as_uuid(run_id)
        run = self._runs.get(key) if key is not None else None
        return run is not None and run.cancel_manually(reason)

    def cancel_thread(self, thread_id: str, reason: str = "cancelled by request") -> int:
        """Cancel every live run on a thread; returns how many this call cancelled."""
        return sum(run.cancel_manually(reason) for run in self._live_on(str(thread_id)))

    def reset_thread_totals(self, thread_id: str) -> int:
        """Start a thread's ``scope: thread`` totals again from zero, so a thread that hit
        its limit takes runs again.

        The reset is a marker kept beside the totals, in every checkpointer this supervisor
        knows (its attached graphs', and those lent to its runs) that holds totals of the
        thread; so every process sharing one of them sees it. Runs of the thread live now
        count in full. Returns how many checkpointers held totals of the thread (0: none
        did). From async code, ``areset_thread_totals``.
        """
        reset = [saver for saver in self.ledgers.savers() if totals.reset(saver, thread_id)]
        return self._totals_reset(thread_id, reset)

    async def areset_thread_totals(self, thread_id: str) -> int:
        """``reset_thread_totals``, through the checkpointers' async methods."""
        reset = [saver for saver in self.ledgers.savers() if await totals.areset(saver, thread_id)]
        return self._totals_reset(thread_id, reset)

    def _totals_reset(self, thread_id: str, savers: list[totals.Saver]) -> int:
        for saver in savers:
            self.ledgers.reset(saver, thread_id)
        self.emit("thread_totals_reset", thread_id=thread_id, checkpointers=len(savers))
        return len(savers)

    def _live_on(self, thread_id: str) -> list[Run]:
        with self._runs_lock:
            return [run for run in self._runs.values() if run.thread_id == thread_id]

    def start(
        self, app: SupervisedGraph, input: Any, config: Any = None, **kwargs: Any
    ) -> RunHandle:
        """Start a run in the background of the running event loop; returns its handle."""
        return RunHandle(app, input, config, kwargs)

    def check_timers(self) -> int:
        """Run the timer checks that are due now; for an injected clock."""
        return self.scheduler.run_due()

    def serve_metrics(self, port: int = 9464, addr: str = "127.0.0.1") -> HTTPServer:
        """Serve this supervisor's metrics at ``http://addr:port/metrics`` from a thread.

        Port 0 picks a free port: read it from the returned server's ``server_port``.
        """
        server, _ = start_http_server(port, addr=addr, registry=self.metrics.registry)
        return server

    def close(self, timeout: float = 5.0) -> None:
        self.shared.close()
        if self.link is not None:
            self.link.close(timeout)
        self.scheduler.close()

    def start_run(self, graph: str, config: RunnableConfig, control: RunControl) -> Run:
        """Register a new run of ``graph``, as its config (``config``) describes it."""
        # Not written into the config: LangGraph formats a run id at every step.
        run_id = _as_uuid(config.get("run_id")) or new_run_id()
        thread_id = (config.get("configurable") or {}).get("thread_id")
        monitor = self.engine.start_run(
            graph, config.get("tags") or (), config.get("metadata") or {}
        )
        if self.record_trace is not None and (
            self.record_share >= 1 or _sampling.random() < self.record_share
        ):
            monitor.record()
        run = Run(
            self,
            graph,
            run_id=run_id,
            thread_id=None if thread_id is None else str(thread_id),
            monitor=monitor,
            control=control,
        )
        if self.shared.url is not None and shared_policies(monitor.policies):
            run.shared = self.shared.charges(monitor.policies, graph, config.get("metadata") or {})
        superseding = next((p for p in monitor.policies if p.supersede), None)
        if superseding is not None and run.thread_id is not None:
            for older in self._live_on(run.thread_id):
                older.cancel_manually(
                    f"A newer run ({run_id}) started on thread {run.thread_id!r}.",
                    superseding.name,
                )
        with self._runs_lock:
            self._runs[run_id] = run
        self.metrics.direct.child(self.metrics.active_runs, graph).inc()
        policy_names = [p.name for p in monitor.policies]
        self.record(schema.RunStarted(**run.fields, policies=policy_names))
        if monitor.has_timers:
            run.schedule_timers()
        return run

    # -- what runs use of their supervisor (RunHost) ------------------------------------

    def save_trace(self, trace: Trace) -> None:
        if self.record_trace is not None:
            self.record_trace(trace)
        if self.link is not None:
            self.link.send_trace(trace)

    def emit(self, name: str, **fields: Any) -> None:
        """Log an event, and hand it to this supervisor's listeners (its sidecar link)."""
        _events.emit_to(self._listeners, name, **fields)

    def _shared_unavailable(self, policy: str, error: BaseException, first: bool) -> None:
        """Redis did not answer for a shared limit. Counted at once, here; logged (and so
        sent to a sidecar, which counts the failures the event carries) as the failures
        start, then at most every ``REPORT_EVERY`` seconds while they last."""
        self.metrics.direct.count(self.metrics.shared_budget_errors, policy)
        described = f"{type(error).__name__}: {error}"
        now = self.clock()
        with self._outages_lock:
            failures, reported_at, _ = self._outages.get(policy, (0, now, described))
            failures += 1
            if not (first or now - reported_at >= REPORT_EVERY):
                self._outages[policy] = (failures, reported_at, described)
                return
            self._outages[policy] = (0, now, described)
        self._report_outage(policy, described, failures)

    def _shared_back(self) -> None:
        """Redis answers again: the failures not logged yet are, so a sidecar counts them."""
        with self._outages_lock:
            outages, self._outages = self._outages, {}
        for policy, (failures, _, described) in outages.items():
            if failures:
                self._report_outage(policy, described, failures)

    def _report_outage(self, policy: str, error: str, failures: int) -> None:
        # Logged, not recorded: the failures were counted here one by one already.
        event = schema.SharedBudgetUnavailable(policy=policy, error=error, failures=failures)
        _events.emit_to(self._listeners, event.name, **event.fields())

    def record(self, event: schema.Event) -> None:
        """Log an event of the schema, and move the metrics it moves."""
        record_metrics(self.metrics, event)
        _events.emit_to(self._listeners, event.name, **event.fields())

    def add_listener(self, listener: _events.Listener) -> None:
        self._listeners = [*self._listeners, listener]  # copied: emit reads it unlocked

    def remove_listener(self, listener: _events.Listener) -> None:
        self._listeners = [x for x in self._listeners if x is not listener]

    def forget(self, run: Run) -> None:
        with self._runs_lock:
            if self._runs.get(run.run_id) is run:
                del self._runs[run.run_id]
                self.metrics.direct.child(self.metrics.active_runs, run.graph).dec()

    def internal_error(self, error: BaseException, run: Run | None = None) -> None:
        """A bug of ours: log it, count it, never let it reach the run."""
        fields = run.fields if run is not None else {}
        self.record(
            schema.InternalError(
                **fields,
                error=f"{type(error).__name__}: {error}",
                traceback="".join(traceback.format_exception(error)),
            )
        )


def _may_apply(policy: Policy, graph: str) -> bool:
    """Whether a policy can apply to a graph's runs (tags and metadata are known per run)."""
    return not policy.match.graphs or any(fnmatchcase(graph, g) for g in policy.match.graphs)


def _resume_problems(
    policy: Policy, graph: Any, name: str, lends_checkpointer: bool
) -> list[PolicyProblem]:
    """Why the runs of ``graph`` could not be resumed as ``policy`` says after a limit (at
    its cleanup node, or to land softly), if they could not."""
    nodes = [n for n in getattr(graph, "nodes", {}) if not n.startswith("__")]
    landing = policy.landing
    named = {"cleanup_node": policy.cleanup_node}
    if landing is not None:
        named["wrap_up.node"] = landing.node

    def problem(key: str, message: str) -> PolicyProblem:
        return PolicyProblem(policy.file, policy.line, 1, f"policies.{policy.name}.{key}", message)

    problems = [
        problem(key, f"graph {name!r} has no node {node!r}; expected one of {', '.join(nodes)}")
        for key, node in named.items()
        if node is not None and node not in nodes
    ]
    if landing is not None and landing.node is None and messages_channel(graph) is None:
        problems.append(
            problem(
                "wrap_up",
                f"graph {name!r} has no messages channel (one that add_messages reduces) to "
                "tell the model to answer now; expected a wrap_up node to route the run to",
            )
        )
    if not lends_checkpointer and not getattr(graph, "checkpointer", None):
        key, how = (
            ("cleanup_node", "at its cleanup node")
            if policy.cleanup_node
            else (
                ("on_violation", "to land softly")
                if landing is not None
                else ("on_violation", "after a person answers")
            )
        )
        problems.append(
            problem(
                key,
                f"graph {name!r} has no checkpointer, and a run that reaches a limit is "
                f"resumed {how} from its last checkpoint; expected a graph compiled with "
                "checkpointer=...",
            )
        )
    return problems


class RunHandle:
    """A run started in the background: stream it, cancel it, await its result.

    ``handle = supervisor.start(app, input, config)`` inside a running event loop, then
    ``async for chunk in handle.stream()``, ``await handle.cancel()``, ``await handle.result()``
    (which raises ``RunCancelled`` for a cancelled run). Chunks are in ``stream_mode="values"``
    unless another mode is asked for.
    """

    _END = object()

    def __init__(self, app: SupervisedGraph, input: Any, config: Any, kwargs: dict[str, Any]):
        config = dict(config or {})
        self._run_id = _as_uuid(config.get("run_id")) or new_run_id()
        config["run_id"] = self._run_id
        self.run_id = str(self._run_id)
        self._app = app
        self._supervisor: Supervisor = app._watchdog.supervisor  # type: ignore[assignment]
        kwargs.setdefault("stream_mode", "values")  # so the last chunk is the final state
        self._chunks: asyncio.Queue[Any] = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._pump(input, config, kwargs))

    async def _pump(self, input: Any, config: Any, kwargs: dict[str, Any]) -> Any:
        last = None
        try:
            async for chunk in self._app.astream(input, config, **kwargs):
                last = chunk
                self._chunks.put_nowait(chunk)
        finally:
            self._chunks.put_nowait(self._END)
        return last

    async def stream(self) -> AsyncIterator[Any]:
        """The run's chunks as they come; raises as the run does when it ends."""
        while (chunk := await self._chunks.get()) is not self._END:
            yield chunk
        await self._task

    async def result(self) -> Any:
        """The run's last chunk (its final state, in the default "values" mode)."""
        return await self._task

    async def cancel(self, reason: str = "cancelled by request") -> bool:
        """Cancel the run and wait until it has stopped; True when this call cancelled it."""
        supervisor = self._supervisor
        while self._run_id not in supervisor._runs and not self._task.done():
            await asyncio.sleep(0)  # the run registers as it takes its first step
        cancelled = supervisor.cancel(self._run_id, reason)
        with contextlib.suppress(Exception):
            await self._task
        return cancelled

    def done(self) -> bool:
        return self._task.done()


def _recorder(
    record: str | os.PathLike[str] | Callable[[Trace], None] | bool | None,
) -> Callable[[Trace], None] | None:
    """Where each run's trace goes as it ends, for replay: a JSON-lines file, a callable, or
    (True) only to the sidecar the supervisor is linked to. ``WATCHDOG_RECORD`` says the
    same (a file, or 1). None: nothing is recorded, at no cost."""
    if record is None:
        found = os.environ.get("WATCHDOG_RECORD", "").strip()
        record = True if found.lower() in ("1", "true", "yes") else (found or None)
    if record is None or record is False:
        return None
    if record is True:
        return lambda trace: None  # kept by the linked sidecar only
    return record if callable(record) else TraceFile(record)


def _share(given: float | None) -> float:
    """The part of runs recorded: ``given``, else ``WATCHDOG_RECORD_SHARE``, else all."""
    found: object = os.environ.get("WATCHDOG_RECORD_SHARE") if given is None else given
    if found in (None, ""):
        return 1.0
    try:
        share = float(found)  # type: ignore[arg-type]
    except ValueError:
        share = math.nan
    if not 0 <= share <= 1:
        where = "record_share" if given is not None else "WATCHDOG_RECORD_SHARE"
        msg = f"{where} must be a part of the runs from 0 to 1, got {found!r}"
        raise ValueError(msg)
    return share
