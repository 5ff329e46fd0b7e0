"""LangChain callbacks that turn a run's LLM and tool calls (and, for graphs the node probes
cannot reach, its nodes) into engine events.

A run's handler is not in its callbacks: LangChain would copy it into the config of every
node and runnable, and dispatch every chain event to it. It sits in ``running``, a context
variable registered with LangChain's configure hook: every callback manager configured while
the run's code runs (a chat model's or a tool's, as each call begins) gets it, for that call
alone (not inherited). The same variable tells the node probes which run they are in.

The handler is synchronous with ``run_inline = True``: LangChain then calls it directly, in
async graphs too, instead of handing each event to a thread pool. Nothing in it blocks.
It raises ``Stop`` from a ``*_start`` callback to keep a cancelled run from starting a node,
an LLM call or a tool; any other error of its own is logged and counted, and the run goes on.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import LLMResult
from langchain_core.tracers.context import register_configure_hook
from langgraph.errors import GraphBubbleUp

from .run import Run, Stop, node_path

__all__ = ["ChainHandler", "WatchdogHandler", "current_run", "running"]

HANDLERS = frozenset({"WatchdogHandler", "ChainHandler"})
NO_MODELS: dict[UUID, str] = {}  # every handler's until its first LLM call: never written


class _QuietStops(logging.Filter):
    """LangChain logs a warning for every exception a handler raises, wanted or not; a Stop
    is the watchdog doing its job, and the cancel has an event of its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (
            isinstance(args, tuple)
            and len(args) == 3
            and args[0] in HANDLERS
            and str(args[2]).startswith("Stop(")
        )


logging.getLogger("langchain_core.callbacks.manager").addFilter(_QuietStops())

P = ParamSpec("P")
R = TypeVar("R")


def _guarded(method: Callable[P, R]) -> Callable[P, R | None]:
    """Never let a watchdog bug break the run: log, count, go on. ``Stop`` and a pause are
    on purpose."""

    @functools.wraps(method)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> R | None:
        try:
            return method(*args, **kwargs)
        except (Stop, GraphBubbleUp):  # a stop, or a pause to ask a person
            raise
        except Exception as exc:
            handler: WatchdogHandler = args[0]  # type: ignore[assignment]
            handler.run.internal_error(exc)
            return None

    return guarded


def _max_tokens(params: Mapping[str, Any] | None) -> int:
    """The most tokens the call may answer with, as its invocation parameters say; 0 if
    they do not."""
    value = (params or {}).get("max_tokens")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _node_path(metadata: Mapping[str, Any] | None) -> str | None:
    """The path of the node a call is made in, from the run metadata LangGraph documents."""
    namespace = (metadata or {}).get("langgraph_checkpoint_ns")
    return node_path(namespace) if isinstance(namespace, str) else None


def _usage(response: LLMResult) -> tuple[int, int, int | None]:
    input_tokens = output_tokens = 0
    total: int | None = None
    for generations in response.generations:
        for generation in generations:
            usage = getattr(getattr(generation, "message", None), "usage_metadata", None)
            if usage:
                input_tokens += usage.get("input_tokens", 0)
                output_tokens += usage.get("output_tokens", 0)
                if "total_tokens" in usage:
                    total = (total or 0) + usage["total_tokens"]
    return input_tokens, output_tokens, total


class WatchdogHandler(BaseCallbackHandler):
    """LLM and tool events of a run. Node events come from probes in the graph's nodes, so
    LangChain need not call this handler for every chain (see ``ChainHandler``)."""

    run_inline = True
    raise_error = True  # so Stop propagates; _guarded swallows our own errors
    # LangChain skips these events for this handler altogether.
    ignore_chain = True
    ignore_retriever = True
    ignore_retry = True
    ignore_custom_event = True

    def __init__(self, run: Run) -> None:
        self.run = run
        # The model of each LLM call under way, made at the first (under the run's lock): a
        # run that calls none holds no dict of its own.
        self._models = NO_MODELS

    # -- LLM calls -----------------------------------------------------------------------

    @_guarded
    def on_chat_model_start(
        self,
        serialized: dict[str, Any] | None,
        messages: Any,
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._llm_started(run_id, serialized, metadata, kwargs.get("invocation_params"))

    @_guarded
    def on_llm_start(
        self,
        serialized: dict[str, Any] | None,
        prompts: list[str],
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._llm_started(run_id, serialized, metadata, kwargs.get("invocation_params"))

    def _llm_started(
        self,
        run_id: UUID,
        serialized: dict[str, Any] | None,
        metadata: dict[str, Any] | None,
        params: Mapping[str, Any] | None,
    ) -> None:
        run = self.run
        model = (metadata or {}).get("ls_model_name") or (serialized or {}).get("name") or "?"
        if run.stopping:
            run.refused("llm_call", model)
            raise Stop
        if run.landing is not None and not run.spend_allowance("llm_call"):
            raise Stop
        if run.asking():
            run.pause(_node_path(metadata), in_node=True)
        with run.lock:
            if self._models is NO_MODELS:
                self._models = {}
            self._models[run_id] = model
            found = run.monitor.llm_started(model)
            if found and run.report(found):
                raise Stop
        if run.shared and run.reserve_shared(
            str(run_id), model=model, max_tokens=_max_tokens(params)
        ):
            raise Stop  # a shared limit has no room for the call: it does not start

    @_guarded
    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        run = self.run
        model = self._models.pop(run_id, "?")
        input_tokens, output_tokens, total = _usage(response)
        if run.shared:
            run.settle_shared(str(run_id), model, input_tokens, output_tokens, total)
        with run.lock:
            found = run.monitor.llm_ended(model, input_tokens, output_tokens, total)
            stop = bool(found) and run.report(found)
        if stop:
            raise Stop  # the answer is paid for, but the node must not act on it

    @_guarded
    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        model = self._models.pop(run_id, "?")
        if self.run.shared:
            self.run.settle_shared(str(run_id), model, 0, 0, None)  # releases reservations

    # -- tools ---------------------------------------------------------------------------

    @_guarded
    def on_tool_start(
        self,
        serialized: dict[str, Any] | None,
        input_str: str,
        *,
        run_id: UUID,
        **kwargs: Any,
    ) -> None:
        run = self.run
        name = (serialized or {}).get("name") or kwargs.get("name") or "?"
        if run.stopping:
            run.refused("tool_call", name)
            raise Stop
        if run.landing is not None and not run.spend_allowance("tool_call"):
            raise Stop  # no tool runs once a run lands softly
        if run.asking():
            run.pause(_node_path(kwargs.get("metadata")), in_node=True)
        with run.lock:
            found = run.monitor.tool_started(name, input_str)
            if found and run.report(found):
                raise Stop
            # A node may run its tools in a pool of its own (ToolNode does, for a sync
            # graph): a hard cancel must reach the tool's thread, not only the node's.
            run.entered_thread(run_id)
        if run.shared and run.reserve_shared(str(run_id), tool=True):
            with run.lock:
                run.left_thread(run_id)
            raise Stop  # a shared rate of tool calls has no room for this one

    @_guarded
    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        with self.run.lock:
            self.run.monitor.tool_ended()
            self.run.left_thread(run_id)

    @_guarded
    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        with self.run.lock:
            self.run.monitor.tool_ended()
            self.run.left_thread(run_id)


class ChainHandler(WatchdogHandler):
    """Node runs from chain callbacks as well: for graphs whose nodes cannot all be probed
    (the functional API, whose ``@task`` calls are node runs too; a plain compiled graph
    called from inside a node function).

    LangGraph gives each task (a node run, a ``@task`` call) a checkpoint namespace of its
    own in the run metadata it documents (``langgraph_checkpoint_ns``), and every runnable
    inside the task inherits it. So the first chain to start with a namespace not yet open is
    the task itself, and its end is the task's end. A probed node reports under the same
    key, so a node seen both ways counts once.
    """

    ignore_chain = False

    def __init__(self, run: Run) -> None:
        super().__init__(run)
        self._tasks: dict[UUID, str] = {}  # chain run id -> the namespace of its task

    @_guarded
    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        # Most chains are not tasks (the graph itself, runnables inside a node): the hot path.
        if not metadata:
            return
        namespace = metadata.get("langgraph_checkpoint_ns")
        if namespace is None or namespace in self.run.monitor.state.open_nodes:
            return
        name = metadata.get("langgraph_node") or kwargs.get("name") or "?"
        if self.run.node_starting(name, metadata, inputs) is not None:
            self._tasks[run_id] = namespace

    @_guarded
    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        namespace = self._tasks.pop(run_id, None)
        if namespace is not None:
            self.run.node_ended(namespace)

    @_guarded
    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        namespace = self._tasks.pop(run_id, None)
        if namespace is not None:
            self.run.node_ended(namespace)


# The handler of the run whose graph code runs in this context (its run: ``.run``). LangGraph
# copies the context into every task, thread and subgraph of a run, and nothing of it reaches
# configs, checkpoints or streamed chunks. A supervised graph sets it only while its own code
# runs (see graph.py).
running: ContextVar[WatchdogHandler | None] = ContextVar("watchdog_run", default=None)
register_configure_hook(running, inheritable=False)


def current_run() -> Run | None:
    """The supervised run whose node is running in this context, if any."""
    handler = running.get()
    return None if handler is None else handler.run
