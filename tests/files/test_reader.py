"""The generic reader of YAML nodes: typed values, located problems, reading past the first."""

from __future__ import annotations

import pytest
from yaml.nodes import Node

from watchdog import PolicyProblem
from watchdog._files.reader import Invalid, NodeReader


def read(text: str) -> tuple[NodeReader, Node]:
    reader = NodeReader("t.yaml", text)
    node = reader.compose()
    assert node is not None, reader.problems
    return reader, node


def messages(reader: NodeReader) -> list[str]:
    return [str(problem) for problem in reader.problems]


def test_a_mapping_gives_its_entries_by_key() -> None:
    reader, node = read("a: 1\nb: two\n")
    fields = reader.mapping(node, "top", ("a", "b"), "a mapping")
    assert {key: reader.scalar(entry.value, key) for key, entry in fields.items()} == {
        "a": 1,
        "b": "two",
    }
    assert reader.problems == []


def test_an_unknown_key_is_named_with_the_closest_known_one() -> None:
    reader, node = read("colour: red\n")
    assert reader.mapping(node, "paint", ("color", "size"), "a mapping") == {}
    assert messages(reader) == [
        (
            "t.yaml:1:1: paint.colour: unknown key 'colour' (did you mean color?); "
            "expected one of color, size"
        )
    ]


def test_a_duplicate_key_points_at_the_first() -> None:
    reader, node = read("a: 1\na: 2\n")
    reader.mapping(node, "", ("a",), "a mapping")
    assert messages(reader) == [
        "t.yaml:2:1: a: duplicate key 'a'; it is already set at line 1, column 1"
    ]


def test_merged_entries_come_after_a_mappings_own() -> None:
    reader, node = read("base: &base {a: 1, b: 2}\nuse: {<<: *base, b: 3}\n")
    top = reader.mapping(node, "", ("base", "use"), "a mapping")
    use = reader.mapping(top["use"].value, "use", ("a", "b"), "a mapping")
    assert {key: reader.scalar(entry.value, key) for key, entry in use.items()} == {
        "b": 3,
        "a": 1,
    }


@pytest.mark.parametrize(
    ("text", "read_value", "message"),
    [
        ("-1", NodeReader.number, "expected a number greater than 0, got -1"),
        (
            "1e-12",
            NodeReader.number,
            "YAML 1.1 reads a number without a dot as text: write 1.0e-12",
        ),
        ("1.5", NodeReader.whole, "expected a whole number greater than 0, got 1.5"),
        ("yes please", NodeReader.flag, "expected true or false, got the string 'yes please'"),
        ("[a, b]", NodeReader.text, "expected a single value, got a list"),
    ],
)
def test_a_value_of_the_wrong_type_names_the_path_and_what_it_got(
    text: str, read_value: object, message: str
) -> None:
    reader, node = read(f"x: {text}\n")
    (entry,) = reader.mapping(node, "", ("x",), "a mapping").values()
    with pytest.raises(Invalid):
        read_value(reader, entry.value, "x")  # type: ignore[operator]
    (problem,) = reader.problems
    assert (problem.line, problem.column, problem.path) == (1, 4, "x")
    assert message in problem.message


def test_a_choice_suggests_the_closest() -> None:
    reader, node = read("enforcee\n")
    with pytest.raises(Invalid):
        reader.choice(node, "mode", ("enforce", "audit"))
    assert messages(reader) == [
        (
            "t.yaml:1:1: mode: expected one of enforce, audit, got the string 'enforcee' "
            "(did you mean enforce?)"
        )
    ]


def test_field_records_a_problem_and_reading_goes_on() -> None:
    reader, node = read("a: -1\nb: x\nc: 3\n")
    fields = reader.mapping(node, "", ("a", "b", "c"), "a mapping")
    values = {key: reader.field(reader.whole, entry.value, key) for key, entry in fields.items()}
    assert values == {"a": None, "b": None, "c": 3}
    assert [(p.line, p.path) for p in reader.problems] == [(1, "a"), (2, "b")]


def test_a_yaml_error_is_a_located_problem_with_its_line() -> None:
    reader = NodeReader("t.yaml", "a: 1\n\tb: 2\n")
    assert reader.compose() is None
    assert reader.problems == [
        PolicyProblem(
            "t.yaml",
            2,
            1,
            "",
            "YAML: a tab character: YAML indents with spaces only",
            "\tb: 2",
        )
    ]


def test_a_table_reads_free_keys_and_refuses_a_tag_on_a_mapping() -> None:
    reader, node = read("tagged: !!python/dict {a: 1}\nplain: {x: 1, y: 2}\n")
    top = reader.mapping(node, "", ("tagged", "plain"), "a mapping")
    assert reader.table(top["plain"].value, "plain", "names to counts", "a name", reader.whole) == {
        "x": 1,
        "y": 2,
    }
    with pytest.raises(Invalid):
        reader.table(top["tagged"].value, "tagged", "names to counts", "a name", reader.whole)
    assert messages(reader) == [
        "t.yaml:1:9: tagged: unsupported YAML tag 'tag:yaml.org,2002:python/dict'"
    ]
