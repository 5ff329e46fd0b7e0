"""The supervisor: attaches to compiled graphs and watches every run they make."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import traceback
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from fnmatch import fnmatchcase
from http.server import HTTPServer
from typing import Any, TypeVar, overload

from langchain_core.callbacks import BaseCallbackManager
from langchain_core.runnables.config import get_config_list, get_executor_for_config
from langgraph.graph import END
from langgraph.runtime import RunControl
from langgraph.types import Command
from prometheus_client import CollectorRegistry, start_http_server

from . import _events
from . import _thread_totals as _totals
from ._callbacks import ChainHandler, WatchdogHandler
from ._cleanup import DEFAULT_HOOK_TIMEOUT, Hook
from ._engine import Engine
from ._errors import PolicyError, PolicyProblem
from ._loading import load_policies
from ._metrics import Metrics
from ._policies import Policy, PolicySet
from ._probe import RUN_KEY, probed
from ._remote import SidecarError, SidecarLink, fetch_policies
from ._run import Run, RunInfo
from ._scheduler import Scheduler

__all__ = ["SupervisedGraph", "Supervisor"]

RunId = str | uuid.UUID
HookT = TypeVar("HookT", bound=Hook)


def _as_uuid(run_id: object) -> uuid.UUID | None:
    if isinstance(run_id, uuid.UUID):
        return run_id
    if isinstance(run_id, str):
        try:
            return uuid.UUID(run_id)
        except ValueError:
            return None
    return None


def _with_handler(callbacks: Any, handler: WatchdogHandler) -> Any:
    """The caller's callbacks, list or manager, with ours added."""
    if callbacks is None:
        return [handler]
    if isinstance(callbacks, BaseCallbackManager):
        manager = callbacks.copy()
        manager.add_handler(handler, inherit=True)
        return manager
    return [*callbacks, handler]


class Supervisor:
    """Checks policies on every run of the graphs it is attached to, and cancels violators.

    ``registry`` is the prometheus_client registry for the metrics (default: the global
    one). ``clock`` replaces ``time.monotonic`` for tests; with an injected clock no timer
    thread runs, and ``check_timers()`` runs what is due.
    """

    def __init__(
        self,
        policies: PolicySet,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.clock = clock or time.monotonic
        self.engine = Engine(policies, clock=self.clock)
        self.metrics = Metrics.on(registry)
        self.scheduler = Scheduler(self.clock, on_error=self.internal_error)
        self._real_clock = clock is None
        self._runs: dict[uuid.UUID, Run] = {}
        self._runs_lock = threading.Lock()
        self._token_counters: dict[str, tuple[Any, Any]] = {}
        self.cancel_hooks: list[tuple[Hook, float]] = []
        self.link: SidecarLink | None = None  # set by connect()

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
    ) -> Supervisor:
        """A supervisor for the policies in a YAML file or directory; ``PolicyError`` if bad."""
        policies = load_policies(path)
        supervisor = cls(policies, registry=registry, clock=clock)
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
    ) -> Supervisor:
        """A supervisor that takes its policies from a sidecar and reports to it.

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
        supervisor = cls(policies, registry=registry, clock=clock)
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
        _events.emit(
            "policy_loaded",
            source=source,
            files=list(policies.files),
            policies=[p.name for p in policies.policies],
        )

    # -- attaching -----------------------------------------------------------------------

    def attach(self, graph: Any, *, name: str) -> SupervisedGraph:
        """A supervised graph: the compiled graph's API, with every run watched.

        ``PolicyError`` when a policy that can apply to this graph names a ``cleanup_node``
        the graph lacks, or when the graph has no checkpointer to resume it from.
        """
        problems = [
            problem
            for policy in self.policies.policies
            if policy.cleanup_node and _may_apply(policy, name)
            for problem in _cleanup_problems(policy, graph, name)
        ]
        if problems:
            raise PolicyError(problems)
        return SupervisedGraph(self, graph, name)

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
        if self.link is not None:
            self.link.close(timeout)
        self.scheduler.close()

    def _begin(
        self, graph: str, config: Any, kwargs: dict[str, Any], *, probed: bool
    ) -> tuple[Run, Any]:
        """Register a new run; returns it and the config to run the graph with.

        A ``probed`` graph reports its nodes itself; any other needs chain callbacks.
        """
        config = dict(config or {})
        # Not written into the config: LangGraph formats a run id at every step.
        run_id = _as_uuid(config.get("run_id")) or uuid.uuid4()
        thread_id = (config.get("configurable") or {}).get("thread_id")
        monitor = self.engine.start_run(
            graph, config.get("tags") or (), config.get("metadata") or {}
        )
        control = kwargs.get("control") or RunControl()
        kwargs["control"] = control
        run = Run(
            self,
            graph,
            run_id=run_id,
            thread_id=None if thread_id is None else str(thread_id),
            monitor=monitor,
            control=control,
        )
        handler = (WatchdogHandler if probed else ChainHandler)(run)
        config["callbacks"] = _with_handler(config.get("callbacks"), handler)
        config["configurable"] = {**(config.get("configurable") or {}), RUN_KEY: run}
        superseding = next((p for p in monitor.policies if p.supersede), None)
        if superseding is not None and run.thread_id is not None:
            for older in self._live_on(run.thread_id):
                older.cancel_manually(
                    f"A newer run ({run_id}) started on thread {run.thread_id!r}.",
                    superseding.name,
                )
        with self._runs_lock:
            self._runs[run_id] = run
        self.metrics.runs_started.labels(graph).inc()
        self.metrics.active_runs.labels(graph).inc()
        _events.emit("run_started", **run.fields, policies=[p.name for p in monitor.policies])
        if monitor.has_timers:
            if self._real_clock:
                self.scheduler.start()
            run.schedule_timers()
        return run, config

    def _forget(self, run: Run) -> None:
        with self._runs_lock:
            if self._runs.get(run.run_id) is run:
                del self._runs[run.run_id]

    def _count_tokens(self, graph: str, input_tokens: int, output_tokens: int) -> None:
        counters = self._token_counters.get(graph)
        if counters is None:
            tokens = self.metrics.tokens
            counters = self._token_counters[graph] = (
                tokens.labels(graph, "input"),
                tokens.labels(graph, "output"),
            )
        if input_tokens:
            counters[0].inc(input_tokens)
        if output_tokens:
            counters[1].inc(output_tokens)

    def internal_error(self, error: BaseException, run: Run | None = None) -> None:
        """A bug of ours: log it, count it, never let it reach the run."""
        self.metrics.internal_errors.inc()
        fields = run.fields if run is not None else {}
        _events.emit(
            "internal_error",
            **fields,
            error=f"{type(error).__name__}: {error}",
            traceback="".join(traceback.format_exception(error)),
        )


def _may_apply(policy: Policy, graph: str) -> bool:
    """Whether a policy can apply to a graph's runs (tags and metadata are known per run)."""
    return not policy.match.graphs or any(fnmatchcase(graph, g) for g in policy.match.graphs)


def _cleanup_problems(policy: Policy, graph: Any, name: str) -> list[PolicyProblem]:
    def problem(message: str) -> PolicyProblem:
        path = f"policies.{policy.name}.cleanup_node"
        return PolicyProblem(policy.file, policy.line, 1, path, message)

    nodes = [n for n in getattr(graph, "nodes", {}) if not n.startswith("__")]
    problems = []
    if policy.cleanup_node not in nodes:
        problems.append(
            problem(
                f"graph {name!r} has no node {policy.cleanup_node!r}; "
                f"expected one of {', '.join(nodes)}"
            )
        )
    if not getattr(graph, "checkpointer", None):
        problems.append(
            problem(
                f"graph {name!r} has no checkpointer, and a cancelled run is resumed at its "
                "cleanup node from its last checkpoint; expected a graph compiled with "
                "checkpointer=..."
            )
        )
    return problems


def _thread_config(config: Any) -> dict[str, Any]:
    """The config to resume a run's thread with, unsupervised: the cleanup node's run."""
    configurable = {k: v for k, v in config["configurable"].items() if k != RUN_KEY}
    return {"configurable": configurable}


def _cleanup_input(node: str, snapshot: Any) -> Command[Any] | None:
    """How to resume a stopped run so that it runs ``node``: None when it routed itself
    there (a node that caught the cancel); else its pending tasks are cleared and it goes
    to ``node``."""
    return None if tuple(snapshot.next) == (node,) else Command(goto=node)


@contextmanager
def _supervising(run: Run) -> Iterator[None]:
    """Turn how the graph call ended into the run's outcome, and what the caller sees."""
    try:
        yield
    except BaseException as error:
        outcome = run.end(error)
        if outcome is error:
            raise
        raise outcome from None  # type: ignore[misc]
    outcome = run.end(None)
    if outcome is not None:
        raise outcome


class SupervisedGraph:
    """A compiled graph whose runs are supervised; everything else passes through."""

    def __init__(self, supervisor: Supervisor, graph: Any, name: str) -> None:
        self.supervisor = supervisor
        self.graph = graph
        self.name = name
        # Runs go to a copy with probes in its nodes, when the graph allows one.
        self._probed = probed(graph)
        self._runnable = graph if self._probed is None else self._probed

    def _begin(self, config: Any, kwargs: dict[str, Any]) -> tuple[Run, Any]:
        return self.supervisor._begin(self.name, config, kwargs, probed=self._probed is not None)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.graph, attribute)

    def __repr__(self) -> str:
        return f"SupervisedGraph({self.name!r}, {self.graph!r})"

    def invoke(self, input: Any, config: Any = None, **kwargs: Any) -> Any:
        run, config = self._begin(config, kwargs)
        with _supervising(run), self._thread_totals(run):
            try:
                return self._runnable.invoke(input, config, **kwargs)
            except BaseException:
                self._cleanup(run, config)
                raise
        raise AssertionError  # pragma: no cover - for type checkers: with re-raises

    async def ainvoke(self, input: Any, config: Any = None, **kwargs: Any) -> Any:
        run, config = self._begin(config, kwargs)
        run.bind_task()
        try:
            with _supervising(run):
                await self._load_thread_totals(run)
                try:
                    return await self._runnable.ainvoke(input, config, **kwargs)
                except BaseException:
                    await self._acleanup(run, config)
                    raise
                finally:
                    await self._save_thread_totals(run)
        finally:
            await run.settle_cleanups()
        raise AssertionError  # pragma: no cover

    def stream(self, input: Any, config: Any = None, **kwargs: Any) -> Iterator[Any]:
        run, config = self._begin(config, kwargs)
        with _supervising(run), self._thread_totals(run):
            try:
                yield from self._runnable.stream(input, config, **kwargs)
            except BaseException:
                self._cleanup(run, config)
                raise

    # -- scope: thread: totals kept with the thread -------------------------------------

    def _thread_checkpointer(self, run: Run) -> Any:
        """The checkpointer to keep this run's thread totals in, if it needs them."""
        if run.thread_id is None or not any(p.kind.per_thread for p in run.monitor.policies):
            return None
        return getattr(self.graph, "checkpointer", None) or None

    @contextmanager
    def _thread_totals(self, run: Run) -> Iterator[None]:
        checkpointer = self._thread_checkpointer(run)
        if checkpointer is None:
            yield
            return
        assert run.thread_id is not None
        base = run.monitor.state.thread = _totals.load(checkpointer, run.thread_id)
        try:
            yield
        finally:
            _totals.save(checkpointer, run.thread_id, base.plus(run.monitor.state))

    async def _load_thread_totals(self, run: Run) -> None:
        checkpointer = self._thread_checkpointer(run)
        if checkpointer is not None and run.thread_id is not None:
            run.monitor.state.thread = await _totals.aload(checkpointer, run.thread_id)

    async def _save_thread_totals(self, run: Run) -> None:
        checkpointer = self._thread_checkpointer(run)
        if checkpointer is not None and run.thread_id is not None:
            state = run.monitor.state
            await _totals.asave(checkpointer, run.thread_id, state.thread.plus(state))

    # -- the cleanup node: where a cancelled run goes to wrap up ------------------------

    def _cleanup(self, run: Run, config: Any) -> None:
        node = run.cleanup_node()
        if node is None:
            return
        thread = _thread_config(config)
        run.cleanup_started(node)
        try:
            resume = _cleanup_input(node, self.graph.get_state(thread))
            if resume is not None:
                self.graph.update_state(thread, None, as_node=END)  # drop pending tasks
            self.graph.invoke(resume, thread)
        except Exception as error:
            run.cleanup_finished(node, error)
        else:
            run.cleanup_finished(node, None)

    async def _acleanup(self, run: Run, config: Any) -> None:
        node = run.cleanup_node()
        if node is None:
            return
        thread = _thread_config(config)
        run.cleanup_started(node)
        try:
            async with asyncio.timeout(run.cleanup_budget()):
                resume = _cleanup_input(node, await self.graph.aget_state(thread))
                if resume is not None:
                    await self.graph.aupdate_state(thread, None, as_node=END)
                await self.graph.ainvoke(resume, thread)
        except Exception as error:
            run.cleanup_finished(node, error)
        else:
            run.cleanup_finished(node, None)

    def astream(self, input: Any, config: Any = None, **kwargs: Any) -> AsyncIterator[Any]:
        return self._stream_async("astream", input, config, kwargs)

    def astream_events(
        self,
        input: Any,
        config: Any = None,
        **kwargs: Any,
    ) -> AsyncIterator[Any]:
        return self._stream_async("astream_events", input, config, kwargs)

    async def _stream_async(
        self,
        method: str,
        input: Any,
        config: Any,
        kwargs: dict[str, Any],
        caller_gone: str | None = None,
    ) -> AsyncGenerator[Any, None]:
        run, config = self._begin(config, kwargs)
        run.bind_task()
        run.caller_gone = caller_gone
        try:
            with _supervising(run):
                await self._load_thread_totals(run)
                stream = getattr(self._runnable, method)(input, config, **kwargs)
                try:
                    async for item in stream:
                        yield item
                except BaseException:
                    await self._acleanup(run, config)
                    raise
                finally:
                    await stream.aclose()
                    await self._save_thread_totals(run)
        finally:
            await run.settle_cleanups()

    def batch(
        self,
        inputs: Sequence[Any],
        config: Any = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        if not inputs:
            return []
        configs = get_config_list(config, len(inputs))

        def one(item: Any, item_config: Any) -> Any:
            try:
                return self.invoke(item, item_config, **kwargs)
            except Exception as exc:
                if return_exceptions:
                    return exc
                raise

        with get_executor_for_config(configs[0]) as executor:
            return list(executor.map(one, inputs, configs))

    async def abatch(
        self,
        inputs: Sequence[Any],
        config: Any = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        if not inputs:
            return []
        configs = get_config_list(config, len(inputs))
        limit = configs[0].get("max_concurrency") or len(inputs)
        gate = asyncio.Semaphore(limit)

        async def one(item: Any, item_config: Any) -> Any:
            async with gate:
                return await self.ainvoke(item, item_config, **kwargs)

        return await asyncio.gather(
            *(one(i, c) for i, c in zip(inputs, configs, strict=True)),
            return_exceptions=return_exceptions,
        )


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
        self._run_id = _as_uuid(config.get("run_id")) or uuid.uuid4()
        config["run_id"] = self._run_id
        self.run_id = str(self._run_id)
        self._app = app
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
        supervisor = self._app.supervisor
        while self._run_id not in supervisor._runs and not self._task.done():
            await asyncio.sleep(0)  # the run registers as it takes its first step
        cancelled = supervisor.cancel(self._run_id, reason)
        with contextlib.suppress(Exception):
            await self._task
        return cancelled

    def done(self) -> bool:
        return self._task.done()
