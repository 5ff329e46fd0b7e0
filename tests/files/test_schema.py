"""The version 1 schema is derived from the policy model: its keys, their types, the defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import pytest

from tests.graphs import policies
from watchdog import (
    Loop,
    Policy,
    PolicyError,
    Price,
    Rate,
    StepCount,
    TokenBudget,
    WallTime,
    load_policy_text,
)
from watchdog._core.policies import KINDS, Kind
from watchdog._files.schema import KIND_FIELDS, _kind_fields
from watchdog.testing import make_run_state

# A value of each field's type, to set every key of every kind from a file.
VALUES: dict[str, tuple[str, object]] = {
    "max_seconds": ("1.5", 1.5),
    "idle_seconds": ("2.5", 2.5),
    "node_seconds": ("3.5", 3.5),
    "max_steps": ("4", 4),
    "max_node_runs": ("5", 5),
    "scope": ("thread", "thread"),
    "window": ("60", 60),
    "max_repeats": ("6", 6),
    "max_tool_repeats": ("7", 7),
    "max_cycle_repeats": ("8", 8),
    "max_total_tokens": ("9", 9),
    "max_input_tokens": ("10", 10),
    "max_output_tokens": ("11", 11),
    "max_cost_usd": ("1.25", 1.25),
    "prices": ("{default: {input_per_mtok: 1, output_per_mtok: 2}}", {"default": Price(1, 2)}),
    "max_events": ("12", 12),
    "per_seconds": ("13.5", 13.5),
    "of": ("tool_calls", "tool_calls"),
}


# Keys that cannot stand together are written in policies of their own: a shared scope keeps
# fewer limits, and its settings are for it alone.
SHARED_BUDGET: dict[str, tuple[str, object]] = {
    "max_total_tokens": ("9", 9),
    "scope": ("metadata.tenant", "metadata.tenant"),
    "window": ("1d", "1d"),
    "time_zone": ("Europe/Paris", "Europe/Paris"),
    "estimate_tokens": ("100", 100),
    "fail_closed": ("true", True),
    "local_share": ("0.25", 0.25),
}
SHARED_RATE: dict[str, tuple[str, object]] = {
    "max_events": ("12", 12),
    "per_seconds": ("13.5", 13.5),
    "of": ("tokens", "tokens"),
    "scope": ("global", "global"),
    "estimate_tokens": ("100", 100),
    "fail_closed": ("true", True),
    "local_share": ("0.25", 0.25),
}
APART: dict[str, tuple[tuple[str, ...], dict[str, tuple[str, object]]]] = {
    "token_budget": (
        ("window", "time_zone", "estimate_tokens", "fail_closed", "local_share"),
        SHARED_BUDGET,
    ),
    "rate": (("scope", "estimate_tokens", "fail_closed", "local_share"), SHARED_RATE),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_field_of_a_kind_is_a_key_of_its_file_and_read_as_its_type(kind: str) -> None:
    cls = KINDS[kind]
    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    assert list(KIND_FIELDS[kind]) == fields
    groups = APART.get(kind)
    writings = (
        [({k: VALUES[k] for k in fields if k not in groups[0]}), groups[1]]
        if groups
        else [{k: VALUES[k] for k in fields}]
    )
    assert set().union(*writings) == set(fields)
    for values in writings:
        written = ", ".join(f"{key}: {text}" for key, (text, _) in values.items())
        (policy,) = policies(f"- {{name: p, {kind}: {{{written}}}}}").policies
        assert policy.kind == cls(**{key: value for key, (_, value) in values.items()})


@pytest.mark.parametrize(
    ("written", "kind"),
    [
        ("wall_time: {max_seconds: 10}", WallTime(max_seconds=10)),
        ("step_count: {max_steps: 10}", StepCount(max_steps=10)),
        ("loop: {max_repeats: 3}", Loop(max_repeats=3)),
        ("token_budget: {max_total_tokens: 100}", TokenBudget(max_total_tokens=100)),
        ("rate: {max_events: 5, per_seconds: 1, of: steps}", Rate(5, 1.0, "steps")),
    ],
)
def test_what_a_file_leaves_out_is_the_models_default(written: str, kind: Kind) -> None:
    text = f"version: 1\npolicies:\n- name: p\n  {written}\n"
    (policy,) = load_policy_text(text, "test.yaml").policies
    assert policy == Policy(name="p", kind=kind, file="test.yaml", line=3)


def test_a_null_number_is_left_to_its_default() -> None:
    (policy,) = policies("- {name: p, loop: {window: null, max_repeats: 3}}").policies
    assert policy.kind == Loop(max_repeats=3)


def test_a_field_added_to_a_kind_is_read_by_its_type() -> None:
    @dataclass(frozen=True, slots=True)
    class Widgets(Kind):
        max_widgets: int | None = None
        max_weight: float | None = None
        colour: Literal["red", "blue"] = "red"
        name = "widgets"

    fields = _kind_fields(Widgets)
    assert {key: (f.limit, f.numeric) for key, f in fields.items()} == {
        "max_widgets": (True, True),
        "max_weight": (True, True),
        "colour": (False, False),
    }


def test_a_field_of_a_type_the_schema_cannot_read_is_refused_at_import() -> None:
    @dataclass(frozen=True, slots=True)
    class Odd(Kind):
        shape: complex = 0j

    with pytest.raises(TypeError, match="no reader for a field of type <class 'complex'>"):
        _kind_fields(Odd)


def test_a_kind_that_sets_no_limit_names_the_limits_from_the_model() -> None:
    with pytest.raises(PolicyError) as raised:
        policies("- {name: p, token_budget: {scope: thread}}")
    limits = [k for k, f in KIND_FIELDS["token_budget"].items() if f.limit]
    assert limits == ["max_total_tokens", "max_input_tokens", "max_output_tokens", "max_cost_usd"]
    assert f"token_budget sets no limit; expected at least one of {', '.join(limits)}" in str(
        raised.value
    )


def test_a_kind_read_from_a_file_checks_as_the_model_does() -> None:
    (policy,) = policies("- {name: p, step_count: {max_steps: 3}}").policies
    assert policy.kind.check(make_run_state(steps=3)) is None
    assert policy.kind.check(make_run_state(steps=4)) is not None
