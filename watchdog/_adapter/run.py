"""One supervised run, and the cancellation pipeline it goes through.

mark once -> drain (stop before the next step) -> hard cancel after grace (async runs)
-> record (one event, one metric) -> raise ``RunCancelled``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NoReturn, Protocol

from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import var_child_runnable_config
from langgraph.runtime import RunControl
from langgraph.types import interrupt

from .._core.engine import RunMonitor
from .._core.errors import RunCancelled
from .._core.findings import Finding
from .._core.fingerprint import fingerprint
from .._core.policies import DEFAULT_GRACE_SECONDS, Policy, WrapUp
from .._core.runs import RunInfo, Status
from .._core.scheduler import Scheduler, Timer
from .._core.trace import Trace, trace_of
from .._sinks import schema
from .hooks import Hook, run_hook_sync, spawn
from .repair import ThreadRepair
from .shared import Charge, SharedBudgets

__all__ = ["ASK_MARK", "Cause", "Run", "RunHost", "Stop", "node_path"]

MAX_NAMESPACES = 64  # subgraph invocations tracked for step counting; old ones are done


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class RunHost(Protocol):
    """What a run needs of the supervisor that started it."""

    clock: Callable[[], float]
    scheduler: Scheduler
    cancel_hooks: list[tuple[Hook, float]]

    def emit(self, name: str, **fields: Any) -> None: ...

    def record(self, event: schema.Event) -> None: ...

    def forget(self, run: Run) -> None: ...

    def save_trace(self, trace: Trace) -> None: ...

    def internal_error(self, error: BaseException, run: Run | None = None) -> None: ...

    @property
    def shared(self) -> SharedBudgets: ...


def _why_cancelled(error: asyncio.CancelledError) -> str:
    """The reason a task's canceller gave (``task.cancel(msg)``), if any."""
    if error.args and (message := str(error.args[0])):
        return message
    return "The caller's task was cancelled."


class Stop(RuntimeError):
    """Raised where a cancelled run would start a node, call or tool, so that it does not.

    A ``RuntimeError``, so LangGraph's default retry policy does not run the node again.
    """


# The key that marks the watchdog's own questions among a thread's interrupts.
ASK_MARK = "watchdog"
# What a paused run used, carried to the run that resumes it.
CARRIED = (
    "steps",
    "node_runs",
    "llm_calls",
    "tool_calls",
    "input_tokens",
    "output_tokens",
    "total_tokens",
)


@dataclass(slots=True)
class Asking:
    """A limit of an ``on_violation: ask`` policy was reached: the run pauses at its next
    node, model call or tool call."""

    cause: Cause
    paused: bool = False


@dataclass(frozen=True, slots=True)
class Answering:
    """The run resumes a thread paused at such a limit: the question it was asked."""

    question: Mapping[str, Any]


def node_path(key: str) -> str:
    """A task's namespace without its task ids: the same node, in the run that resumes."""
    return "|".join(part.partition(":")[0] for part in key.split("|"))


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(slots=True)
class Landing:
    """A run's soft landing: why, how, and the model calls it may still make."""

    cause: Cause
    wrap_up: WrapUp
    llm_calls_left: int
    resumed: bool = False  # drained, and resumed to answer


@dataclass(frozen=True, slots=True)
class Cause:
    """Why a run is being cancelled, and how its policy says to go about it."""

    finding: Finding  # a policy's enforced violation, or an operator's request
    grace_seconds: float
    found_at: float  # on the supervisor's clock
    cleanup_node: str | None = None  # where the run goes to wrap up, if its policy says
    repair_thread: bool = True  # answer the tool calls it leaves without a result

    @classmethod
    def of(cls, finding: Finding, policy: Policy, found_at: float) -> Cause:
        return cls(
            finding, policy.grace_seconds, found_at, policy.cleanup_node, policy.repair_thread
        )


class Run:
    """A run's monitor, its state in the pipeline, and what is needed to stop it."""

    # Thousands may be live in one process: slots, and nothing made before it is needed.
    __slots__ = (
        "__weakref__",  # timers hold a run weakly
        "_root_step",
        "_started_at",
        "_step_of",
        "also",
        "ask",
        "caller_gone",
        "cause",
        "cleanup_tasks",
        "control",
        "graph",
        "host",
        "landing",
        "lock",
        "loop",
        "monitor",
        "node_threads",
        "phase",
        "run_id",
        "shared",
        "status",
        "stopping",
        "task",
        "task_cancelled",
        "thread_id",
        "timer_due",
        "timers",
        "unwinding",
    )

    def __init__(
        self,
        host: RunHost,
        graph: str,
        *,
        run_id: uuid.UUID,
        thread_id: str | None,
        monitor: RunMonitor,
        control: RunControl,
    ) -> None:
        self.host = host
        self.graph = graph
        self.run_id = run_id
        self.thread_id = thread_id
        self.monitor = monitor
        self.control = control
        self._started_at = time.time()
        # Guards the monitor and its state, status, cause, also, phase, timers and
        # node_threads: sync graphs run parallel nodes in threads, and the timer thread checks
        # deadlines. ``stopping`` is read without it (a bool, set once).
        self.lock = threading.RLock()
        self.status: Status = "running"
        self.stopping = False  # read on every event: a plain attribute, not a property
        # Stop was raised where LangGraph starts a node: the run is certainly ending, so a
        # hard cancel would only race it.
        self.unwinding = False
        self.cause: Cause | None = None
        self.also: tuple[Cause, ...] = ()  # later violations, recorded on the same cancel
        self.phase: Literal["drained", "hard"] = "drained"
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[Any] | None = None
        self.task_cancelled = False
        self.timer_due: float | None = None
        self.timers: tuple[Timer, ...] | None = None  # taken back when the run ends
        self.cleanup_tasks: list[asyncio.Task[None]] | None = None  # hooks running for it
        self.node_threads: dict[Hashable, int] | None = None  # a sync run's open work -> thread
        # The reason to record when the caller goes away mid-run (see watchdog.starlette).
        self.caller_gone: str | None = None
        self.landing: Landing | None = None  # a soft landing under way (on_violation: wrap_up)
        self.ask: Asking | Answering | None = None  # a question to a person (on_violation: ask)
        self.shared: tuple[Charge, ...] = ()  # its shares of budgets kept in Redis
        # The current superstep of the graph, and of its subgraphs by namespace once one runs.
        self._root_step: object = None
        self._step_of: dict[str, object] | None = None

    @property
    def fields(self) -> dict[str, Any]:
        """What every event of this run carries."""
        return {"run_id": str(self.run_id), "thread_id": self.thread_id, "graph": self.graph}

    @property
    def started_at(self) -> datetime:
        return datetime.fromtimestamp(self._started_at, UTC)

    def spawned(self, task: asyncio.Task[None]) -> None:
        """A cleanup hook of this run is running in ``task``."""
        if self.cleanup_tasks is None:
            self.cleanup_tasks = []
        self.cleanup_tasks.append(task)

    def info(self) -> RunInfo:
        state = self.monitor.state
        return RunInfo(
            run_id=str(self.run_id),
            thread_id=self.thread_id,
            graph=self.graph,
            started_at=self.started_at,
            steps=state.steps,
            tokens=state.total_tokens,
            status=self.status,
        )

    def bind_task(self) -> None:
        """Remember the task running an async run, so a hung node can be hard-cancelled."""
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()

    # -- node events: from the probes in the graph's nodes, or from chain callbacks -----

    def node_starting(
        self,
        name: str,
        metadata: Mapping[str, Any] | None,
        inputs: Any,
        config: RunnableConfig | None = None,
    ) -> str | None:
        """A node of this run is about to start, as LangGraph's task ``metadata`` describes
        it; raises ``Stop`` if it must not. Returns its key for ``node_ended``, or None after
        an error of ours (logged and counted: the node runs).

        A superstep is (graph namespace, step): parallel nodes and Send share one, and a
        subgraph's steps are steps of the run too. The hot path: one call a node.
        """
        if self.stopping:
            self.unwinding = True
            self.refused("node", name)
            raise Stop
        try:
            # One key per task, subgraphs included. A task always has its metadata: a node
            # called some other way is an error of ours, below.
            key: str = metadata["langgraph_checkpoint_ns"]  # type: ignore[index]
            step = metadata["langgraph_step"]  # type: ignore[index]
            monitor = self.monitor
            with self.lock:
                if "|" not in key:  # a node of the graph itself
                    new_step = self._root_step != step
                    self._root_step = step
                else:
                    new_step = self._subgraph_stepped(key.rpartition("|")[0], step)
                print_ = fingerprint(inputs) if monitor.wants_fingerprints else None
                found = monitor.node_started(key, name, print_, new_step=new_step)
                # A limit reached as a node starts keeps it from running, whether the run
                # is cancelled or lands softly (it drains, and is resumed to answer).
                stop = bool(found) and (self.report(found) or self.lands() is not None)
                if not stop:
                    node_timer = monitor.node_timer
                    if node_timer is not None and (
                        self.timer_due is None or monitor.state.now + node_timer < self.timer_due
                    ):
                        self.schedule_timers()  # this node's deadline may come first
                    if self.loop is None:  # to interrupt a hung node
                        if self.node_threads is None:
                            self.node_threads = {}
                        self.node_threads[key] = threading.get_ident()
        except Exception as error:
            self.internal_error(error)
            return None
        if stop:
            self.unwinding = True
            raise Stop
        if self.ask is not None and config is not None:
            self._ask_or_answer(key, config)
        return key

    def _subgraph_stepped(self, namespace: str, step: object) -> bool:
        """Whether a subgraph's node starts a new superstep of it (under the lock)."""
        step_of = self._step_of
        if step_of is None:
            step_of = self._step_of = {}
        if step_of.get(namespace, self) == step:
            return False
        step_of.pop(namespace, None)  # to the end: the least recently stepped go first
        step_of[namespace] = step
        if len(step_of) > MAX_NAMESPACES:
            del step_of[next(iter(step_of))]
        return True

    def node_ended(self, key: str) -> None:
        try:
            monitor = self.monitor
            if key in monitor.state.open_nodes:
                with self.lock:
                    monitor.node_ended(key)
                    if self.node_threads is not None:
                        self.node_threads.pop(key, None)
        except Exception as error:
            self.internal_error(error)

    def refused(self, activity: str, name: str) -> None:
        """A node, LLM call or tool call (``activity``) was about to start under this run
        after it stopped, and is refused. After the run was recorded cancelled, that is
        work its cancel did not reach: reported."""
        if self.status == "cancelled":
            self.host.record(
                schema.ActivityAfterCancel(**self.fields, activity=activity, activity_name=name)
            )

    def entered_thread(self, key: Hashable) -> None:
        """Work of a sync run (``key``) goes on in this thread until ``left_thread(key)``:
        a hard cancel interrupts it. Under the lock."""
        if self.loop is None:
            if self.node_threads is None:
                self.node_threads = {}
            self.node_threads[key] = threading.get_ident()

    def left_thread(self, key: Hashable) -> None:
        if self.node_threads is not None:
            self.node_threads.pop(key, None)

    # -- shared budgets (kept in Redis) --------------------------------------------------

    def reserve_shared(
        self, call: str, *, model: str = "?", max_tokens: int = 0, tool: bool = False
    ) -> bool:
        """Before a model call (or a tool call, with ``tool``): reserve in each shared limit
        of the run what the call may count. Returns whether the run must stop (a limit
        refused it, under an enforced policy)."""
        if self.landing is not None:
            # A soft landing's calls are bounded by its allowance, not refused by the limit
            # that began it; what they use is still settled.
            return False
        stop = False
        for charge in self.shared:
            meter = charge.meter
            if (meter.unit == "tool_calls") != tool:
                continue
            amount = meter.reserved(model, max_tokens)
            grant = self.host.shared.reserve(charge, f"{self.run_id}:{call}", amount)
            if grant.granted or charge.reported:
                continue
            policy = charge.policy
            charge.reported = True
            state = self.monitor.state
            finding = Finding(
                policy=policy.name,
                kind=policy.kind.name,
                key=meter.key,
                mode=policy.mode,
                reason=charge.reason(grant, amount),
                observed=meter.value(grant.used + grant.reserved + amount),
                limit=meter.value(charge.local_share if grant.local else charge.limit),
                step=state.steps,
                node=state.node,
            )
            with self.lock:
                # As for a limit the run's own state passes: cancelled, asked, or landing
                # softly (this call then goes on, the first of the landing's allowance).
                stop = self.report([finding]) or stop
        return stop

    def settle_shared(
        self, call: str, model: str, input_tokens: int, output_tokens: int, total: int | None
    ) -> None:
        """After a model call: count what it used in each shared limit of the run that holds
        a reservation for it (all zeros: it failed, and only releases them)."""
        for charge in self.shared:
            if not charge.meter.per_call:
                used = charge.meter.used(model, input_tokens, output_tokens, total)
                self.host.shared.settle(charge, f"{self.run_id}:{call}", used)

    # -- findings and the pipeline -------------------------------------------------------

    def report(self, findings: Sequence[Finding]) -> bool:
        """Log and count what the monitor found; an enforced verdict cancels the run.

        Returns whether the run must stop now.
        """
        for finding in findings:
            event = schema.NearLimit if finding.near else schema.Violation
            self.host.record(event(**self.fields, **finding.fields()))
            if finding.enforced:
                policy = next(p for p in self.monitor.policies if p.name == finding.policy)
                cause = Cause.of(finding, policy, self.monitor.state.now)
                wrap_up = policy.landing
                if policy.on_violation == "ask":
                    if not self._ask_next(cause):
                        self.cancel(cause)
                elif wrap_up is None or not self._land(cause, wrap_up):
                    self.cancel(cause)
        return self.stopping

    # -- asking a person (on_violation: ask) -----------------------------------------------

    def _ask_next(self, cause: Cause) -> bool:
        """Pause the run at its next node, model call or tool call, to ask a person whether
        it may go on. False when it cannot ask (it is stopping, or asked already)."""
        with self.lock:
            if self.status != "running" or self.ask is not None:
                return False
            self.ask = Asking(cause)
        return True

    def asking(self) -> bool:
        """Whether a model or tool call that begins now must pause the run first."""
        ask = self.ask
        return isinstance(ask, Asking) and not ask.paused

    def pause(self, at: str | None, *, in_node: bool) -> NoReturn:
        """Pause with LangGraph's interrupt(), carrying the limit and what the run used (the
        run that resumes the thread goes on from it). ``at``: the path of the node it
        pauses in; ``in_node``: from a call inside it, not as it starts."""
        ask = self.ask
        assert isinstance(ask, Asking)
        ask.paused = True
        finding, state = ask.cause.finding, self.monitor.state
        usage: dict[str, float] = {name: getattr(state, name) for name in CARRIED}
        # The node it pauses in runs again when the thread resumes, as a new step: counted
        # there, not twice.
        usage["steps"] = max(0, usage["steps"] - 1)
        if in_node:
            usage["node_runs"] = max(0, usage["node_runs"] - 1)
        usage["elapsed_s"] = state.elapsed
        question = {
            ASK_MARK: "limit_reached",
            "run_id": str(self.run_id),
            "policy": finding.policy,
            "kind": finding.kind,
            "limit_key": finding.key,
            "observed": finding.observed,
            "limit": finding.limit,
            "reason": finding.reason,
            "step": finding.step,
            "node": finding.node,
            "at": at,
            "usage": usage,
        }
        self.host.emit(
            "asked",
            **self.fields,
            policy=finding.policy,
            kind=finding.kind,
            reason=finding.reason,
            step=finding.step,
        )
        interrupt(question)
        msg = "interrupt() returned before its question was answered"
        raise RuntimeError(msg)  # LangGraph raised GraphInterrupt above, always

    def answering(self, question: Mapping[str, Any], answer: object) -> None:
        """This run resumes a thread the watchdog paused to ask a person, with ``answer``:
        it goes on from what the paused run used, with the limit raised by
        ``answer["extend"]``, or is cancelled when the answer gives no extension. The node
        the run paused in takes the answer off LangGraph's queue when it starts again."""
        usage = question.get("usage")
        with self.lock:
            state = self.monitor.state
            if isinstance(usage, Mapping):
                for name in CARRIED:
                    value = usage.get(name)
                    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                        setattr(state, name, value)
                elapsed = usage.get("elapsed_s")
                if isinstance(elapsed, int | float) and elapsed >= 0:
                    state.started_at = state.now - elapsed
            self.ask = Answering(question)
            extend = answer.get("extend") if isinstance(answer, Mapping) else None
            policy, limit_key = question.get("policy"), question.get("limit_key")
            extended = (
                isinstance(extend, int | float)
                and not isinstance(extend, bool)
                and extend > 0
                and isinstance(policy, str)
                and isinstance(limit_key, str)
                and self.monitor.extend(policy, limit_key, extend)
            )
            if extended:
                for charge in self.shared:  # a limit shared across pods: this run's share
                    if (charge.policy.name, charge.meter.key) == (policy, limit_key):
                        charge.extend(extend)  # type: ignore[arg-type]
        self.host.emit(
            "ask_answered",
            **self.fields,
            policy=policy,
            kind=question.get("kind"),
            extend=extend if extended else None,
        )
        if not extended:
            finding = Finding(
                policy=policy if isinstance(policy, str) else None,
                kind=str(question.get("kind")),
                key=limit_key if isinstance(limit_key, str) else None,
                mode="enforce",
                reason=f"{question.get('reason')} The person asked did not let it go on.",
                observed=_number(question.get("observed")),
                limit=_number(question.get("limit")),
                step=state.steps,
                node=question.get("node") if isinstance(question.get("node"), str) else None,
            )
            self.cancel(Cause(finding, DEFAULT_GRACE_SECONDS, state.now))

    def _ask_or_answer(self, key: str, config: RunnableConfig) -> None:
        """At a node start: pause to ask, or take the answer to the question asked here.
        ``config``: the node's, which LangGraph's interrupt() reads."""
        ask = self.ask
        path = node_path(key)
        token = var_child_runnable_config.set(config)
        try:
            if isinstance(ask, Asking):
                if ask.paused:
                    return  # one question a run; parallel nodes go on
                self.node_ended(key)
                self.pause(path, in_node=False)
            if not isinstance(ask, Answering) or ask.question.get("at") != path:
                return
            interrupt(ask.question)  # the answer, taken off the queue: read at the start
            self.ask = None
        finally:
            var_child_runnable_config.reset(token)

    # -- a soft landing (on_violation: wrap_up) ---------------------------------------------

    def _land(self, cause: Cause, wrap_up: WrapUp) -> bool:
        """Begin a soft landing instead of a cancel: the run drains, then is resumed to
        answer with what it has. False when it cannot (it is stopping, or landing already:
        then the limit is enforced as a cancel)."""
        with self.lock:
            if self.status != "running" or self.landing is not None:
                return False
            self.landing = Landing(cause, wrap_up, wrap_up.llm_calls)
        finding = cause.finding
        self.control.request_drain(finding.reason)
        self.host.emit(
            "wrap_up_started",
            **self.fields,
            policy=finding.policy,
            kind=finding.kind,
            reason=finding.reason,
            step=finding.step,
            node=wrap_up.node,
            llm_calls=wrap_up.llm_calls,
        )
        return True

    def lands(self) -> Landing | None:
        """The soft landing to go on with now that the run has drained, if any."""
        landing = self.landing
        if landing is None or landing.resumed or self.status != "running":
            return None
        return landing

    def resume_landing(self) -> RunControl:
        """The run is resumed to land: a control of its own, since the drained one stays
        drained."""
        assert self.landing is not None
        self.landing.resumed = True
        self.unwinding = False  # from the node the landing stopped, if one was
        self.control = RunControl()
        return self.control

    def landing_failed(self, error: BaseException) -> None:
        """The run could not be made ready to land: its limit is enforced as a cancel."""
        assert self.landing is not None
        self.host.emit("wrap_up_failed", **self.fields, error=f"{type(error).__name__}: {error}")
        self.cancel(self.landing.cause)

    def spend_allowance(self, activity: str) -> bool:
        """A model call (``llm_call``) or a tool call begins while the run lands: True when
        its allowance covers it; else the limit is enforced as a cancel (no tool call is
        ever covered)."""
        landing = self.landing
        assert landing is not None
        with self.lock:
            if activity == "llm_call" and landing.llm_calls_left > 0:
                landing.llm_calls_left -= 1
                return True
        self.cancel(landing.cause)
        return False

    def cancel(self, cause: Cause) -> bool:
        """Mark the run cancelling, once; True when this call did it."""
        with self.lock:
            if self.status != "running":
                if self.status == "cancelling":
                    self.also += (cause,)
                return False
            self.status = "cancelling"
            self.stopping = True
            self.cause = cause
        finding = cause.finding
        self.control.request_drain(finding.reason)
        self.host.record(
            schema.DrainRequested(
                **self.fields,
                policy=finding.policy,
                kind=finding.kind,
                reason=finding.reason,
                step=finding.step,
                grace_seconds=cause.grace_seconds,
            )
        )
        self._call_at(cause.found_at + cause.grace_seconds, self._hard_cancel_due)
        return True

    def _call_at(self, when: float, method: Callable[..., None], *args: Any) -> None:
        timer = self.host.scheduler.call_at(when, method, *args)
        with self.lock:
            # Only the pending ones are kept: a long run reschedules many times. A tuple: most
            # runs keep one timer, and a list made to grow takes twice its room.
            kept = self.timers
            self.timers = (*(t for t in kept if t.pending), timer) if kept else (timer,)

    def _hard_cancel_due(self) -> None:
        """The grace period is over (timer thread): cancel the run's task in its own loop,
        or interrupt the threads of a sync run's nodes."""
        if self.status != "cancelling" or self.unwinding:
            return
        loop = self.loop
        if loop is None:
            self._interrupt_sync_nodes()
        elif not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed: the run ended
                loop.call_soon_threadsafe(self._cancel_task)

    def _emit_hard_cancel(self) -> None:
        cause = self.cause
        assert cause is not None
        self.host.record(
            schema.HardCancel(
                **self.fields,
                policy=cause.finding.policy,
                kind=cause.finding.kind,
                grace_seconds=cause.grace_seconds,
            )
        )

    def _interrupt_sync_nodes(self) -> None:
        """Raise Stop in each thread running a node of this run.

        Python delivers it when the thread next runs Python code: a node blocked in C (a
        socket read, time.sleep) stops as soon as the call returns, not before.
        """
        # Under the lock a node thread cannot finish its node-end callback, so the Stop lands
        # in this run and never in whatever that thread would run next.
        with self.lock:
            threads = set(self.node_threads.values()) if self.node_threads else ()
            if not threads or self.cause is None:
                return
            self.phase = "hard"
            for ident in threads:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(ident), ctypes.py_object(Stop)
                )
        self._emit_hard_cancel()

    def _cancel_task(self) -> None:
        """In the run's loop: a run that has not stopped by now is hung in a node."""
        task = self.task
        if (
            self.status != "cancelling"
            or self.unwinding
            or task is None
            or task.done()
            or self.task_cancelled
        ):
            return
        self.task_cancelled = True
        self.phase = "hard"
        assert self.cause is not None
        self._emit_hard_cancel()
        task.cancel(f"watchdog: {self.cause.finding.reason}")

    # -- the cleanup node ------------------------------------------------------------------

    def cleanup_node(self) -> str | None:
        """The node a cancelled run goes to before it ends, if its policy names one."""
        if self.status != "cancelling" or self.cause is None:
            return None
        return self.cause.cleanup_node

    def cleanup_budget(self) -> float:
        return self.cause.grace_seconds if self.cause is not None else DEFAULT_GRACE_SECONDS

    def cleanup_started(self, node: str) -> None:
        self.host.emit("cleanup_started", **self.fields, node=node, budget_s=self.cleanup_budget())

    def cleanup_finished(self, node: str, error: BaseException | None) -> None:
        outcome = (
            "ok" if error is None else ("timeout" if isinstance(error, TimeoutError) else "failed")
        )
        self.host.emit(
            "cleanup_finished",
            **self.fields,
            node=node,
            outcome=outcome,
            error=None if error is None else f"{type(error).__name__}: {error}",
        )

    # -- thread repair ---------------------------------------------------------------------

    def repair_reason(self) -> str | None:
        """Why the tool calls this run leaves without a result are answered as cancelled;
        None when they are not (the run was not cancelled, or its policy says not to)."""
        cause = self.cause
        if self.status != "cancelling" or cause is None or not cause.repair_thread:
            return None
        finding = cause.finding
        by = f"policy {finding.policy!r}, {finding.kind}" if finding.policy else finding.kind
        return f"({by}) {finding.reason}"

    def thread_repaired(self, repair: ThreadRepair) -> None:
        self.host.emit(
            "thread_repaired",
            **self.fields,
            node=repair.as_node,
            cancelled_calls=repair.cancelled,
            recovered_results=repair.recovered,
        )

    def thread_repair_failed(self, error: BaseException) -> None:
        self.host.emit(
            "thread_repair_failed", **self.fields, error=f"{type(error).__name__}: {error}"
        )

    # -- timers --------------------------------------------------------------------------

    def schedule_timers(self) -> None:
        due = self.monitor.next_deadline()
        if due is not None and (self.timer_due is None or due < self.timer_due):
            self.timer_due = due
            self._call_at(due, self._timers_due, due)

    def _timers_due(self, due: float) -> None:
        if self.status != "running" or due != self.timer_due:
            return  # a stale entry: the run ended, or its deadline moved
        with self.lock:
            found = self.monitor.check_timers()
            if found:
                self.report(found)
            self.timer_due = None
            if self.status == "running":
                self.schedule_timers()

    # -- the end -------------------------------------------------------------------------

    def ending(self, error: BaseException) -> None:
        """The call is ending with ``error``; a caller that stopped reading the stream, or a
        task someone else cancelled, cancels the run (before its cleanup and repair)."""
        if isinstance(error, GeneratorExit):
            # The caller stopped reading the stream: the run is abandoned mid-way.
            self.cancel(self._manual(self.caller_gone or "The caller stopped reading the stream."))
        elif (
            # Someone else cancelled the caller's task (a server whose client went away, or
            # that was asked to stop the run: its message says why).
            isinstance(error, asyncio.CancelledError)
            and not self.task_cancelled
            and self.cancel(self._manual(self.caller_gone or _why_cancelled(error)))
        ):
            self.phase = "hard"

    def end(self, error: BaseException | None) -> BaseException | None:
        """Record how the run ended; returns the exception the caller should see, if any."""
        now = self.host.clock()
        with self.lock:
            outcome: Status = (
                "cancelled"
                if self.status == "cancelling"
                else ("completed" if error is None else "failed")
            )
            self.status = outcome
            self.stopping = True
        self.host.forget(self)
        with self.lock:
            timers, self.timers = self.timers, None
        for timer in timers or ():
            self.host.scheduler.cancel(timer)
        state = self.monitor.state
        elapsed = round(now - state.started_at, 6)
        cause = self.cause if outcome == "cancelled" else None
        if self.monitor.recording is not None:
            self._save_trace(elapsed, outcome, cause)
        if cause is not None:
            latency = round(max(0.0, now - cause.found_at), 6)
            self.host.record(
                schema.RunCancelled(
                    **self.fields,
                    **cause.finding.fields(),
                    phase=self.phase,
                    also=[c.finding.policy or c.finding.kind for c in self.also],
                    latency_s=latency,
                    elapsed_s=elapsed,
                    steps=state.steps,
                    tokens=state.total_tokens,
                )
            )
        landing = self.landing
        if landing is not None and outcome == "completed":
            finding = landing.cause.finding
            self.host.emit(
                "landed_softly",
                **self.fields,
                policy=finding.policy,
                kind=finding.kind,
                reason=finding.reason,
                llm_calls=landing.wrap_up.llm_calls - landing.llm_calls_left,
            )
        self.host.record(
            schema.RunFinished(
                **self.fields,
                outcome=outcome,
                error=None if error is None or cause is not None else type(error).__name__,
                elapsed_s=elapsed,
                steps=state.steps,
                tokens=state.total_tokens,
                input_tokens=state.input_tokens,
                output_tokens=state.output_tokens,
            )
        )
        if cause is None:
            return error
        cancelled = RunCancelled(
            cause.finding,
            run_id=str(self.run_id),
            thread_id=self.thread_id,
            graph=self.graph,
            phase=self.phase,
        )
        self._run_cancel_hooks(cancelled)
        if self.task_cancelled and self.task is not None:
            # Take back our cancel request, caught by a node or not, so the caller's task is
            # left as it was; a cancel of its own still counts and wins.
            external = self.task.uncancel() > 0
            if external and isinstance(error, asyncio.CancelledError):
                return error
        elif isinstance(error, asyncio.CancelledError):
            return error  # the caller's own cancellation goes on
        if isinstance(error, GeneratorExit):
            return error
        return cancelled

    def _save_trace(self, elapsed: float, outcome: Status, cause: Cause | None) -> None:
        end: dict[str, Any] = {"outcome": outcome}
        if cause is not None:
            finding = cause.finding
            end |= {"policy": finding.policy, "kind": finding.kind, "key": finding.key}
            end["step"] = finding.step
        try:
            trace = trace_of(self.monitor, str(self.run_id), self._started_at, elapsed, end)
            self.host.save_trace(trace)
        except Exception as error:  # a full disk must not fail the run it recorded
            self.internal_error(error)

    def _run_cancel_hooks(self, cancelled: RunCancelled) -> None:
        """The supervisor's on_cancel hooks: in tasks of their own for async runs."""
        in_loop = self.loop is not None and _running_loop() is self.loop
        for hook, timeout in self.host.cancel_hooks:
            if in_loop:
                self.spawned(spawn(hook, (cancelled,), timeout, self.fields, self.host.emit))
            else:
                run_hook_sync(hook, (cancelled,), timeout, self.fields, self.host.emit)

    async def settle_cleanups(self) -> None:
        """Wait for this run's cleanup hooks; a cancelled caller stops waiting, they go on."""
        if self.cleanup_tasks:
            await asyncio.shield(asyncio.gather(*self.cleanup_tasks))

    def _manual(self, reason: str, policy: str | None = None) -> Cause:
        state = self.monitor.state
        finding = Finding(
            policy=policy,
            kind="manual",
            key=None,
            mode="enforce",
            reason=reason,
            observed=None,
            limit=None,
            step=state.steps,
            node=state.node,
        )
        graces = [p.grace_seconds for p in self.monitor.policies]
        return Cause(finding, min(graces, default=DEFAULT_GRACE_SECONDS), self.host.clock())

    def cancel_manually(self, reason: str, policy: str | None = None) -> bool:
        """Cancel at an operator's request, or a policy's that is not a limit (supersede)."""
        return self.cancel(self._manual(reason, policy))

    def internal_error(self, error: BaseException) -> None:
        self.host.internal_error(error, self)
