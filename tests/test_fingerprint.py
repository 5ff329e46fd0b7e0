from __future__ import annotations

import enum

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from watchdog._fingerprint import fingerprint


class Color(enum.StrEnum):
    RED = "red"


def history(*texts: str) -> list[HumanMessage]:
    return [HumanMessage(text, id=f"m{i}") for i, text in enumerate(texts)]


def test_equal_state_gives_equal_prints_and_a_change_a_different_one() -> None:
    state = {"messages": history("hi", "there"), "count": 3, "color": Color.RED}
    again = {"messages": history("hi", "there"), "count": 3, "color": Color.RED}
    assert fingerprint(state) == fingerprint(again)
    assert hash(fingerprint(state)) == hash(fingerprint(again))
    assert fingerprint(state) != fingerprint({**again, "count": 4})
    assert fingerprint(state) != fingerprint({**again, "messages": history("hi", "here")})


def test_messages_are_told_apart_by_kind_id_content_and_tool_calls() -> None:
    call = {"name": "search", "args": {"q": "a"}, "id": "c1"}
    other_call = {"name": "search", "args": {"q": "b"}, "id": "c1"}
    prints = {
        fingerprint(HumanMessage("x", id="1")),
        fingerprint(HumanMessage("x", id="2")),
        fingerprint(HumanMessage("y", id="1")),
        fingerprint(AIMessage("x", id="1")),
        fingerprint(AIMessage("", id="1", tool_calls=[call])),
        fingerprint(AIMessage("", id="1", tool_calls=[other_call])),
        fingerprint(ToolMessage("x", id="1", tool_call_id="c1")),
    }
    assert len(prints) == 7


def test_a_long_history_is_printed_by_its_length_and_ends() -> None:
    texts = [f"turn {i}" for i in range(40)]
    assert fingerprint(history(*texts)) == fingerprint(history(*texts))
    assert fingerprint(history(*texts)) != fingerprint(history(*texts, "one more"))


def test_what_cannot_be_compared_is_printed_by_identity() -> None:
    thing = object()
    assert fingerprint({"thing": thing}) == fingerprint({"thing": thing})
    assert fingerprint({"thing": thing}) != fingerprint({"thing": object()})
    buffer = bytearray(b"x")  # unhashable: equal contents are not taken to be the same
    assert fingerprint([buffer]) == fingerprint([buffer])
    assert fingerprint([buffer]) != fingerprint([bytearray(b"x")])
