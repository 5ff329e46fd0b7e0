"""Supervised graphs: compiled LangGraph graphs that watch every run they make.

``attach()`` returns a copy of the compiled graph whose class is a subclass of the graph's
own (``CompiledStateGraph`` for a ``StateGraph``, ``Pregel`` for the functional API) with
``stream`` and ``astream`` supervised. Every way of running a graph goes through one of
those two: LangGraph's ``invoke``, ``batch`` and ``stream_events``/``astream_events`` v3 call
them, LangChain's ``astream_events`` v1/v2, ``astream_log`` and ``transform`` too, and
``with_config``, ``copy``, ``with_retry``, ``|`` and a parent graph's node all end in them.
``invoke`` and ``ainvoke`` are supervised as well, as whole calls: no code but LangGraph's
reads their chunks, so the run is set once for the call instead of around each chunk.
``copy`` keeps the class and the attachment, so the Agent Server's copies stay supervised.

A supervised graph called while a run of the watchdog is live in its context (as a node of
a supervised graph, or from inside a node function) joins that run: no second run. The run
travels in a context variable, set only while the graph's own code runs, so it never shows
in configs, checkpoints or streamed chunks, and the caller's context never keeps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Generator,
    Iterator,
    Mapping,
)
from contextvars import ContextVar
from dataclasses import dataclass
from itertools import repeat
from typing import Any, Protocol, cast

from langchain_core.callbacks import BaseCallbackManager
from langchain_core.messages import HumanMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import ensure_config, merge_configs
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.constants import CONFIG_KEY_CHECKPOINTER
from langgraph.errors import GraphDrained
from langgraph.graph import END
from langgraph.pregel import Pregel
from langgraph.runtime import RunControl
from langgraph.types import Command, StateSnapshot

from . import thread_totals as totals
from .callbacks import ChainHandler, WatchdogHandler, running
from .probe import probed_nodes
from .repair import messages_channel, repair
from .run import ASK_MARK, Landing, Run, Stop

__all__ = ["Attachment", "RunStarter", "SupervisedGraph", "caller_gone", "supervise"]

# The reason to record when the caller goes away mid-run (see watchdog.starlette).
caller_gone: ContextVar[str | None] = ContextVar("watchdog_caller_gone", default=None)


class RunStarter(Protocol):
    """What a supervised graph needs of its supervisor."""

    ledgers: totals.Ledgers  # scope: thread totals of the runs live in this process

    def start_run(self, graph: str, config: RunnableConfig, control: RunControl) -> Run: ...


@dataclass(frozen=True, slots=True)
class Attachment:
    """What a supervised graph carries: who starts its runs, and under which name."""

    supervisor: RunStarter
    name: str
    probed: bool  # its nodes report themselves; else chain callbacks must tell of them
    messages: str | None  # the channel add_messages reduces, if any: threads to repair


def supervise(graph: Pregel[Any, Any, Any, Any], supervisor: RunStarter, name: str) -> Any:
    """A supervised copy of a compiled graph, of a subclass of the graph's own class."""
    nodes = probed_nodes(graph, reports_itself=lambda sub: isinstance(sub, SupervisedGraph))
    attrs = {k: v for k, v in graph.__dict__.items() if k != "__orig_class__"}
    if nodes is not None:
        attrs["nodes"] = nodes
    attrs["_watchdog"] = Attachment(
        supervisor, name, probed=nodes is not None, messages=messages_channel(graph)
    )
    return _supervised_class(type(graph))(**attrs)


# Supervised subclasses by graph class; _classes_lock guards it (attach() may run in threads).
_classes: dict[type, type] = {}
_classes_lock = threading.Lock()


def _supervised_class(cls: type) -> type:
    if issubclass(cls, SupervisedGraph):
        return cls
    with _classes_lock:
        return _classes.get(cls) or _classes.setdefault(cls, _subclass(cls))


def _subclass(cls: type) -> type:
    # Named as the graph's own class, so what names a class (get_graph().to_json(),
    # drawings, reprs) shows the user's graph as it was; isinstance tells them apart.
    return type(
        cls.__name__,
        (SupervisedGraph, cls),
        {"__module__": cls.__module__, "__qualname__": cls.__qualname__},
    )


def _with_handler(callbacks: Any, handler: WatchdogHandler) -> Any:
    """The caller's callbacks, list or manager, with ours added."""
    if callbacks is None:
        return [handler]
    if isinstance(callbacks, BaseCallbackManager):
        manager = callbacks.copy()
        manager.add_handler(handler, inherit=True)
        return manager
    return [*callbacks, handler]


def _joins(handler: WatchdogHandler | None) -> bool:
    """Whether a call in this context joins a live run."""
    return handler is not None and handler.run.status in ("running", "cancelling")


# How a run that begins to land softly stops: LangGraph's drain, or a node kept from starting.
LANDING = (GraphDrained, Stop)

# Seconds an async thread repair may take (a read and a write of one checkpoint).
REPAIR_TIMEOUT = 10.0


class _Supervising:
    """How a supervised call begins and ends: the thread totals a run keeps are loaded
    before the call and saved after it; a cancelled run goes to its cleanup node (if its
    policy names one), then has its thread's unanswered tool calls answered; how the call
    ended becomes the run's outcome and what the caller sees; an async call waits for the
    run's cleanup hooks.

    One class, not generators or nested context managers: each live run holds one, and a
    generator's frame is ten times the size.
    """

    __slots__ = ("config", "graph", "kept", "run")

    def __init__(self, graph: SupervisedGraph, run: Run, config: RunnableConfig | None) -> None:
        self.graph, self.run, self.config = graph, run, config
        self.kept = graph._totals_kept(run)

    def __enter__(self) -> None:
        if self.kept is not None:
            try:
                ledgers = self._ledgers()
                loaded = None if ledgers.has(*self.kept) else totals.load(*self.kept)
                ledgers.join(*self.kept, loaded, self.run.monitor.state)
            except BaseException as error:
                self._exit(error)
                raise

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: Any
    ) -> None:
        if self.kept is not None:
            try:
                try:
                    totals.save(*self.kept, totals.used_by(self.run.monitor.state))
                finally:
                    self._ledgers().leave(*self.kept, self.run.monitor.state)
            except BaseException as failed:
                self._exit(failed)
                raise
        self._exit(error)

    def _exit(self, error: BaseException | None) -> None:
        if error is None:
            self._end(None)
            return
        self.run.ending(error)
        try:
            self.graph._cleanup(self.run, self.config)
            self.graph._repair(self.run, self.config)
        except BaseException as escaped:  # the cleanup itself interrupted
            self._end(escaped)
            raise
        self._end(error)

    async def __aenter__(self) -> None:
        if self.kept is not None:
            try:
                ledgers = self._ledgers()
                loaded = None if ledgers.has(*self.kept) else await totals.aload(*self.kept)
                ledgers.join(*self.kept, loaded, self.run.monitor.state)
            except BaseException as error:
                await self._aexit(error)
                raise

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: Any
    ) -> None:
        if self.kept is not None:
            try:
                try:
                    await totals.asave(*self.kept, totals.used_by(self.run.monitor.state))
                finally:
                    self._ledgers().leave(*self.kept, self.run.monitor.state)
            except BaseException as failed:
                await self._aexit(failed)
                raise
        await self._aexit(error)

    async def _aexit(self, error: BaseException | None) -> None:
        try:
            if error is not None:
                self.run.ending(error)
                try:
                    await self.graph._acleanup(self.run, self.config)
                    await self.graph._arepair(self.run, self.config)
                except BaseException as escaped:  # the cleanup itself cancelled
                    self._end(escaped)
                    raise
            self._end(error)
        finally:
            await self.run.settle_cleanups()

    def _ledgers(self) -> totals.Ledgers:
        """The thread totals of the runs live in this process, one ledger a thread."""
        return self.graph._watchdog.supervisor.ledgers

    def _end(self, error: BaseException | None) -> None:
        """End the run; raises what the caller must see instead of ``error``, if anything."""
        outcome = self.run.end(error)
        if outcome is error:
            return  # the error goes on as it was; None for None: the call just completed
        if error is not None:
            # Replaced, and never shown: its traceback would hold the run's frames in a
            # cycle with LangGraph's loop (which keeps a failed task's error), outliving it.
            error.__traceback__ = None
        try:
            raise outcome from None  # type: ignore[misc]
        finally:
            # The exception's traceback holds this frame: no cycle, so the run it raised
            # for is freed as soon as the caller drops the exception.
            outcome = None


class SupervisedGraph(Pregel[Any, Any, Any, Any]):
    """A compiled graph whose runs are supervised: ``isinstance(app, SupervisedGraph)``.

    The class ``attach()`` returns derives from this one and from the graph's own class.
    """

    _watchdog: Attachment

    def __init__(
        self,
        *,
        _watchdog: Attachment,
        _output_mapper: Callable[[Any], Any] | None = None,
        _state_mapper: Callable[[Any], Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._watchdog = _watchdog
        # Pregel's copy() passes these on, and its constructor would drop them: v2 output
        # of a pydantic or dataclass state needs them.
        if _output_mapper is not None:
            self._output_mapper = _output_mapper
        if _state_mapper is not None:
            self._state_mapper = _state_mapper

    # -- running ---------------------------------------------------------------------------

    # invoke and ainvoke: only LangGraph's own loop reads their chunks, so the whole call
    # runs with the run set, and no frame of the watchdog's comes between chunks. stream and
    # astream: the caller's code runs between chunks, and never sees the run.

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        if _joins(running.get()):
            return super().invoke(input, config, **kwargs)
        run, handler, config = self._start(config, kwargs)
        with _Supervising(self, run, config):
            self._answering(run, input, config)
            context = contextvars.copy_context()
            context.run(running.set, handler)
            call: Callable[..., Any] = super().invoke
            try:
                return context.run(call, input, config, control=run.control, **kwargs)
            except LANDING:
                if run.lands() is None:
                    raise
            # The run drained, or a node was stopped, at a wrap_up limit: resumed to answer.
            return context.run(self._land, run, config, kwargs)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        if _joins(running.get()):
            return await super().ainvoke(input, config, **kwargs)
        run, handler, config = self._start(config, kwargs)
        run.bind_task()
        async with _Supervising(self, run, config):
            await self._aanswering(run, input, config)
            token = running.set(handler)
            try:
                try:
                    return await super().ainvoke(input, config, control=run.control, **kwargs)
                except LANDING:
                    if run.lands() is None:
                        raise
                # Resumed in a coroutine of its own: a live run's frame stays small.
                return await self._aland(run, config, kwargs)
            finally:
                running.reset(token)

    def stream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[Any]:
        # A plain method, so that a call inside a run (an invoke's own, or a subgraph's that
        # joins it) gets LangGraph's generator itself.
        if _joins(running.get()):
            return super().stream(input, config, **kwargs)
        return self._stream(input, config, kwargs)

    def astream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        if _joins(running.get()):
            return super().astream(input, config, **kwargs)
        return self._astream(input, config, kwargs)

    def _stream(
        self, input: Any, config: RunnableConfig | None, kwargs: dict[str, Any]
    ) -> Iterator[Any]:
        run, handler, config = self._start(config, kwargs)
        # The graph's code runs in a context of its own, the run set in it once.
        context = contextvars.copy_context()
        context.run(running.set, handler)
        with _Supervising(self, run, config):
            self._answering(run, input, config)
            chunks = cast(
                Generator[Any], super().stream(input, config, control=run.control, **kwargs)
            )
            try:
                # Each chunk read in that context, with no frame of ours in between: the map
                # ends where the chunks do.
                yield from map(context.run, repeat(next), repeat(chunks))
            except LANDING:
                if run.lands() is None:
                    raise
            finally:
                context.run(chunks.close)
            landing = context.run(self._landing, run, config)
            if landing is not None:
                thread, resume = landing
                control = run.resume_landing()
                chunks = cast(
                    Generator[Any], super().stream(resume, thread, control=control, **kwargs)
                )
                try:
                    yield from map(context.run, repeat(next), repeat(chunks))
                finally:
                    context.run(chunks.close)

    async def _astream(
        self, input: Any, config: RunnableConfig | None, kwargs: dict[str, Any]
    ) -> AsyncIterator[Any]:
        run, handler, config = self._start(config, kwargs)
        run.bind_task()
        async with _Supervising(self, run, config):
            await self._aanswering(run, input, config)
            chunks = cast(
                AsyncGenerator[Any],
                super().astream(input, config, control=run.control, **kwargs),
            )
            # Closed here, not whenever the collector gets to it: LangGraph's stream ends
            # before the run does.
            try:
                async with contextlib.aclosing(_read(chunks, run, handler)) as reading:
                    async for chunk in reading:
                        yield chunk
            except LANDING:
                if run.lands() is None:
                    raise
            landing = await self._alanding(run, config)
            if landing is not None:
                thread, resume = landing
                control = run.resume_landing()
                chunks = cast(
                    AsyncGenerator[Any],
                    super().astream(resume, thread, control=control, **kwargs),
                )
                async with contextlib.aclosing(_read(chunks, run, handler)) as reading:
                    async for chunk in reading:
                        yield chunk

    def _start(
        self, config: RunnableConfig | None, kwargs: dict[str, Any]
    ) -> tuple[Run, WatchdogHandler, RunnableConfig | None]:
        """Start a run; returns it, its callback handler and the config to run the graph
        with."""
        attachment = self._watchdog
        # Passed to LangGraph by name: a keyword dict that stays empty is the smallest.
        control = kwargs.pop("control", None) or RunControl()
        run = attachment.supervisor.start_run(attachment.name, self._seen(config), control)
        run.caller_gone = caller_gone.get()
        if attachment.probed:
            # LLM and tool calls reach the handler through the configure hook (``running``):
            # the run's callbacks stay the caller's.
            return run, WatchdogHandler(run), config
        # Chain events too: the handler goes in the callbacks, which every child inherits.
        handler = ChainHandler(run)
        ours = RunnableConfig(**(config or {}))
        ours["callbacks"] = _with_handler(ours.get("callbacks"), handler)
        return run, handler, ours

    def _seen(self, config: RunnableConfig | None) -> RunnableConfig:
        """The config as the graph sees it: with_config's and the caller context's included.
        Worked out again where needed, not kept: a live run holds no more than it must."""
        return ensure_config(merge_configs(self.config, config))

    # -- scope: thread: totals kept with the thread ---------------------------------------

    def _totals_kept(self, run: Run) -> tuple[totals.Saver, str] | None:
        """The checkpointer to keep this run's thread totals in, and its thread, if the run
        needs them."""
        thread, saver = run.thread_id, self.checkpointer
        if (
            thread is None
            or not isinstance(saver, BaseCheckpointSaver)
            or not any(p.kind.per_thread for p in run.monitor.policies)
        ):
            return None
        return saver, thread

    # -- the cleanup node: where a cancelled run goes to wrap up --------------------------

    def _cleanup(self, run: Run, config: RunnableConfig | None) -> None:
        node = run.cleanup_node()
        if node is None:
            return
        thread = _thread_config(self._seen(config))
        run.cleanup_started(node)
        with _outside_runs():
            try:
                resume = _cleanup_input(node, self.get_state(thread))
                if resume is not None:
                    self.update_state(thread, None, as_node=END)  # drop pending tasks
                for _ in super().stream(resume, thread):
                    pass
            except Exception as error:
                run.cleanup_finished(node, error)
            else:
                run.cleanup_finished(node, None)

    async def _acleanup(self, run: Run, config: RunnableConfig | None) -> None:
        node = run.cleanup_node()
        if node is None:
            return
        thread = _thread_config(self._seen(config))
        run.cleanup_started(node)
        with _outside_runs():
            try:
                async with asyncio.timeout(run.cleanup_budget()):
                    resume = _cleanup_input(node, await self.aget_state(thread))
                    if resume is not None:
                        await self.aupdate_state(thread, None, as_node=END)
                    async for _ in super().astream(resume, thread):
                        pass
            except Exception as error:
                run.cleanup_finished(node, error)
            else:
                run.cleanup_finished(node, None)

    # -- asking a person: a run that resumes a thread the watchdog paused ---------------

    def _resumed_thread(self, input: Any, config: RunnableConfig | None) -> RunnableConfig | None:
        """The kept thread a ``Command(resume=...)`` resumes, if ``input`` is one."""
        if not isinstance(input, Command) or input.resume is None:
            return None  # not a resume: the common case, decided before any config is merged
        return _saved_thread(self._seen(config), self.checkpointer)

    def _answering(self, run: Run, input: Any, config: RunnableConfig | None) -> None:
        """If ``input`` answers a question the watchdog asked on this thread, the run goes on
        from the paused run's usage and takes the answer (see ``Run.answering``)."""
        thread = self._resumed_thread(input, config)
        if thread is None:
            return
        with _outside_runs():
            try:
                found = _question(self.get_state(thread), input.resume)
            except Exception as error:
                run.internal_error(error)
                return
        if found is not None:
            run.answering(*found)

    async def _aanswering(self, run: Run, input: Any, config: RunnableConfig | None) -> None:
        thread = self._resumed_thread(input, config)
        if thread is None:
            return
        with _outside_runs():
            try:
                found = _question(await self.aget_state(thread), input.resume)
            except Exception as error:
                run.internal_error(error)
                return
        if found is not None:
            run.answering(*found)

    # -- a soft landing: a run drained at a wrap_up limit is resumed to answer ---------------

    def _land(self, run: Run, config: RunnableConfig | None, kwargs: dict[str, Any]) -> Any:
        """Resume a drained run to land (with the run set); None when there is nothing to
        resume."""
        landing = self._landing(run, config)
        if landing is None:
            return None
        thread, resume = landing
        return super().invoke(resume, thread, control=run.resume_landing(), **kwargs)

    async def _aland(self, run: Run, config: RunnableConfig | None, kwargs: dict[str, Any]) -> Any:
        landing = await self._alanding(run, config)
        if landing is None:
            return None
        thread, resume = landing
        return await super().ainvoke(resume, thread, control=run.resume_landing(), **kwargs)

    def _landing(
        self, run: Run, config: RunnableConfig | None
    ) -> tuple[RunnableConfig, Any] | None:
        """The thread and input to resume a run that drained to land softly, its thread
        made ready; None when there is nothing to resume (no landing, or the run ended in
        the step it drained after: its answer is in)."""
        landing = run.lands()
        if landing is None:
            return None
        thread = _thread_config(self._seen(config))
        with _outside_runs():
            try:
                snapshot = self.get_state(thread)
                if not snapshot.next:
                    return None
                update, resume = _landing_plan(landing, snapshot, self._watchdog.messages)
                if update is not None:
                    self.update_state(thread, *update)
            except Exception as error:
                run.landing_failed(error)
                return None
        return thread, resume

    async def _alanding(
        self, run: Run, config: RunnableConfig | None
    ) -> tuple[RunnableConfig, Any] | None:
        landing = run.lands()
        if landing is None:
            return None
        thread = _thread_config(self._seen(config))
        with _outside_runs():
            try:
                snapshot = await self.aget_state(thread)
                if not snapshot.next:
                    return None
                update, resume = _landing_plan(landing, snapshot, self._watchdog.messages)
                if update is not None:
                    await self.aupdate_state(thread, *update)
            except Exception as error:
                run.landing_failed(error)
                return None
        return thread, resume

    # -- thread repair: a cancelled run leaves every tool call answered -------------------

    def _repair_target(self, run: Run, config: RunnableConfig | None) -> RunnableConfig | None:
        """The thread to repair after ``run``, if it needs looking at."""
        if self._watchdog.messages is None or run.repair_reason() is None:
            return None
        return _saved_thread(self._seen(config), self.checkpointer)

    def _repair(self, run: Run, config: RunnableConfig | None) -> None:
        thread = self._repair_target(run, config)
        if thread is None:
            return
        channel, reason = cast(str, self._watchdog.messages), cast(str, run.repair_reason())
        with _outside_runs():
            try:
                found = repair(self.get_state(thread), channel, reason)
                if found is not None:
                    self.update_state(thread, {channel: found.messages}, as_node=found.as_node)
                    run.thread_repaired(found)
            except Exception as error:
                run.thread_repair_failed(error)

    async def _arepair(self, run: Run, config: RunnableConfig | None) -> None:
        thread = self._repair_target(run, config)
        if thread is None:
            return
        channel, reason = cast(str, self._watchdog.messages), cast(str, run.repair_reason())
        with _outside_runs():
            try:
                # A read and a write of one checkpoint: bounded, in a task that was cancelled.
                async with asyncio.timeout(REPAIR_TIMEOUT):
                    found = repair(await self.aget_state(thread), channel, reason)
                    if found is not None:
                        await self.aupdate_state(
                            thread, {channel: found.messages}, as_node=found.as_node
                        )
                if found is not None:
                    run.thread_repaired(found)
            except Exception as error:
                run.thread_repair_failed(error)


async def _read(
    chunks: AsyncGenerator[Any], run: Run, handler: WatchdogHandler
) -> AsyncGenerator[Any]:
    """LangGraph's chunks, each read with the run set, and none of the caller's code."""
    try:
        while True:
            # A server may read each chunk in a task of its own (the Agent Server does):
            # the one to hard-cancel is this one.
            run.task = asyncio.current_task()
            token = running.set(handler)
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            finally:
                running.reset(token)
            yield chunk
    finally:
        token = running.set(handler)
        try:
            await chunks.aclose()
        finally:
            running.reset(token)


def _landing_plan(
    landing: Landing, snapshot: StateSnapshot, channel: str | None
) -> tuple[tuple[Any, str | None] | None, Any]:
    """How to resume a drained run to land: the update to write first (values, as which
    node), if any, and the input to resume with.

    At a named node, the run goes there as a cancelled run goes to its cleanup node. Else
    the tool calls the drain left unanswered get their result (they will not run) and the
    conversation gets the message telling the model to answer now.
    """
    wrap_up = landing.wrap_up
    if wrap_up.node is not None:
        resume = _cleanup_input(wrap_up.node, snapshot)
        return ((None, END) if resume is not None else None), resume
    assert channel is not None  # attach() refuses a wrap_up with neither
    found = repair(snapshot, channel, landing.cause.finding.reason)
    messages = [*(found.messages if found else ()), HumanMessage(wrap_up.message)]
    return ({channel: messages}, found.as_node if found else None), None


def _saved_thread(seen: RunnableConfig, saver: object) -> RunnableConfig | None:
    """The config of the thread a run is on, if a checkpointer keeps it: the graph's own
    (``saver``), or one a server lends its runs (the Agent Server)."""
    thread = _thread_config(seen)
    configurable = thread["configurable"]
    kept = isinstance(saver, BaseCheckpointSaver) or isinstance(
        configurable.get(CONFIG_KEY_CHECKPOINTER), BaseCheckpointSaver
    )
    return thread if kept and configurable.get("thread_id") is not None else None


def _question(snapshot: StateSnapshot, resume: Any) -> tuple[Mapping[str, Any], Any] | None:
    """The watchdog's question among a thread's pending interrupts, if it asked one, and
    its answer in ``resume`` (the value itself, or the value under the question's id)."""
    for pending in snapshot.interrupts:
        value = pending.value
        if isinstance(value, Mapping) and value.get(ASK_MARK) == "limit_reached":
            by_id = isinstance(resume, Mapping) and pending.id in resume
            return value, resume[pending.id] if by_id else resume
    return None


@contextlib.contextmanager
def _outside_runs() -> Iterator[None]:
    """The watchdog's own use of the graph's machinery (its checkpointer, a cleanup node's
    run): no run sees it, and no probe counts it."""
    token = running.set(None)
    try:
        yield
    finally:
        running.reset(token)


def _thread_config(seen: RunnableConfig) -> RunnableConfig:
    """The config to resume a cancelled run's thread with, at its latest checkpoint."""
    configurable = seen.get("configurable") or {}
    return {"configurable": {k: v for k, v in configurable.items() if k != "checkpoint_id"}}


def _cleanup_input(node: str, snapshot: Any) -> Command[Any] | None:
    """How to resume a stopped run so that it runs ``node``: None when it routed itself
    there (a node that caught the cancel); else its pending tasks are cleared and it goes
    to ``node``."""
    return None if tuple(snapshot.next) == (node,) else Command(goto=node)
