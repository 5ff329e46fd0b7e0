"""attach() returns a real compiled graph: supervised through every entry, transparent."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import gc
import pickle
import weakref
from collections.abc import Callable
from typing import Any

import pytest
from langchain_core.runnables import RunnableLambda
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.errors import GraphRecursionError
from langgraph.func import entrypoint, task
from langgraph.graph import START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.pregel import Pregel
from langgraph.types import RetryPolicy
from pydantic import BaseModel

from tests.graphs import Bodies, Counter, endless, inner_loop, one_node, policies
from watchdog import RunCancelled, SupervisedGraph, Supervisor
from watchdog._adapter.callbacks import current_run
from watchdog._adapter.run import Run
from watchdog.testing import capture_events

STEPS = "- {name: steps, step_count: {max_steps: 5}}"


def supervisor(text: str = STEPS) -> Supervisor:
    return Supervisor(policies(text))


def looping(bodies: Bodies, *, is_async: bool = False) -> Any:
    return endless(bodies, is_async=is_async, checkpointer=False)


def started(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == "watchdog.run_started"]


# -- a graph of the graph's own kind ---------------------------------------------------------


def test_attach_returns_a_compiled_graph_of_the_graphs_own_kind() -> None:
    app = supervisor().attach(one_node(lambda state: {}), name="one")
    assert isinstance(app, CompiledStateGraph)
    assert isinstance(app, Pregel)
    assert isinstance(app, SupervisedGraph)
    # named as the graph's own class, so serialized graphs and drawings are unchanged
    assert (type(app).__name__, type(app).__module__) == (
        "CompiledStateGraph",
        "langgraph.graph.state",
    )
    assert app.get_graph().to_json() == one_node(lambda state: {}).get_graph().to_json()

    @entrypoint()
    def functional(n: int) -> int:
        return n

    app = supervisor().attach(functional, name="functional")
    assert isinstance(app, Pregel)
    assert not isinstance(app, CompiledStateGraph)
    assert app.invoke(3) == 3


def test_attach_refuses_a_graph_that_is_not_compiled() -> None:
    builder = StateGraph(Counter)
    builder.add_node("work", lambda state: {})
    builder.add_edge(START, "work")
    with pytest.raises(TypeError, match=r"got StateGraph \(call \.compile\(\) first\)"):
        supervisor().attach(builder, name="raw")


def test_the_original_graph_stays_unsupervised() -> None:
    bodies = Bodies()
    graph = looping(bodies)
    supervisor().attach(graph, name="loop")
    with pytest.raises(GraphRecursionError):
        graph.invoke({"count": 0}, {"recursion_limit": 20})
    assert bodies.ran == 20


# -- every way of running it is supervised -----------------------------------------------------


async def _drain(chunks: Any) -> None:
    async for _ in chunks:
        pass


async def _astream_events_v3(app: Any, graph_input: Any) -> None:
    await _drain(await app.astream_events(graph_input, version="v3"))


ENTRIES: dict[str, Callable[[Any, Any], Any]] = {
    "invoke": lambda app, x: app.invoke(x),
    "stream": lambda app, x: list(app.stream(x)),
    "stream updates v2": lambda app, x: list(app.stream(x, stream_mode="updates", version="v2")),
    "batch": lambda app, x: app.batch([x]),
    "transform": lambda app, x: list(app.transform(iter([x]))),
    "stream_events v3": lambda app, x: list(app.stream_events(x, version="v3")),
    "ainvoke": lambda app, x: asyncio.run(app.ainvoke(x)),
    "astream": lambda app, x: asyncio.run(_drain(app.astream(x))),
    "abatch": lambda app, x: asyncio.run(app.abatch([x])),
    "astream_events v1": lambda app, x: asyncio.run(_drain(app.astream_events(x, version="v1"))),
    "astream_events v2": lambda app, x: asyncio.run(_drain(app.astream_events(x, version="v2"))),
    "astream_events v3": lambda app, x: asyncio.run(_astream_events_v3(app, x)),
    "astream_log": lambda app, x: asyncio.run(_drain(app.astream_log(x))),
    "atransform": lambda app, x: asyncio.run(_drain(app.atransform(_one(x)))),
}


async def _one(item: Any) -> Any:
    yield item


@pytest.mark.filterwarnings(
    "ignore:The v3 streaming protocol", "ignore:astream_events version='v1'", "ignore:astream_log"
)
@pytest.mark.parametrize("entry", list(ENTRIES))
def test_every_entry_point_is_supervised(entry: str) -> None:
    bodies = Bodies()
    app = supervisor().attach(looping(bodies, is_async=entry.startswith("a")), name="loop")
    with capture_events() as events, pytest.raises(RunCancelled) as raised:
        ENTRIES[entry](app, {"count": 0})
    assert (raised.value.policy, raised.value.kind, raised.value.step) == ("steps", "step_count", 6)
    assert bodies.ran == 5
    assert len(started(events)) == 1


DERIVED: dict[str, Callable[[Any], Any]] = {
    "with_config": lambda app: app.with_config(tags=["prod"]),
    "with_config, with_config": lambda app: app.with_config(tags=["a"]).with_config(tags=["b"]),
    "copy": lambda app: app.copy(),
    "copy(update=...), as the Agent Server does": lambda app: app.copy(
        update={"checkpointer": InMemorySaver()}
    ),
    "with_retry": lambda app: app.with_retry(stop_after_attempt=1),
    "a | sequence": lambda app: RunnableLambda(lambda x: x) | app,
    "bind": lambda app: app.bind(),
}


@pytest.mark.parametrize("derive", list(DERIVED))
def test_what_is_derived_from_a_supervised_graph_stays_supervised(derive: str) -> None:
    bodies = Bodies()
    app = DERIVED[derive](supervisor().attach(looping(bodies), name="loop"))
    config = {"configurable": {"thread_id": "derived"}}
    with pytest.raises(RunCancelled) as raised:
        app.invoke({"count": 0}, config)
    assert raised.value.kind == "step_count"
    assert bodies.ran == 5


def test_with_config_tags_and_metadata_select_policies() -> None:
    text = """\
    - {name: prod-only, match: {tags: [prod], metadata: {tenant: acme}}, step_count: {max_steps: 3}}
    - {name: everyone, step_count: {max_steps: 8}}
    """
    app = supervisor(text).attach(looping(Bodies()), name="loop")
    with pytest.raises(RunCancelled) as raised:
        app.with_config(tags=["prod"], metadata={"tenant": "acme"}).invoke({"count": 0})
    assert raised.value.policy == "prod-only"
    with pytest.raises(RunCancelled) as raised:
        app.with_config(tags=["prod"]).invoke({"count": 0})
    assert raised.value.policy == "everyone"


def test_attributes_set_after_attach_reach_the_graph_that_runs() -> None:
    async def slow(state: Counter) -> dict[str, int]:
        await asyncio.sleep(1)
        return {}

    app = supervisor().attach(one_node(slow), name="slow")
    app.step_timeout = 0.01
    with pytest.raises(TimeoutError):
        asyncio.run(app.ainvoke({"count": 0}))


# -- composition: a supervised graph inside another ------------------------------------------


def _parent(child: Any, *, called: bool) -> Any:
    def call_child(state: Counter) -> Any:
        return child.invoke(state)

    builder = StateGraph(Counter)
    builder.add_node("child", call_child if called else child)
    builder.add_edge(START, "child")
    return builder.compile(checkpointer=InMemorySaver())


@pytest.mark.parametrize("called", [False, True], ids=["added as a node", "called from a node"])
def test_a_supervised_subgraph_joins_its_parents_run(called: bool) -> None:
    bodies = Bodies()
    watchdog = supervisor("- {name: steps, step_count: {max_steps: 6}}")
    child = watchdog.attach(inner_loop(bodies, steps=100), name="child")
    parent = watchdog.attach(_parent(child, called=called), name="parent")
    with capture_events() as events, pytest.raises(RunCancelled) as raised:
        parent.invoke({"count": 0}, {"configurable": {"thread_id": "nested"}})
    # The parent's one step and five of the child's: counted on one run.
    assert (raised.value.graph, raised.value.step) == ("parent", 7)
    assert bodies.ran == 5
    assert [e["graph"] for e in started(events)] == ["parent"]


@pytest.mark.parametrize("called", [False, True], ids=["added as a node", "called from a node"])
def test_a_supervised_graph_inside_a_plain_one_is_its_own_run(called: bool) -> None:
    bodies = Bodies()
    child = supervisor().attach(inner_loop(bodies, steps=100), name="child")
    with capture_events() as events, pytest.raises(RunCancelled) as raised:
        _parent(child, called=called).invoke({"count": 0}, {"configurable": {"thread_id": "p"}})
    assert (raised.value.graph, bodies.ran) == ("child", 5)
    assert [e["graph"] for e in started(events)] == ["child"]


def test_a_supervised_graph_called_from_a_node_is_found_as_its_subgraph() -> None:
    child = supervisor("- {name: steps, step_count: {max_steps: 50}}").attach(
        inner_loop(Bodies(), steps=3), name="child"
    )
    parent = supervisor().attach(_parent(child, called=True), name="parent")
    config = {"configurable": {"thread_id": "found"}}
    parent.invoke({"count": 0}, config)
    assert [name for name, _ in parent.get_subgraphs()] == ["child"]
    assert parent.get_state(config, subgraphs=True).values == {"count": 3}


def test_a_stream_consumer_calling_another_supervised_graph_starts_a_second_run() -> None:
    watchdog = supervisor("- {name: steps, step_count: {max_steps: 50}}")
    first = watchdog.attach(inner_loop(Bodies(), steps=3), name="first")
    second = watchdog.attach(inner_loop(Bodies(), steps=2), name="second")
    with capture_events() as events:
        for _ in first.stream({"count": 0}):
            second.invoke({"count": 0})
    assert current_run() is None
    assert sorted(e["graph"] for e in started(events)) == ["first", "second", "second", "second"]


def test_an_ainvoke_leaves_the_callers_context_as_it_was_however_it_ends() -> None:
    watchdog = supervisor("- {name: steps, step_count: {max_steps: 3}}")
    short = watchdog.attach(inner_loop(Bodies(), steps=2), name="short")
    endless = watchdog.attach(looping(Bodies(), is_async=True), name="endless")
    seen = []

    async def calls() -> None:
        assert await short.ainvoke({"count": 0}) == {"count": 2}
        seen.append(current_run())
        with pytest.raises(RunCancelled):
            await endless.ainvoke({"count": 0})
        seen.append(current_run())
        # a consumer's code, between chunks
        seen.extend([current_run() async for _ in short.astream({"count": 0})])

    asyncio.run(calls())
    assert seen == [None, None, None, None]


# -- the run never shows --------------------------------------------------------------------


def test_checkpoint_and_debug_chunks_carry_nothing_of_the_watchdog() -> None:
    app = supervisor().attach(one_node(lambda state: {"count": 1}, checkpointer=True), name="quiet")
    config = {"configurable": {"thread_id": "chunks"}}
    chunks = list(app.stream({"count": 0}, config, stream_mode=["checkpoints", "debug"]))
    assert chunks
    serde = JsonPlusSerializer()
    for _, chunk in chunks:
        assert copy.deepcopy(chunk) == chunk
        assert pickle.loads(pickle.dumps(chunk)) == chunk
        serde.dumps_typed(chunk)
        assert "watchdog" not in repr(chunk)
    snapshot = app.get_state(config)
    assert "watchdog" not in repr(snapshot.config) + repr(snapshot.metadata)


def test_a_checkpointed_graph_without_thread_id_raises_langgraphs_own_error() -> None:
    app = supervisor().attach(one_node(lambda state: {}, checkpointer=True), name="t")
    with pytest.raises(ValueError, match="Checkpointer requires one or more"):
        app.invoke({"count": 0})


def test_langgraphs_own_errors_come_out_unchanged() -> None:
    app = supervisor("- {name: steps, step_count: {max_steps: 1000}}").attach(
        looping(Bodies()), name="loop"
    )
    with pytest.raises(GraphRecursionError):
        app.invoke({"count": 0}, {"recursion_limit": 10})


class PydanticState(BaseModel):
    count: int


@dataclasses.dataclass
class DataclassState:
    count: int


@pytest.mark.parametrize("schema", [PydanticState, DataclassState])
def test_v2_output_of_a_typed_state_keeps_its_type(schema: type[Any]) -> None:
    builder = StateGraph(schema)
    builder.add_node("work", lambda state: {"count": state.count + 1})
    builder.add_edge(START, "work")
    app = supervisor().attach(builder.compile(), name="typed")
    assert app.invoke({"count": 1}, version="v2").value == schema(count=2)
    assert app.copy().invoke({"count": 1}, version="v2").value == schema(count=2)


# -- the functional API: @task calls are node runs --------------------------------------------


@task
def add_one(n: int) -> int:
    return n + 1


@task
def same_again(n: int) -> int:
    return n


@task
async def hang_forever(n: int) -> int:
    await asyncio.Event().wait()
    return n


@entrypoint()
def counting(n: int) -> int:
    for _ in range(50):
        n = add_one(n).result()
    return n


@entrypoint()
def repeating(n: int) -> int:
    for _ in range(50):
        same_again(0).result()
    return n


@entrypoint()
async def hanging_task(n: int) -> int:
    return await hang_forever(n)


def test_task_calls_count_as_node_runs() -> None:
    app = supervisor("- {name: runs, step_count: {max_node_runs: 3}}").attach(counting, name="f")
    with pytest.raises(RunCancelled) as raised:
        app.invoke(0)
    # the entrypoint and two task calls ran; the third call is the fourth node run
    assert (raised.value.kind, raised.value.observed) == ("step_count", 4)


def test_task_calls_with_the_same_input_are_a_loop() -> None:
    app = supervisor("- {name: loops, loop: {max_repeats: 3}}").attach(repeating, name="f")
    with pytest.raises(RunCancelled) as raised:
        app.invoke(0)
    assert (raised.value.kind, raised.value.observed) == ("loop", 4)
    assert "'same_again'" in raised.value.reason


def test_a_hung_task_call_is_stopped_by_node_seconds() -> None:
    app = supervisor("- {name: slow, wall_time: {node_seconds: 0.05}}").attach(
        hanging_task, name="f"
    )
    with pytest.raises(RunCancelled) as raised:
        asyncio.run(app.ainvoke(0))
    assert (raised.value.kind, raised.value.phase) == ("wall_time", "hard")


# -- a finished run leaves nothing behind ---------------------------------------------------


def _watched(runs: list[weakref.ref[Run]]) -> Callable[[Counter], dict[str, int]]:
    def body(state: Counter) -> dict[str, int]:
        run = current_run()
        assert run is not None
        runs.append(weakref.ref(run))
        return {"count": state["count"] + 1}

    return body


TIMERS = """\
- {name: wall, wall_time: {max_seconds: 300, idle_seconds: 60, node_seconds: 120}}
- {name: steps, step_count: {max_steps: 3}}
"""


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("ends", ["completed", "cancelled"])
def test_a_finished_run_is_released_at_once(is_async: bool, ends: str) -> None:
    """Its deadlines (five minutes off) hold it no longer. A completed run goes with the
    last reference to it; a cancel raised inside a node goes with LangGraph's own cycle of
    that error's traceback and its loop, at the next collection, as any node's error does."""
    runs: list[weakref.ref[Run]] = []
    body = _watched(runs)

    async def async_body(state: Counter) -> dict[str, int]:
        return body(state)

    app = supervisor(TIMERS).attach(
        one_node(async_body if is_async else body, loop=ends == "cancelled"), name="r"
    )
    gc.collect()
    gc.disable()
    try:
        with contextlib.suppress(RunCancelled):
            asyncio.run(app.ainvoke({"count": 0})) if is_async else app.invoke({"count": 0})
        assert runs
        if ends == "cancelled":
            gc.collect()
        assert [ref() for ref in runs] == [None] * len(runs)
    finally:
        gc.enable()


def test_timers_of_finished_runs_do_not_pile_up() -> None:
    watchdog = supervisor(TIMERS)
    app = watchdog.attach(one_node(lambda state: {}), name="r")
    for _ in range(1_000):
        app.invoke({"count": 0})
    assert len(watchdog.scheduler._heap) < 200


def test_a_node_with_a_retry_policy_is_not_retried_when_the_run_is_stopped() -> None:
    bodies = Bodies()
    judged: list[BaseException] = []

    def body(state: Counter) -> dict[str, int]:
        bodies.ran += 1
        return {"count": state["count"] + 1}

    def retry_on(error: Exception) -> bool:
        judged.append(error)
        judge: Any = RetryPolicy().retry_on  # LangGraph's default judgement
        return bool(judge(error))

    builder = StateGraph(Counter)
    policy = RetryPolicy(max_attempts=3, initial_interval=0.001, retry_on=retry_on)
    builder.add_node("work", body, retry_policy=policy)
    builder.add_edge(START, "work")
    builder.add_conditional_edges("work", lambda state: "work")
    app = supervisor().attach(builder.compile(), name="retrying")
    with pytest.raises(RunCancelled):
        app.invoke({"count": 0})
    assert bodies.ran == 5
    assert [type(error).__name__ for error in judged] == ["Stop"]  # judged once, not retried
