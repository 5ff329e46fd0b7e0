"""Probes in a graph's nodes: node and step events without LangChain's callback dispatch.

Every callback handler on a run makes LangChain dispatch every chain event to it, and on a
graph of small nodes that dispatch alone costs more than the watchdog may. So ``attach()``
runs a copy of the compiled graph whose nodes are wrapped in a ``NodeProbe``: LangGraph
calls the probe in place of the node, and the probe tells the run, found in the task's
config, that the node starts and ends. The callback handler is left with LLM and tool
events, and skips chain events altogether.

A graph whose work cannot all be probed (the functional API, a subgraph called from inside a
node function) is run as it is, and its node events come from chain callbacks instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from langchain_core.runnables import Runnable, RunnableConfig
from langgraph.graph.state import CompiledStateGraph

from ._run import Stop

if TYPE_CHECKING:
    from collections.abc import Hashable

    from ._run import Run

__all__ = ["RUN_KEY", "NodeProbe", "probed"]

# Where a run travels in the config; LangGraph hands configurable down to every task and
# subgraph, and keeps keys starting with "__" out of checkpoint metadata.
RUN_KEY = "__watchdog_run"
_NOTHING: dict[str, Any] = {}  # read, never written: no empty dict made at every node


def probed(graph: Any) -> Any | None:
    """A copy of a compiled graph with a probe in every node; None when it cannot have one."""
    if not isinstance(graph, CompiledStateGraph):
        return None
    nodes = {}
    for name, node in graph.nodes.items():
        update = {}
        if node.subgraphs:
            if node.bound is not node.subgraphs[0]:
                return None  # called from inside a function: out of a probe's reach
            subgraph = probed(node.bound)
            if subgraph is None:
                return None
            update["bound"] = subgraph
        copy = node.copy(update)
        inner = copy.node
        if inner is not None and not name.startswith("__"):  # __start__ takes the input in
            # ``node`` is a cached property: what LangGraph calls to run the node.
            copy.__dict__["node"] = NodeProbe(inner, name)
        nodes[name] = copy
    return graph.copy({"nodes": nodes})


def _started(run: Run, name: str, config: RunnableConfig, input: Any) -> Hashable | None:
    """Tell the run a node starts; its key for ``_ended``, or None after an error of ours."""
    try:
        metadata = config["metadata"]
        key: str = metadata["langgraph_checkpoint_ns"]  # one per task, subgraphs included
        run.node_starting(key, name, key, metadata["langgraph_step"], input)
    except Stop:
        raise
    except Exception as error:
        run.internal_error(error)
        return None
    return key


def _ended(run: Run, key: Hashable | None) -> None:
    if key is not None:
        try:
            run.node_ended(key)
        except Exception as error:
            run.internal_error(error)


class NodeProbe(Runnable[Any, Any]):
    """A node, as LangGraph runs it, with its start and end reported to its run."""

    def __init__(self, inner: Runnable[Any, Any], name: str) -> None:
        self.inner = inner
        self.name = name

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        run: Run | None = config.get("configurable", _NOTHING).get(RUN_KEY) if config else None
        if run is None:
            return self.inner.invoke(input, config, **kwargs)
        key = _started(run, self.name, config, input)  # type: ignore[arg-type]
        try:
            return self.inner.invoke(input, config, **kwargs)
        finally:
            _ended(run, key)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        run: Run | None = config.get("configurable", _NOTHING).get(RUN_KEY) if config else None
        if run is None:
            return await self.inner.ainvoke(input, config, **kwargs)
        key = _started(run, self.name, config, input)  # type: ignore[arg-type]
        try:
            return await self.inner.ainvoke(input, config, **kwargs)
        finally:
            _ended(run, key)

    def stream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[Any]:
        run: Run | None = config.get("configurable", _NOTHING).get(RUN_KEY) if config else None
        if run is None:
            yield from self.inner.stream(input, config, **kwargs)
            return
        key = _started(run, self.name, config, input)  # type: ignore[arg-type]
        try:
            yield from self.inner.stream(input, config, **kwargs)
        finally:
            _ended(run, key)

    async def astream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        run: Run | None = config.get("configurable", _NOTHING).get(RUN_KEY) if config else None
        if run is None:
            async for chunk in self.inner.astream(input, config, **kwargs):
                yield chunk
            return
        key = _started(run, self.name, config, input)  # type: ignore[arg-type]
        try:
            async for chunk in self.inner.astream(input, config, **kwargs):
                yield chunk
        finally:
            _ended(run, key)
