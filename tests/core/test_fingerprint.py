"""Fingerprints of node inputs: equal inputs print alike, different ones never do."""

from __future__ import annotations

import copy
import enum
import math
from collections.abc import Callable
from typing import Any, TypedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langgraph.graph import END, START, StateGraph
from prometheus_client import CollectorRegistry

from tests.graphs import policies
from watchdog import RunCancelled, Supervisor
from watchdog._core.fingerprint import fingerprint


class Color(enum.StrEnum):
    RED = "red"


def history(*texts: str) -> list[HumanMessage]:
    return [HumanMessage(text, id=f"m{i}") for i, text in enumerate(texts)]


def work_list(size: int) -> list[dict[str, Any]]:
    return [{"task": i, "title": f"task {i}", "done": False, "tags": ["a"]} for i in range(size)]


def state() -> dict[str, Any]:
    call = {"name": "search", "args": {"q": "a", "page": 1}, "id": "c1"}
    return {
        "messages": [
            *history("hi", "there"),
            AIMessage("", id="a1", tool_calls=[call]),
            ToolMessage("found", id="t1", tool_call_id="c1"),
        ],
        "tasks": work_list(20),
        "count": 3,
        "score": 0.5,
        "color": Color.RED,
        "buffers": [bytearray(b"x"), [bytearray(b"y") for _ in range(10)]],
    }


def test_equal_inputs_give_equal_prints() -> None:
    assert fingerprint(state()) == fingerprint(state())
    assert fingerprint(state()) == fingerprint(copy.deepcopy(state()))
    long = {"tasks": work_list(1000), "messages": history(*(f"turn {i}" for i in range(500)))}
    assert fingerprint(long) == fingerprint(copy.deepcopy(long))


def change_task(index: int) -> Callable[[dict[str, Any]], None]:
    def change(value: dict[str, Any]) -> None:
        value["tasks"][index]["done"] = True

    return change


def set_key(key: str, new: Any) -> Callable[[dict[str, Any]], None]:
    def change(value: dict[str, Any]) -> None:
        value[key] = new

    return change


def edit_message(index: int, **fields: Any) -> Callable[[dict[str, Any]], None]:
    def change(value: dict[str, Any]) -> None:
        for name, new in fields.items():
            setattr(value["messages"][index], name, new)

    return change


def edit_call_arguments(value: dict[str, Any]) -> None:
    value["messages"][2].tool_calls[0]["args"]["q"] = "b"  # in place, deep inside


CHANGES = {f"task {i} of 20 marked done": change_task(i) for i in (0, 1, 5, 9, 10, 11, 18, 19)} | {
    "a task added": lambda value: value["tasks"].append({"task": 20}),
    "two tasks swapped": lambda value: value["tasks"].reverse(),
    "a tag added in place": lambda value: value["tasks"][7]["tags"].append("b"),
    "a bytearray changed in place": lambda value: value["buffers"][0].append(1),
    "one of ten bytearrays changed in place": lambda value: value["buffers"][1][9].append(1),
    "count 3 to -1": set_key("count", -1),
    "score 0.5 to -1.0": set_key("score", -1.0),
    "score NaN": set_key("score", math.nan),
    "a huge count": set_key("count", 3 + 2**61 - 1),
    "count as a string": set_key("count", "3"),
    "count as bytes": set_key("count", b"3"),
    "a str enum to its value": set_key("color", "red"),
    "a message's text, in place": edit_message(0, content="hello"),
    "a message's id, in place": edit_message(1, id="other"),
    "a message's name, in place": edit_message(1, name="bob"),
    "a tool call's arguments, in place": edit_call_arguments,
    "a tool message's call id": edit_message(3, tool_call_id="c2"),
    "a message replaced by another kind": lambda value: value["messages"].__setitem__(
        0, AIMessage("hi", id="m0")
    ),
    "a dict for the list of its pairs": lambda value: value.update(
        count={"a": 1}, score=[("a", 1)]
    ),
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_any_change_gives_another_print_even_made_in_place(
    change: Callable[[dict[str, Any]], None],
) -> None:
    value = state()
    before = fingerprint(value)
    assert fingerprint(value) == before  # messages now print from their copies
    change(value)
    assert fingerprint(value) != before


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (-1, -2),
        (-1.0, -2.0),
        (0, 2**61 - 1),
        (1, 2**61),
        ("", False),
        ("", 0),
        ("", 0.0),
        (1.0000000000000002, 513),
        (1.0000000000000002, 513.0),
        (0.5, 2**60),
        ("abc", b"abc"),
        (b"x", bytearray(b"x")),
    ],
)
def test_values_that_python_hashes_alike_print_apart(first: Any, second: Any) -> None:
    assert fingerprint({"x": first}) != fingerprint({"x": second})
    assert fingerprint([first, 5]) != fingerprint([second, 5])
    assert fingerprint([first] * 10) != fingerprint([second] * 10)
    if not isinstance(second, bytearray):  # a bytearray cannot be a key
        assert fingerprint({first: 1}) != fingerprint({second: 1})


def test_long_lists_are_read_whole() -> None:
    tasks = work_list(1000)
    before = fingerprint({"tasks": tasks})
    tasks[500]["done"] = True
    assert fingerprint({"tasks": tasks}) != before
    messages = history(*(f"turn {i}" for i in range(500)))
    before = fingerprint({"messages": messages})
    messages[250].content = "edited"
    assert fingerprint({"messages": messages}) != before


def test_what_the_provider_reports_about_a_call_is_not_part_of_the_input() -> None:
    first = AIMessage("x", id="1", response_metadata={"request_id": "r-1"})
    again = AIMessage("x", id="1", response_metadata={"request_id": "r-2"})
    assert fingerprint([first]) == fingerprint([again])


class Opaque:
    pass


def test_what_cannot_be_read_never_looks_the_same_even_to_itself() -> None:
    thing = Opaque()
    assert fingerprint({"thing": thing}) != fingerprint({"thing": thing})
    cycle: list[Any] = []
    cycle.append(cycle)
    assert fingerprint(cycle) != fingerprint(cycle)
    deep: list[Any] = []
    for _ in range(5000):
        deep = [deep]
    assert fingerprint(deep) != fingerprint(deep)


json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=5)
    | st.binary(max_size=3),
    lambda inner: st.lists(inner, max_size=12) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=30,
)


@given(json_like, json_like)
@settings(max_examples=400, deadline=None)
def test_different_plain_values_never_share_a_print(first: Any, second: Any) -> None:
    assert fingerprint(first) == fingerprint(copy.deepcopy(first))
    if first != second:
        assert fingerprint(first) != fingerprint(second)


@given(st.one_of(st.floats(allow_nan=False), st.integers()), st.floats(allow_nan=False))
@settings(max_examples=400, deadline=None)
def test_different_numbers_never_share_a_print(first: float, second: float) -> None:
    if first != second:
        assert fingerprint([first, "x"]) != fingerprint([second, "x"])
        assert fingerprint({"n": first}) != fingerprint({"n": second})


# -- through a real supervised graph ---------------------------------------------------------


class Work(TypedDict):
    tasks: list[dict[str, Any]]


def work_graph(*, in_place: bool, progress: bool = True) -> Any:
    """``work`` marks the first open task done each step, until none is left; without
    ``progress`` it changes nothing, and loops."""

    def work(state: Work) -> dict[str, Any]:
        tasks = state["tasks"]
        index = next(i for i, task in enumerate(tasks) if not task["done"])
        if not progress:
            return {}
        if in_place:
            tasks[index]["done"] = True
            return {"tasks": tasks}
        return {"tasks": [{**t, "done": True} if i == index else t for i, t in enumerate(tasks)]}

    builder = StateGraph(Work)
    builder.add_node("work", work)
    builder.add_edge(START, "work")
    builder.add_conditional_edges(
        "work", lambda state: END if all(t["done"] for t in state["tasks"]) else "work"
    )
    return builder.compile()


LOOPS = "- {name: loops, loop: {max_repeats: 3}}"


@pytest.mark.parametrize("in_place", [False, True], ids=["new list", "in place"])
def test_a_node_that_marks_one_task_of_twenty_done_per_step_is_not_a_loop(
    in_place: bool,
) -> None:
    supervisor = Supervisor(policies(LOOPS), registry=CollectorRegistry())
    app = supervisor.attach(work_graph(in_place=in_place), name="worker")
    final = app.invoke({"tasks": work_list(20)}, {"recursion_limit": 50})
    assert all(task["done"] for task in final["tasks"])
    supervisor.close()


def test_a_node_that_gets_the_same_long_input_again_is_still_a_loop() -> None:
    supervisor = Supervisor(policies(LOOPS), registry=CollectorRegistry())
    app = supervisor.attach(work_graph(in_place=False, progress=False), name="worker")
    with pytest.raises(RunCancelled) as cancelled:
        app.invoke({"tasks": work_list(1000)}, {"recursion_limit": 50})
    assert (cancelled.value.policy, cancelled.value.kind, cancelled.value.step) == (
        "loops",
        "loop",
        4,
    )
    supervisor.close()
