"""Probes in a graph's nodes: node and step events without LangChain's callback dispatch.

A callback handler in a run's callbacks makes LangChain dispatch every chain event to it,
and on a graph of small nodes that dispatch alone costs more than the watchdog may. So a
supervised graph runs nodes wrapped in a ``NodeProbe``: LangGraph calls the probe in place
of the node, and the probe tells the run of its context (``callbacks.running``) that the
node starts and ends. The run's handler is left with LLM and tool events, which reach it
through LangChain's configure hook, with no handler in the run's callbacks.

A graph whose work cannot all be probed (the functional API, whose ``@task`` calls are no
nodes; a plain compiled graph called from inside a node function) reports its node runs
through chain callbacks instead (``ChainHandler``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any

from langchain_core.runnables import Runnable, RunnableConfig
from langgraph.graph.state import CompiledStateGraph
from langgraph.pregel import Pregel

from .callbacks import running

if TYPE_CHECKING:
    from langgraph.pregel._read import PregelNode

    from .run import Run

__all__ = ["NodeProbe", "probed_nodes"]


def probed_nodes(
    graph: Pregel[Any, Any, Any, Any], reports_itself: Callable[[Any], bool]
) -> dict[str, PregelNode] | None:
    """A graph's nodes with a probe in each; None when some node's work is out of reach.

    ``reports_itself(subgraph)`` tells a subgraph that reports its own nodes to the run it
    joins (a supervised graph): it is left as it is.
    """
    if not isinstance(graph, CompiledStateGraph):
        return None
    nodes = {}
    for name, node in graph.nodes.items():
        update = {}
        subgraphs = node.subgraphs
        if subgraphs and not all(reports_itself(s) for s in subgraphs):
            if node.bound is not subgraphs[0]:
                return None  # called from inside a function: out of a probe's reach
            inner = probed_nodes(node.bound, reports_itself)  # type: ignore[arg-type]
            if inner is None:
                return None
            update["bound"] = node.bound.copy({"nodes": inner})  # type: ignore[attr-defined]
        copy = node.copy(update)
        body = copy.node
        if body is not None and not name.startswith("__") and not isinstance(body, NodeProbe):
            # ``node`` is a cached property: what LangGraph calls to run the node. __start__
            # only takes the input in.
            copy.__dict__["node"] = NodeProbe(body, name)
        nodes[name] = copy
    return nodes


class NodeProbe(Runnable[Any, Any]):
    """A node, as LangGraph runs it, with its start and end reported to its run."""

    def __init__(self, inner: Runnable[Any, Any], name: str) -> None:
        self.inner = inner
        self.name = self.node = name

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        handler = running.get()
        if handler is None or config is None:
            return self.inner.invoke(input, config, **kwargs)
        run = handler.run
        key = run.node_starting(self.node, config.get("metadata"), input, config)
        try:
            return self.inner.invoke(input, config, **kwargs)
        finally:
            if key is not None:
                run.node_ended(key)

    def ainvoke(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Coroutine[Any, Any, Any]:
        # Not a coroutine function: the node's own coroutine is handed back as it is, or in
        # the smallest one that sees it end (a waiting node keeps it for as long as it waits).
        handler = running.get()
        if handler is None or config is None:
            return self.inner.ainvoke(input, config, **kwargs)
        run = handler.run
        key = run.node_starting(self.node, config.get("metadata"), input, config)
        call = self.inner.ainvoke(input, config, **kwargs)
        return call if key is None else _ending(call, run, key)

    def stream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[Any]:
        handler = running.get()
        if handler is None or config is None:
            yield from self.inner.stream(input, config, **kwargs)
            return
        run = handler.run
        key = run.node_starting(self.node, config.get("metadata"), input, config)
        try:
            yield from self.inner.stream(input, config, **kwargs)
        finally:
            if key is not None:
                run.node_ended(key)

    async def astream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        handler = running.get()
        if handler is None or config is None:
            async for chunk in self.inner.astream(input, config, **kwargs):
                yield chunk
            return
        run = handler.run
        key = run.node_starting(self.node, config.get("metadata"), input, config)
        try:
            async for chunk in self.inner.astream(input, config, **kwargs):
                yield chunk
        finally:
            if key is not None:
                run.node_ended(key)


async def _ending(call: Awaitable[Any], run: Run, key: str) -> Any:
    """The node's call, with its end reported to its run."""
    try:
        return await call
    finally:
        run.node_ended(key)
