"""Policy files v1: what loads, and how every kind of mistake is located."""

from __future__ import annotations

import textwrap
import unicodedata
from pathlib import Path

import pytest

from watchdog import (
    Loop,
    Match,
    Policy,
    PolicyError,
    PolicyProblem,
    PolicySet,
    Price,
    Rate,
    StepCount,
    TokenBudget,
    WallTime,
    load_policies,
    load_policy_text,
)
from watchdog._files.loading import read_policy_files

FILE = "policy.yaml"


def dedent(text: str) -> str:
    return textwrap.dedent(text)


def load_error(text: str, file: str = FILE) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, file)
    return info.value


def names(policies: tuple[Policy, ...] | PolicySet) -> list[str]:
    if isinstance(policies, PolicySet):
        policies = policies.policies
    return [p.name for p in policies]


# -- invalid files: where the first problem stands, and what it says ---------------------

INVALID = [
    # YAML syntax
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: a
                wall_time: {max_seconds: 1}
               mode: audit
            """),
        5,
        4,
        "",
        "YAML: while parsing a block collection at line 3, column 3: expected <block end>",
        id="yaml-bad-indentation",
    ),
    pytest.param(
        dedent("""\
            version: 1
            policies: [
              {name: a, wall_time: {max_seconds: 1}}
            """),
        4,
        1,
        "",
        "YAML: while parsing a flow sequence at line 2, column 11: expected ',' or ']'",
        id="yaml-unclosed-bracket",
    ),
    pytest.param(
        "version: 1\npolicies:\n\t- name: a\n",
        3,
        1,
        "",
        "YAML: a tab character: YAML indents with spaces only",
        id="yaml-tab-indentation",
    ),
    pytest.param(
        "version: 1\npolicies: *nothing\n",
        2,
        11,
        "",
        "YAML: found undefined alias 'nothing'",
        id="yaml-undefined-alias",
    ),
    pytest.param(
        "version: 1\npolicies: \x07\n",
        2,
        11,
        "",
        "YAML: unacceptable character #x0007",
        id="yaml-control-character",
    ),
    pytest.param(
        dedent("""\
            version: 1
            policies: []
            ---
            version: 1
            """),
        3,
        1,
        "",
        "YAML: expected a single document in the stream at line 1, column 1: but found another",
        id="yaml-two-documents",
    ),
    # the document
    pytest.param(
        "",
        1,
        1,
        "",
        "the file is empty; expected a mapping with 'version: 1' and 'policies'",
        id="empty-file",
    ),
    pytest.param(
        "# policies go here\n",
        1,
        1,
        "",
        "the file is empty",
        id="only-a-comment",
    ),
    pytest.param(
        dedent("""\
            - version: 1
              policies: []
            """),
        1,
        1,
        "",
        "expected a mapping with 'version' and 'policies', got a list",
        id="top-level-list",
    ),
    pytest.param(
        "just some text\n",
        1,
        1,
        "",
        "got the string 'just some text'",
        id="top-level-scalar",
    ),
    pytest.param(
        dedent("""\
            version: 1
            1: x
            policies: []
            """),
        2,
        1,
        "",
        "expected a string key, got 1",
        id="non-string-key",
    ),
    pytest.param(
        dedent("""\
            version: 1
            version: 1
            policies: []
            """),
        2,
        1,
        "version",
        "duplicate key 'version'; it is already set at line 1, column 1",
        id="duplicate-top-level-key",
    ),
    pytest.param(
        dedent("""\
            policies:
              - name: a
                wall_time: {max_seconds: 1}
            """),
        1,
        1,
        "version",
        "missing required key 'version'; expected version: 1",
        id="missing-version",
    ),
    pytest.param(
        "version: 2\npolicies: []\n",
        1,
        10,
        "version",
        "expected version 1, got 2",
        id="version-2",
    ),
    pytest.param(
        'version: "1"\npolicies: []\n',
        1,
        10,
        "version",
        "expected version 1, got the string '1'",
        id="version-string",
    ),
    pytest.param(
        "version: 1\n",
        1,
        1,
        "policies",
        "missing required key 'policies'; expected a list of policies",
        id="missing-policies",
    ),
    pytest.param(
        dedent("""\
            version: 1
            policies:
              name: a
              wall_time: {max_seconds: 1}
            """),
        3,
        3,
        "policies",
        "expected a list of policies, got a mapping",
        id="policies-not-a-list",
    ),
    pytest.param(
        dedent("""\
            version: 1
            defaults:
              mode: audit
              grace_second: 3
            policies: []
            """),
        4,
        3,
        "defaults.grace_second",
        "unknown key 'grace_second' (did you mean grace_seconds?)",
        id="defaults-unknown-key",
    ),
    # one policy
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - wall-time
            """),
        3,
        5,
        "policies[0]",
        "expected a policy mapping with a name and one kind, got the string 'wall-time'",
        id="policy-not-a-mapping",
    ),
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - wall_time: {max_seconds: 1}
            """),
        3,
        5,
        "policies[0].name",
        "missing required key 'name'",
        id="missing-name",
    ),
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: wall time
                wall_time: {max_seconds: 1}
            """),
        3,
        11,
        "policies[0].name",
        "expected a name of letters, digits and _ . : - (at most 64, it is a metric label), "
        "got 'wall time'",
        id="name-with-spaces",
    ),
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: limits
                wall_time: {max_seconds: 1}
              - name: limits
                step_count: {max_steps: 1}
            """),
        5,
        11,
        "policies[1].name",
        f"policy name 'limits' is already used at {FILE}:3:11; expected a unique name",
        id="duplicate-policy-name",
    ),
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: a
                mode: audit
                mode: enforce
                wall_time: {max_seconds: 1}
            """),
        5,
        5,
        "policies[0].mode",
        "duplicate key 'mode'; it is already set at line 4, column 5",
        id="duplicate-key-in-policy",
    ),
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: a
                wall_time: {max_seconds: 1}
                memory: {max_mb: 512}
            """),
        5,
        5,
        "policies[0].memory",
        "unknown key 'memory'; expected one of name, description, match",
        id="unknown-kind",
    ),
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: a
                wall_tme: {max_seconds: 300}
            """),
        4,
        5,
        "policies[0].wall_tme",
        "unknown key 'wall_tme' (did you mean wall_time?)",
        id="misspelt-kind",
    ),
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: a
                wall_time: {max_seconds: 1}
                step_count: {max_steps: 1}
            """),
        5,
        5,
        "policies[0].step_count",
        "a policy has exactly one kind, and this one already has wall_time",
        id="two-kinds",
    ),
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: a
                mode: audit
            """),
        3,
        5,
        "policies[0]",
        "no policy kind; expected exactly one of wall_time, step_count, loop, token_budget, rate",
        id="no-kind",
    ),
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: a
                wall_time: {}
            """),
        4,
        16,
        "policies[0].wall_time",
        "wall_time sets no limit; expected at least one of max_seconds, idle_seconds, node_seconds",
        id="kind-without-limit",
    ),
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: a
                wall_time: 300
            """),
        4,
        16,
        "policies[0].wall_time",
        "expected a mapping of wall_time limits such as {max_seconds: ...}, got 300",
        id="kind-not-a-mapping",
    ),
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: a
                wall_time:
                  max_second: 300
            """),
        5,
        7,
        "policies[0].wall_time.max_second",
        "unknown key 'max_second' (did you mean max_seconds?)",
        id="unknown-key-in-kind",
    ),
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: a
                step_count:
                  max_steps: 10
                  max_steps: 20
            """),
        6,
        7,
        "policies[0].step_count.max_steps",
        "duplicate key 'max_steps'; it is already set at line 5, column 7",
        id="duplicate-key-in-kind",
    ),
    # numbers
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: a
                wall_time: {max_seconds: -5}
            """),
        4,
        30,
        "policies[0].wall_time.max_seconds",
        "expected a number greater than 0, got -5",
        id="negative-number",
    ),
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: a
                step_count: {max_steps: 0}
            """),
        4,
        29,
        "policies[0].step_count.max_steps",
        "expected a whole number greater than 0, got 0",
        id="zero",
    ),
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: a
                wall_time: {idle_seconds: .nan}
            """),
        4,
        31,
        "policies[0].wall_time.idle_seconds",
        "expected a number greater than 0, got nan",
        id="nan",
    ),
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: a
                wall_time: {node_seconds: .inf}
            """),
        4,
        31,
        "policies[0].wall_time.node_seconds",
        "expected a number greater than 0, got inf",
        id="infinite",
    ),
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: a
                step_count: {max_steps: true}
            """),
        4,
        29,
        "policies[0].step_count.max_steps",
        "expected a whole number greater than 0, got true",
        id="boolean-for-whole-number",
    ),
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: a
                wall_time: {max_seconds: yes}
            """),
        4,
        30,
        "policies[0].wall_time.max_seconds",
        "expected a number greater than 0, got true",
        id="boolean-for-number",
    ),
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: a
                wall_time: {max_seconds: "300"}
            """),
        4,
        30,
        "policies[0].wall_time.max_seconds",
        "expected a number greater than 0, got the string '300'",
        id="string-for-number",
    ),
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: a
                step_count: {max_steps: 1.5}
            """),
        4,
        29,
        "policies[0].step_count.max_steps",
        "expected a whole number greater than 0, got 1.5",
        id="float-for-whole-number",
    ),
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: a
                wall_time: {max_seconds: 2001-13-45}
            """),
        4,
        30,
        "policies[0].wall_time.max_seconds",
        "cannot read this value: month must be in 1..12",
        id="unreadable-timestamp",
    ),
    # rate
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: a
                rate: {max_events: 5, per_seconds: 1, of: llm_call}
            """),
        4,
        47,
        "policies[0].rate.of",
        "expected one of steps, node_runs, llm_calls, tool_calls, tokens, "
        "got the string 'llm_call' (did you mean llm_calls?)",
        id="rate-unknown-of",
    ),
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: a
                rate:
                  max_events: 5
                  of: steps
            """),
        5,
        7,
        "policies[0].rate.per_seconds",
        "missing required key 'per_seconds'",
        id="rate-missing-per-seconds",
    ),
    # match
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: a
                match: {graph: [1]}
                wall_time: {max_seconds: 1}
            """),
        4,
        21,
        "policies[0].match.graph[0]",
        "expected a graph name glob, got 1",
        id="match-graph-not-a-string",
    ),
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: a
                match:
                  tags: [prod, 7]
                wall_time: {max_seconds: 1}
            """),
        5,
        20,
        "policies[0].match.tags[1]",
        "expected a tag, got 7",
        id="match-tag-not-a-string",
    ),
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: a
                match:
                  metadata: {tenant: [acme]}
                wall_time: {max_seconds: 1}
            """),
        5,
        26,
        "policies[0].match.metadata.tenant",
        "expected a single value, got a list",
        id="match-metadata-value-a-list",
    ),
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: a
                match:
                  graphs: ["support-*"]
                wall_time: {max_seconds: 1}
            """),
        5,
        7,
        "policies[0].match.graphs",
        "unknown key 'graphs' (did you mean graph?); expected one of graph, tags, metadata",
        id="match-unknown-key",
    ),
    # options
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: a
                mode: enforec
                wall_time: {max_seconds: 1}
            """),
        4,
        11,
        "policies[0].mode",
        "expected one of enforce, audit, got the string 'enforec' (did you mean enforce?)",
        id="mode-misspelt",
    ),
    pytest.param(
        dedent("""\
            version: 1
            defaults:
              warn_at: 1.5
            policies: []
            """),
        3,
        12,
        "defaults.warn_at",
        "expected a fraction between 0 and 1 (such as 0.8), or null to turn warnings off, got 1.5",
        id="warn-at-above-one",
    ),
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: a
                grace_seconds: -1
                wall_time: {max_seconds: 1}
            """),
        4,
        20,
        "policies[0].grace_seconds",
        "expected a number of 0 or more, got -1",
        id="grace-seconds-negative",
    ),
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: a
                cleanup_node: ""
                wall_time: {max_seconds: 1}
            """),
        4,
        19,
        "policies[0].cleanup_node",
        "expected a node name, got the string ''",
        id="cleanup-node-empty",
    ),
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: a
                repair_thread: "no"
                wall_time: {max_seconds: 1}
            """),
        4,
        20,
        "policies[0].repair_thread",
        "expected true or false, got the string 'no'",
        id="repair-thread-not-a-flag",
    ),
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: a
                on_violation: stop
                wall_time: {max_seconds: 1}
            """),
        4,
        19,
        "policies[0].on_violation",
        "expected one of cancel, wrap_up, ask, got the string 'stop'",
        id="on-violation-unknown",
    ),
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: a
                wrap_up: {node: summarize}
                wall_time: {max_seconds: 1}
            """),
        4,
        5,
        "policies[0].wrap_up",
        "wrap_up says how a run lands softly, and is read only with on_violation: wrap_up; "
        "expected on_violation: wrap_up beside it",
        id="wrap-up-without-on-violation",
    ),
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: a
                on_violation: wrap_up
                wrap_up: {llm_calls: 0}
                wall_time: {max_seconds: 1}
            """),
        5,
        26,
        "policies[0].wrap_up.llm_calls",
        "expected a whole number greater than 0, got 0",
        id="wrap-up-no-calls",
    ),
    # loop, token_budget
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: a
                loop: {window: 3, max_repeats: 3}
            """),
        4,
        20,
        "policies[0].loop.window",
        "window 3 cannot hold 4 runs, so max_repeats: 3 could never fire; "
        "expected a window larger than max_repeats",
        id="loop-window-not-larger",
    ),
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: a
                token_budget:
                  max_cost_usd: 5.0
                  prices:
                    gpt-4o: {input_per_mtok: 2.5, output_per_mtok: 10.0}
            """),
        7,
        9,
        "policies[0].token_budget.prices",
        "max_cost_usd is set but prices has no 'default' entry",
        id="cost-without-default-price",
    ),
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: a
                token_budget:
                  max_total_tokens: 1000
                  prices:
                    default: {input_per_mtok: 2.5}
            """),
        7,
        18,
        "policies[0].token_budget.prices.default.output_per_mtok",
        "missing required key 'output_per_mtok'; expected US dollars per million tokens",
        id="price-missing-output",
    ),
    # YAML tags
    pytest.param(
        dedent("""\
            version: 1
            policies:
              - name: !!python/object:os.system a
                wall_time: {max_seconds: 1}
            """),
        3,
        11,
        "policies[0].name",
        "cannot read this value: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object:os.system'",
        id="unsupported-tag",
    ),
    pytest.param(
        dedent("""\
            version: !custom 1
            policies: []
            """),
        1,
        10,
        "version",
        "could not determine a constructor for the tag '!custom'",
        id="unknown-local-tag",
    ),
]


@pytest.mark.parametrize(("text", "line", "column", "path", "message"), INVALID)
def test_invalid_file_names_the_first_problem(
    text: str, line: int, column: int, path: str, message: str
) -> None:
    exc = load_error(text)
    first = exc.problems[0]
    assert (first.file, first.line, first.column, first.path) == (FILE, line, column, path)
    assert message in first.message
    assert (exc.file, exc.line, exc.column, exc.path) == (FILE, line, column, path)
    assert str(exc).startswith(f"{FILE}:{line}:{column}: ")
    expected_head = f"{FILE}:{line}:{column}: {path}: " if path else f"{FILE}:{line}:{column}: "
    assert str(first).startswith(expected_head)
    assert str(exc).splitlines()[0] == str(first).splitlines()[0]


SHARED_SCOPE_PROBLEMS = [
    pytest.param(
        "token_budget: {max_input_tokens: 9, scope: global, window: 1d}",
        "token_budget.max_input_tokens",
        "a shared scope (global) keeps max_total_tokens and max_cost_usd across pods, not "
        "this limit; expected one of those, or scope: run or thread",
        id="budget-shared-input-limit",
    ),
    pytest.param(
        "token_budget: {max_total_tokens: 9, scope: metadata.tenant}",
        "token_budget.window",
        "a shared scope (metadata.tenant) needs a window; expected window: 1d, for instance",
        id="budget-shared-without-window",
    ),
    pytest.param(
        "token_budget: {max_total_tokens: 9, scope: graph, window: 1d, local_share: 2}",
        "token_budget.local_share",
        "expected a part of the limit between 0 and 1, got 2",
        id="budget-local-share-above-one",
    ),
    pytest.param(
        "token_budget: {max_total_tokens: 9, window: 1d}",
        "token_budget.window",
        "window is read only with a shared scope; expected scope: graph, global or "
        "metadata.<key> beside it",
        id="budget-window-without-shared-scope",
    ),
    pytest.param(
        "rate: {max_events: 9, per_seconds: 60, of: llm_calls, scope: thread}",
        "rate.scope",
        "a rate counts one run, or runs across pods; expected run, graph, global or "
        "metadata.<key>, got 'thread'",
        id="rate-per-thread",
    ),
    pytest.param(
        "rate: {max_events: 9, per_seconds: 60, of: steps, scope: global}",
        "rate.of",
        "a shared scope (global) counts calls as they start, in Redis, off the per-step "
        "path; expected of: llm_calls, tool_calls, tokens, got 'steps'",
        id="rate-shared-steps",
    ),
    pytest.param(
        "rate: {max_events: 9, per_seconds: 60, of: tool_calls, fail_closed: true}",
        "rate.fail_closed",
        "fail_closed is read only with a shared scope",
        id="rate-fail-closed-without-shared-scope",
    ),
]


@pytest.mark.parametrize(("kind", "path", "message"), SHARED_SCOPE_PROBLEMS)
def test_a_shared_scope_and_its_settings_are_checked_together(
    kind: str, path: str, message: str
) -> None:
    exc = load_error(f"version: 1\npolicies:\n  - name: a\n    {kind}\n")
    assert [(p.path, message in p.message) for p in exc.problems] == [(f"policies[0].{path}", True)]


def test_the_invalid_table_is_large() -> None:
    assert len(INVALID) >= 35
    assert len({p.id for p in INVALID}) == len(INVALID)


def test_several_problems_are_all_reported_in_line_order() -> None:
    # defaults comes before version in the file but is checked after it.
    text = dedent("""\
        defaults:
          mode: loud
        version: 3
        policies:
          - name: a b
            wall_time: {max_seconds: -1}
          - name: ok
            step_count: {max_steps: 1.5}
        """)
    exc = load_error(text)
    assert str(exc) == "\n".join(
        [
            f"{FILE}:2:9: defaults.mode: expected one of enforce, audit, got the string 'loud'",
            f"{FILE}:3:10: version: expected version 1, got 3",
            (
                f"{FILE}:5:11: policies[0].name: expected a name of letters, digits and _ . : - "
                "(at most 64, it is a metric label), got 'a b'"
            ),
            (
                f"{FILE}:6:30: policies[0].wall_time.max_seconds: expected a number greater "
                "than 0, got -1"
            ),
            (
                f"{FILE}:8:29: policies[1].step_count.max_steps: expected a whole number greater "
                "than 0, got 1.5"
            ),
        ]
    )
    assert [(p.line, p.column) for p in exc.problems] == [
        (2, 9),
        (3, 10),
        (5, 11),
        (6, 30),
        (8, 29),
    ]
    assert (exc.line, exc.column, exc.path) == (2, 9, "defaults.mode")


def test_a_misspelt_key_is_not_followed_by_noise_about_what_is_missing() -> None:
    # Without the misspelling there would be no kind, and no limit: saying so adds nothing.
    text = dedent("""\
        version: 1
        policies:
          - name: a
            wall_tme: {max_seconds: 300}
          - name: b
            wall_time: {max_second: 300}
        """)
    exc = load_error(text)
    assert [(p.line, p.column, p.path) for p in exc.problems] == [
        (4, 5, "policies[0].wall_tme"),
        (6, 17, "policies[1].wall_time.max_second"),
    ]
    assert "did you mean wall_time?" in exc.problems[0].message
    assert "did you mean max_seconds?" in exc.problems[1].message


def test_a_bad_policy_does_not_hide_problems_in_the_next_one() -> None:
    text = dedent("""\
        version: 1
        policies:
          - name: first
            wall_time: {max_seconds: 0}
          - name: second
            loop: {window: 2, max_tool_repeats: 5}
          - name: third
            rate: {max_events: 1, per_seconds: 1, of: steps}
        """)
    exc = load_error(text)
    assert [p.path for p in exc.problems] == [
        "policies[0].wall_time.max_seconds",
        "policies[1].loop.window",
    ]


# -- found while writing these tests: each shows a loader bug ---------------------------


@pytest.mark.parametrize(
    ("field", "column"),
    [
        ("wall_time: {max_seconds: BIG}", 30),
        ("rate: {max_events: 1, per_seconds: BIG, of: steps}", 40),
        ("grace_seconds: BIG\n    step_count: {max_steps: 1}", 20),
    ],
    ids=["max_seconds", "per_seconds", "grace_seconds"],
)
def test_a_huge_integer_where_a_number_belongs_is_a_policy_error(field: str, column: int) -> None:
    big = "1" + "0" * 400  # an int too large to become a float
    text = f"version: 1\npolicies:\n  - name: a\n    {field.replace('BIG', big)}\n"
    exc = load_error(text)
    assert (exc.line, exc.column) == (4, column)
    assert "expected a number" in exc.problems[0].message


def test_deeply_nested_yaml_is_a_policy_error() -> None:
    text = "version: 1\npolicies: " + "[" * 5000 + "]" * 5000 + "\n"
    exc = load_error(text)
    assert exc.line >= 1
    assert exc.column >= 1


def test_an_alias_to_an_unreadable_value_repeats_the_real_reason() -> None:
    text = dedent("""\
        version: 1
        policies:
          - name: a
            wall_time: {max_seconds: &when 2001-13-45}
          - name: b
            wall_time: {max_seconds: *when}
        """)
    exc = load_error(text)
    assert [p.path for p in exc.problems] == [
        "policies[0].wall_time.max_seconds",
        "policies[1].wall_time.max_seconds",
    ]
    for problem in exc.problems:
        assert "month must be in 1..12" in problem.message


@pytest.mark.parametrize(
    ("text", "line", "column", "path", "found"),
    [
        ("version: 1\npolicies: 3\n", 2, 11, "policies", "got 3"),
        ("version: 1\npolicies: everything\n", 2, 11, "policies", "got the string 'everything'"),
        (
            "version: 1\npolicies:\n  - <<: 3\n    name: a\n    wall_time: {max_seconds: 1}\n",
            3,
            9,
            "policies[0]",
            "got 3",
        ),
    ],
    ids=["policies-number", "policies-string", "merge-a-number"],
)
def test_a_scalar_where_a_collection_belongs_is_described_as_what_it_is(
    text: str, line: int, column: int, path: str, found: str
) -> None:
    exc = load_error(text)
    assert (exc.line, exc.column, exc.path) == (line, column, path)
    assert found in exc.problems[0].message
    assert "got null" not in exc.problems[0].message


@pytest.mark.parametrize(
    "text",
    [
        dedent("""\
            version: 1
            policies:
              - name: a
                wall_time: !!python/object:os.system {max_seconds: 1}
            """),
        dedent("""\
            version: 1
            policies: !!python/object/apply:os.system
              - name: a
                wall_time: {max_seconds: 1}
            """),
    ],
    ids=["on-a-mapping", "on-a-list"],
)
def test_an_unsupported_tag_on_a_collection_is_an_error(text: str) -> None:
    # yaml.safe_load refuses these documents; the loader must not quietly accept them.
    exc = load_error(text)
    assert "python/object" in exc.problems[0].message


def test_a_null_version_is_reported_next_to_other_problems() -> None:
    text = dedent("""\
        colour: blue
        version: null
        policies: []
        """)
    exc = load_error(text)
    assert [(p.line, p.path) for p in exc.problems] == [(1, "colour"), (2, "version")]
    assert exc.problems[1].message == "expected version 1, got null"


@pytest.mark.parametrize(
    "text",
    [
        "version: 1\npolicies: \x07\n",
        'version: 1\n"poli\\ncies": []\n',
        'version: 1\npolicies:\n  - name: a\n    step_count: {"max\\rsteps": 1}\n',
    ],
    ids=["control-character", "line-feed-in-a-key", "carriage-return-in-a-key"],
)
def test_every_problem_is_one_line_of_the_error(text: str) -> None:
    exc = load_error(text)
    # a key is text from the file: a line break in it must not break the line
    assert all(len(str(problem).splitlines()) == 1 for problem in exc.problems)
    assert len(str(exc).splitlines()) == len(exc.problems)


def test_an_unclosed_quote_is_reported_as_an_unclosed_quote() -> None:
    text = dedent("""\
        version: 1
        policies:
          - name: "a
            wall_time: {max_seconds: 1}
        """)
    exc = load_error(text)
    # PyYAML says "while scanning a quoted scalar" (at 3:11) ... "found unexpected end of
    # stream" (at 5:1); without the first half the message does not point at the quote.
    assert "quoted scalar" in exc.problems[0].message


# -- YAML 1.1 traps ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "found"),
    [
        (
            "wall_time: {max_seconds: 1e-12}",
            "got the string '1e-12' (YAML 1.1 reads a number without a dot as text: write 1.0e-12)",
        ),
        # A dot is not enough: 1.0e5 is text too, and 1.0e+5 (or 100000) is the number.
        (
            "wall_time: {max_seconds: 1.0e5}",
            (
                "got the string '1.0e5' (YAML 1.1 reads a number without a sign on its exponent "
                "as text: write 100000)"
            ),
        ),
        (
            "wall_time: {max_seconds: 2E20}",
            (
                "got the string '2E20' (YAML 1.1 reads a number without a dot or a sign on its "
                "exponent as text: write 2.0e+20)"
            ),
        ),
        ("wall_time: {max_seconds: 1e400}", "got the string '1e400' (not a finite number)"),
        ("wall_time: {max_seconds: inf}", "got the string 'inf' (not a finite number)"),
        (
            'wall_time: {max_seconds: "300"}',
            "got the string '300' (a quoted value is text: write 300)",
        ),
        (
            "step_count: {max_steps: 1e3}",
            (
                "got the string '1e3' (YAML 1.1 reads a number without a dot or a sign on its "
                "exponent as text: write 1000)"
            ),
        ),
        (
            # no spelling of 0.001 is a whole number
            "step_count: {max_steps: 1e-3}",
            "got the string '1e-3' (YAML 1.1 reads a number without a dot as text)",
        ),
        (
            "warn_at: 8e-1\n    step_count: {max_steps: 1}",
            "got the string '8e-1' (YAML 1.1 reads a number without a dot as text: write 0.8)",
        ),
        # Text that is no number gets no hint.
        ("wall_time: {max_seconds: soon}", "got the string 'soon'"),
        ("wall_time: {max_seconds: 1e}", "got the string '1e'"),
    ],
    ids=[
        "no-dot",
        "unsigned-exponent",
        "neither",
        "infinite",
        "inf",
        "quoted",
        "whole-number",
        "not-whole",
        "fraction",
        "a-word",
        "no-exponent-digits",
    ],
)
def test_a_number_yaml_reads_as_text_says_why_and_how_to_write_it(field: str, found: str) -> None:
    exc = load_error(f"version: 1\npolicies:\n  - name: a\n    {field}\n")
    [problem] = exc.problems
    assert problem.message.endswith(found)


def test_the_spelling_a_hint_suggests_is_read_as_that_number() -> None:
    text = "version: 1\npolicies:\n  - name: a\n    wall_time: {max_seconds: VALUE}\n"
    for value, number in [("1e-12", 1e-12), ("1.0e5", 1e5), ("2E20", 2e20), ("+.5", 0.5)]:
        [problem] = load_error(text.replace("VALUE", value)).problems
        spelled = problem.message.rsplit("write ", 1)[1].rstrip(")")
        loaded = load_policy_text(text.replace("VALUE", spelled), FILE).policies[0].kind
        assert isinstance(loaded, WallTime)
        assert loaded.max_seconds == number


@pytest.mark.parametrize(
    ("text", "line", "column", "message"),
    [
        # a key indented less than its siblings
        (
            "version: 1\npolicies:\n  - name: a\n    wall_time: {max_seconds: 1}\n   mode: audit\n",
            5,
            4,
            (
                "YAML: while parsing a block collection at line 3, column 3: expected "
                "<block end>, but found '<block mapping start>' (check this line's indentation "
                "against the lines above)"
            ),
        ),
        # a key indented more than its siblings: PyYAML stops at its ':', the slip is before
        (
            "version: 1\npolicies:\n  - name: a\n      wall_time: {max_seconds: 1}\n",
            4,
            7,
            (
                "YAML: mapping values are not allowed here (check this line's indentation against "
                "the lines above)"
            ),
        ),
        (
            "version: 1\n policies: []\n",
            2,
            2,
            (
                "YAML: mapping values are not allowed here (check this line's indentation against "
                "the lines above)"
            ),
        ),
        # the same words for a value holding ': ' are not about indentation
        (
            "version: 1\npolicies:\n  - name: a: b\n    wall_time: {max_seconds: 1}\n",
            3,
            12,
            "YAML: mapping values are not allowed here (quote a value that holds ': ')",
        ),
        (
            "version: 1\npolicies:\n  - name: a\n    wall_time:\n\t  max_seconds: 1\n",
            5,
            1,
            "YAML: a tab character: YAML indents with spaces only",
        ),
        (
            "version: 1\npolicies:\n  - name: a\n    wall_time: {max_seconds:\t1}\n",
            4,
            29,
            "YAML: a tab character: YAML indents with spaces only",
        ),
    ],
    ids=["under-indented", "over-indented", "over-indented-top", "colon-in-value", "tab", "tab-2"],
)
def test_a_yaml_slip_gets_a_plain_hint_where_it_stands(
    text: str, line: int, column: int, message: str
) -> None:
    [problem] = load_error(text).problems
    assert (problem.line, problem.column, problem.message) == (line, column, message)


# -- the line of each problem, and a caret under its column ----------------------------


@pytest.mark.parametrize(
    ("text", "rendered"),
    [
        (
            "version: 1\npolicies:\n  - name: a\n    wall_time: {max_second: 300}\n",
            f"""\
{FILE}:4:17: policies[0].wall_time.max_second: unknown key 'max_second' (did you mean \
max_seconds?); expected one of max_seconds, idle_seconds, node_seconds
  |
4 |     wall_time: {{max_second: 300}}
  |                 ^""",
        ),
        (
            "version: 1\npolicies:\n  - name: a\n    step_count:\n      max_steps: 0\n",
            f"""\
{FILE}:5:18: policies[0].step_count.max_steps: expected a whole number greater than 0, got 0
  |
5 |       max_steps: 0
  |                  ^""",
        ),
        (
            "version: 1\npolicies: [\n  {name: a, wall_time: {max_seconds: 1}}\n",
            f"""\
{FILE}:4:1: YAML: while parsing a flow sequence at line 2, column 11: expected ',' or ']', \
but got '<stream end>'
  |
4 |
  | ^""",
        ),
        (
            "version: 1\npolicies:\n  - name: a\n   wall_time: {max_seconds: 1}\n",
            f"""\
{FILE}:4:4: YAML: while parsing a block collection at line 3, column 3: expected <block end>, \
but found '<block mapping start>' (check this line's indentation against the lines above)
  |
4 |    wall_time: {{max_seconds: 1}}
  |    ^""",
        ),
        (
            "\n" * 9 + "version: 1\npolicies:\n  - {name: a, rate: {of: steps}}\n",
            f"""\
{FILE}:12:21: policies[0].rate.max_events: missing required key 'max_events'; rate needs \
max_events, per_seconds and of (steps, node_runs, llm_calls, tool_calls, tokens)
   |
12 |   - {{name: a, rate: {{of: steps}}}}
   |                     ^""",
        ),
    ],
    ids=["flow-mapping", "block-mapping", "syntax-error-at-the-end", "syntax-error", "line-12"],
)
def test_a_problem_renders_with_its_line_and_a_caret_under_its_column(
    text: str, rendered: str
) -> None:
    [problem] = load_error(text).problems
    assert problem.render() == rendered
    assert str(problem) == rendered.splitlines()[0]  # a log line stays one line


def char_above_caret(rendered: str, tab_size: int) -> str:
    """The character a terminal with tabs every ``tab_size`` cells shows above the caret."""
    source, caret = (line.expandtabs(tab_size) for line in rendered.splitlines()[2:])
    cells = []  # what each cell shows: a wide character takes two, a combining accent none
    for char in source:
        wide = unicodedata.east_asian_width(char) in ("W", "F")
        cells.extend([char] * (0 if unicodedata.combining(char) else 2 if wide else 1))
    return cells[caret.index("^")]


@pytest.mark.parametrize(
    ("line", "column", "char"),
    [
        ("wall_time:\t{max_seconds: 0}", 26, "0"),
        ("\t\twall_time: {max_seconds: 0}", 28, "0"),
        ('{description: "日本語", max_seconds: 0}', 35, "0"),
        ('{description: "\x07\x1b", max_seconds: 0}', 34, "0"),
        ('{description: "\u200b", max_seconds: 0}', 33, "0"),
        ('{description: "e\u0301te\u0301", max_seconds: 0}', 37, "0"),
    ],
    ids=[
        "tab",
        "tabs-first",
        "wide-characters",
        "control-characters",
        "zero-width-space",
        "combining-accents",
    ],
)
def test_the_caret_stands_under_its_column_whatever_comes_before_it(
    line: str, column: int, char: str
) -> None:
    assert line[column - 1] == char
    problem = PolicyProblem(FILE, 3, column, "policies[0]", "a problem", line)
    rendered = problem.render()
    assert len(rendered.splitlines()) == 4  # however the line is shown, it is one line
    for tab_size in (2, 4, 8):
        assert char_above_caret(rendered, tab_size) == char


def test_a_problem_whose_line_is_not_known_renders_as_its_one_line() -> None:
    problem = PolicyProblem(FILE, 0, 0, "", "no such file")
    assert problem.render() == str(problem) == f"{FILE}: no such file"


@pytest.mark.parametrize("line_break", ["\n", "\r\n", "\r", "\u2028"])
def test_a_bad_character_is_located_by_the_line_breaks_yaml_counts(line_break: str) -> None:
    text = line_break.join(["version: 1", "# comment", "policies: \x07", ""])
    [problem] = load_error(text).problems
    assert (problem.line, problem.column, problem.source_line) == (3, 11, "policies: \x07")


# -- valid files -------------------------------------------------------------------------

FULL_EXAMPLE = dedent("""\
    version: 1
    defaults:              # optional, inherited by every policy
      mode: enforce        # enforce | audit
      grace_seconds: 5
      warn_at: 0.8
    policies:
      - name: wall-time    # unique; a metric label
        match:             # optional; omitted = every run
          graph: ["support-*"]     # globs on the name given to attach()
          tags: [prod]             # all must be in the run config's tags
          metadata: {tenant: acme} # exact matches on the run config's metadata
        wall_time: {max_seconds: 300, idle_seconds: 60, node_seconds: 120}
      - name: steps
        step_count: {max_steps: 100, max_node_runs: 400}
      - name: loops
        loop: {window: 50, max_repeats: 3, max_tool_repeats: 3, max_cycle_repeats: null}
      - name: tokens
        token_budget:
          max_total_tokens: 500000   # also max_input_tokens, max_output_tokens
          max_cost_usd: 5.0
          prices:
            "gpt-4o": {input_per_mtok: 2.5, output_per_mtok: 10.0}
            default: {input_per_mtok: 5, output_per_mtok: 15}
      - name: burst
        rate: {max_events: 30, per_seconds: 10, of: llm_calls}
    """)


def test_a_file_with_every_kind_and_selector_loads() -> None:
    loaded = load_policy_text(FULL_EXAMPLE, FILE)
    assert loaded.files == (FILE,)
    assert len(loaded) == 5
    assert loaded.policies == (
        Policy(
            name="wall-time",
            kind=WallTime(max_seconds=300.0, idle_seconds=60.0, node_seconds=120.0),
            match=Match(
                graphs=("support-*",), tags=frozenset({"prod"}), metadata={"tenant": "acme"}
            ),
            file=FILE,
            line=7,
        ),
        Policy(name="steps", kind=StepCount(max_steps=100, max_node_runs=400), file=FILE, line=13),
        Policy(
            name="loops",
            kind=Loop(window=50, max_repeats=3, max_tool_repeats=3, max_cycle_repeats=None),
            file=FILE,
            line=15,
        ),
        Policy(
            name="tokens",
            kind=TokenBudget(
                max_total_tokens=500000,
                max_cost_usd=5.0,
                prices={"gpt-4o": Price(2.5, 10.0), "default": Price(5.0, 15.0)},
            ),
            file=FILE,
            line=17,
        ),
        Policy(
            name="burst",
            kind=Rate(max_events=30, per_seconds=10.0, of="llm_calls"),
            file=FILE,
            line=24,
        ),
    )
    for policy in loaded.policies:
        assert (policy.mode, policy.grace_seconds, policy.warn_at) == ("enforce", 5.0, 0.8)
    wall = loaded.policies[0].kind
    assert isinstance(wall, WallTime)
    assert isinstance(wall.max_seconds, float)
    assert [type(limit).__name__ for limit in wall.limits] == [
        "MaxSeconds",
        "IdleSeconds",
        "NodeSeconds",
    ]


def test_defaults_are_inherited_and_a_policy_overrides_them() -> None:
    text = dedent("""\
        version: 1
        defaults:
          mode: audit
          grace_seconds: 12
          warn_at: 0.5
        policies:
          - name: inherits
            step_count: {max_steps: 10}
          - name: overrides
            mode: enforce
            grace_seconds: 0
            warn_at: null
            cleanup_node: tidy_up
            repair_thread: false
            description: the strict one
            step_count: {max_steps: 20}
        """)
    loaded = load_policy_text(text, FILE)
    assert loaded.policies == (
        Policy(
            name="inherits",
            kind=StepCount(max_steps=10),
            mode="audit",
            grace_seconds=12.0,
            warn_at=0.5,
            file=FILE,
            line=7,
        ),
        Policy(
            name="overrides",
            kind=StepCount(max_steps=20),
            mode="enforce",
            grace_seconds=0.0,
            warn_at=None,
            cleanup_node="tidy_up",
            repair_thread=False,
            description="the strict one",
            file=FILE,
            line=9,
        ),
    )


def test_without_defaults_the_built_in_options_apply() -> None:
    text = "version: 1\npolicies:\n  - name: a\n    wall_time: {max_seconds: 1.5}\n"
    (policy,) = load_policy_text(text).policies
    assert policy == Policy(name="a", kind=WallTime(max_seconds=1.5), file="<string>", line=3)
    assert (policy.mode, policy.grace_seconds, policy.warn_at) == ("enforce", 5.0, 0.8)


def test_warn_at_null_in_defaults_turns_warnings_off() -> None:
    text = dedent("""\
        version: 1
        defaults: {warn_at: null}
        policies:
          - name: a
            wall_time: {max_seconds: 1}
          - name: b
            warn_at: 0.9
            wall_time: {max_seconds: 1}
        """)
    assert [p.warn_at for p in load_policy_text(text).policies] == [None, 0.9]


def test_null_leaves_an_optional_limit_unset() -> None:
    text = dedent("""\
        version: 1
        policies:
          - name: wall
            wall_time: {max_seconds: 300, idle_seconds: null, node_seconds: ~}
          - name: loop
            loop: {window: null, max_repeats: 3, max_cycle_repeats: null}
          - name: tokens
            token_budget: {max_total_tokens: null, max_output_tokens: 10}
        """)
    kinds = [p.kind for p in load_policy_text(text).policies]
    assert kinds == [
        WallTime(max_seconds=300.0),
        Loop(window=50, max_repeats=3),
        TokenBudget(max_output_tokens=10),
    ]
    assert len(kinds[0].limits) == 1


def test_a_kind_whose_limits_are_all_null_sets_no_limit() -> None:
    text = "version: 1\npolicies:\n  - name: a\n    wall_time: {max_seconds: null}\n"
    exc = load_error(text)
    assert (exc.line, exc.column, exc.path) == (4, 16, "policies[0].wall_time")
    assert "wall_time sets no limit" in exc.problems[0].message


def test_anchors_aliases_and_merge_keys() -> None:
    text = dedent("""\
        version: 1
        policies:
          - &base
            name: first
            mode: audit
            grace_seconds: 2
            wall_time: &wall {max_seconds: 30, idle_seconds: 10}
          - <<: *base
            name: second
          - name: third
            wall_time:
              <<: *wall
              idle_seconds: 5
          - name: fourth
            match: &prod {graph: "api-*", tags: [prod]}
            step_count: {max_steps: 3}
          - <<: [{mode: audit}, {warn_at: 0.25, mode: enforce}]
            name: fifth
            match: *prod
            step_count: {max_steps: 4}
        """)
    loaded = load_policy_text(text, FILE)
    prod = Match(graphs=("api-*",), tags=frozenset({"prod"}))
    assert loaded.policies == (
        Policy(
            name="first",
            kind=WallTime(max_seconds=30.0, idle_seconds=10.0),
            mode="audit",
            grace_seconds=2.0,
            file=FILE,
            line=3,  # where the anchored mapping starts
        ),
        Policy(
            name="second",
            kind=WallTime(max_seconds=30.0, idle_seconds=10.0),
            mode="audit",
            grace_seconds=2.0,
            file=FILE,
            line=8,
        ),
        Policy(
            name="third",
            kind=WallTime(max_seconds=30.0, idle_seconds=5.0),
            file=FILE,
            line=10,
        ),
        Policy(name="fourth", kind=StepCount(max_steps=3), match=prod, file=FILE, line=14),
        Policy(
            name="fifth",
            kind=StepCount(max_steps=4),
            mode="audit",  # the first merged mapping wins
            warn_at=0.25,
            match=prod,
            file=FILE,
            line=17,
        ),
    )


def test_a_merged_key_does_not_count_as_a_duplicate_but_an_own_duplicate_does() -> None:
    text = dedent("""\
        version: 1
        policies:
          - &base {name: a, mode: audit, wall_time: {max_seconds: 1}}
          - <<: *base
            name: b
            name: c
        """)
    exc = load_error(text)
    assert [(p.line, p.column, p.path) for p in exc.problems] == [(6, 5, "policies[1].name")]
    assert "duplicate key 'name'; it is already set at line 5, column 5" in exc.problems[0].message


# -- files and directories ---------------------------------------------------------------


def policy_text(*policy_names: str) -> str:
    body = "".join(f"  - name: {n}\n    step_count: {{max_steps: 5}}\n" for n in policy_names)
    return f"version: 1\npolicies:\n{body}"


def test_a_single_file_loads_and_is_named_in_problems(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(policy_text("one", "two"), encoding="utf-8")
    loaded = load_policies(good)
    assert names(loaded) == ["one", "two"]
    assert loaded.files == (str(good),)
    assert loaded.policies[0].file == str(good)
    assert loaded.policies[1].line == 5

    bad = tmp_path / "bad.yml"
    bad.write_text("version: 1\npolicies: {}\n", encoding="utf-8")
    exc = load_errors_from(bad)
    assert str(exc) == f"{bad}:2:11: policies: expected a list of policies, got a mapping"


def load_errors_from(path: Path) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        load_policies(path)
    return info.value


def test_a_directory_merges_its_yaml_and_yml_files_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "b.yml").write_text(policy_text("from-b"), encoding="utf-8")
    (tmp_path / "a.yaml").write_text(policy_text("from-a1", "from-a2"), encoding="utf-8")
    (tmp_path / "c.yaml").write_text(policy_text("from-c"), encoding="utf-8")
    (tmp_path / "d.YAML").write_text(policy_text("from-d"), encoding="utf-8")
    # skipped: hidden files, other suffixes, directories named like policy files
    (tmp_path / ".hidden.yaml").write_text("not: [valid", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("not: [valid", encoding="utf-8")
    (tmp_path / "d.json").write_text("{}", encoding="utf-8")
    (tmp_path / "c.yaml.bak").write_text("not: [valid", encoding="utf-8")
    (tmp_path / "e.yaml").mkdir()
    (tmp_path / "..data").mkdir()
    (tmp_path / "..data" / "z.yaml").write_text(policy_text("from-data"), encoding="utf-8")

    loaded = load_policies(tmp_path)
    assert names(loaded) == ["from-a1", "from-a2", "from-b", "from-c", "from-d"]
    assert loaded.files == tuple(str(tmp_path / n) for n in ("a.yaml", "b.yml", "c.yaml", "d.YAML"))
    assert [p.file for p in loaded.policies] == [
        str(tmp_path / "a.yaml"),
        str(tmp_path / "a.yaml"),
        str(tmp_path / "b.yml"),
        str(tmp_path / "c.yaml"),
        str(tmp_path / "d.YAML"),
    ]
    # the same set through a str path
    assert load_policies(str(tmp_path)) == loaded


def test_a_name_used_in_two_files_is_an_error_naming_both_places(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(policy_text("first", "shared"), encoding="utf-8")
    (tmp_path / "b.yaml").write_text(policy_text("other", "shared"), encoding="utf-8")
    exc = load_errors_from(tmp_path)
    assert len(exc.problems) == 1
    problem = exc.problems[0]
    assert (problem.file, problem.line, problem.column, problem.path) == (
        str(tmp_path / "b.yaml"),
        5,
        11,
        "policies[1].name",
    )
    assert problem.message == (
        f"policy name 'shared' is already used at {tmp_path / 'a.yaml'}:5:11; "
        "expected a unique name"
    )
    assert str(exc) == f"{tmp_path / 'b.yaml'}:5:11: policies[1].name: {problem.message}"


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        # the second use is invalid in another way too
        (
            policy_text("shared"),
            "version: 1\npolicies:\n  - name: shared\n    step_count: {max_steps: 0}\n",
            [("b.yaml", 3, "policies[0].name"), ("b.yaml", 4, "policies[0].step_count.max_steps")],
        ),
        # the first use is the invalid one
        (
            "version: 1\npolicies:\n  - name: shared\n    step_count: {max_steps: 0}\n",
            policy_text("shared"),
            [("a.yaml", 4, "policies[0].step_count.max_steps"), ("b.yaml", 3, "policies[0].name")],
        ),
        # another policy, or the document, has the problem
        (
            policy_text("shared") + "  - name: other\n    loop: {}\n",
            policy_text("shared").replace("version: 1", "version: 2"),
            [
                ("a.yaml", 6, "policies[1].loop"),
                ("b.yaml", 1, "version"),
                ("b.yaml", 3, "policies[0].name"),
            ],
        ),
    ],
    ids=["second-use-invalid", "first-use-invalid", "other-problems"],
)
def test_a_duplicate_name_is_reported_beside_other_problems(
    tmp_path: Path, first: str, second: str, expected: list[tuple[str, int, str]]
) -> None:
    (tmp_path / "a.yaml").write_text(first, encoding="utf-8")
    (tmp_path / "b.yaml").write_text(second, encoding="utf-8")
    exc = load_errors_from(tmp_path)
    assert [(Path(p.file).name, p.line, p.path) for p in exc.problems] == expected
    [duplicate] = [p for p in exc.problems if p.path.endswith(".name")]
    assert duplicate.message == (
        f"policy name 'shared' is already used at {tmp_path / 'a.yaml'}:3:11; "
        "expected a unique name"
    )


def test_a_duplicate_name_in_one_file_is_reported_beside_other_problems() -> None:
    text = dedent("""\
        version: 1
        policies:
          - name: a
            wall_time: {max_seconds: 1}
          - name: a
            wall_time: {max_seconds: 0}
        """)
    exc = load_error(text)
    assert [(p.line, p.column, p.path) for p in exc.problems] == [
        (5, 11, "policies[1].name"),
        (6, 30, "policies[1].wall_time.max_seconds"),
    ]


def test_problems_of_several_files_are_all_reported_file_by_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("version: 2\npolicies: []\n", encoding="utf-8")
    (tmp_path / "b.yaml").write_text("policies: []\n", encoding="utf-8")
    exc = load_errors_from(tmp_path)
    assert [(Path(p.file).name, p.line, p.path) for p in exc.problems] == [
        ("a.yaml", 1, "version"),
        ("b.yaml", 1, "version"),
    ]


@pytest.mark.parametrize(
    "contents",
    [{}, {".hidden.yaml": policy_text("a"), "readme.md": "# hi"}],
    ids=["empty", "nothing-that-counts"],
)
def test_a_directory_without_policy_files_is_an_error(
    tmp_path: Path, contents: dict[str, str]
) -> None:
    for name, text in contents.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    exc = load_errors_from(tmp_path)
    assert (exc.file, exc.line, exc.column, exc.path) == (str(tmp_path), 0, 0, "")
    assert str(exc) == f"{tmp_path}: no policy files (*.yaml, *.yml) in this directory"


def test_a_missing_path_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    exc = load_errors_from(missing)
    assert (exc.file, exc.line, exc.path) == (str(missing), 0, "")
    assert str(exc.problems[0]) == f"{missing}: no such file"
    assert str(exc) == f"{missing}: no such file"


@pytest.mark.parametrize(
    ("data", "line", "column", "source_line"),
    [
        ("version: 1\npolicies: []\n# café\n".encode("latin-1"), 3, 6, "# caf\ufffd"),
        # columns count characters, as everywhere else, not bytes
        ("version: 1\n# été\xa0à".encode() + b"\xff\npolicies: []\n", 2, 8, "# été\xa0à\ufffd"),
        # \r\n is one line break; a file larger than a read buffer is located all the same
        (
            b"version: 1\r\n" + b"# comment\r\n" * 2000 + b"policies: \xe9\r\n",
            2002,
            11,
            "policies: \ufffd",
        ),
    ],
    ids=["latin-1", "after-multibyte-characters", "deep-in-a-large-file"],
)
def test_a_file_that_is_not_utf8_is_located_at_its_first_bad_byte(
    tmp_path: Path, data: bytes, line: int, column: int, source_line: str
) -> None:
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(data)
    exc = load_errors_from(latin)
    [problem] = exc.problems
    assert (problem.file, problem.line, problem.column, problem.path) == (
        str(latin),
        line,
        column,
        "",
    )
    assert problem.source_line == source_line
    assert char_above_caret(problem.render(), 8) == "\ufffd"


def test_a_file_that_is_not_utf8_says_which_byte_and_what_to_do(tmp_path: Path) -> None:
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("version: 1\npolicies: []\n# café\n".encode("latin-1"))
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_bytes("version: 1\npolicies: []\n".encode("utf-16"))  # as Windows tools save
    assert str(load_errors_from(latin)) == (
        f"{latin}:3:6: not UTF-8 text: byte 0xe9 (invalid continuation byte); expected the file "
        "saved as UTF-8"
    )
    assert str(load_errors_from(utf16)) == (
        f"{utf16}:1:1: not UTF-8 text: byte 0xff (invalid start byte) (it looks like UTF-16); "
        "expected the file saved as UTF-8"
    )


def test_a_file_that_is_not_utf8_does_not_hide_the_other_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("version: 2\npolicies: []\n", encoding="utf-8")
    (tmp_path / "b.yaml").write_bytes(b"version: 1\npolicies: \xff\n")
    (tmp_path / "c.yaml").write_bytes(b"\xfe")
    (tmp_path / "d.yaml").write_text(policy_text("d", "d"), encoding="utf-8")
    (tmp_path / "e.yaml").write_text(policy_text("e"), encoding="utf-8")
    exc = load_errors_from(tmp_path)
    assert [(Path(p.file).name, p.line, p.column, p.path) for p in exc.problems] == [
        ("a.yaml", 1, 10, "version"),
        ("b.yaml", 2, 11, ""),
        ("c.yaml", 1, 1, ""),
        ("d.yaml", 5, 11, "policies[1].name"),
    ]
    assert exc.problems[1].message.startswith("not UTF-8 text: byte 0xff")


def test_read_policy_files_names_every_file_it_cannot_read(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_bytes(b"\xff")
    (tmp_path / "b.yaml").write_text(policy_text("b"), encoding="utf-8")
    (tmp_path / "c.yaml").write_bytes(b"# \xe9")
    with pytest.raises(PolicyError) as info:
        read_policy_files(tmp_path)
    assert [(Path(p.file).name, p.line, p.column) for p in info.value.problems] == [
        ("a.yaml", 1, 1),
        ("c.yaml", 1, 3),
    ]


# -- PolicySet.matching ------------------------------------------------------------------

MATCHING = dedent("""\
    version: 1
    policies:
      - name: everyone
        step_count: {max_steps: 1}
      - name: support
        match: {graph: ["support-*", billing]}
        step_count: {max_steps: 1}
      - name: prod-eu
        match: {tags: [prod, eu]}
        step_count: {max_steps: 1}
      - name: acme
        match: {metadata: {tenant: acme, tier: 2}}
        step_count: {max_steps: 1}
      - name: support-prod
        match: {graph: support-*, tags: prod}
        step_count: {max_steps: 1}
    """)


@pytest.mark.parametrize(
    ("graph", "tags", "metadata", "expected"),
    [
        ("other", [], None, ["everyone"]),
        ("support-bot", [], None, ["everyone", "support"]),
        ("billing", [], {}, ["everyone", "support"]),
        ("Support-bot", [], None, ["everyone"]),  # globs are case-sensitive
        ("billing-v2", [], None, ["everyone"]),  # a glob without * is exact
        ("other", ["prod"], None, ["everyone"]),  # every tag is required
        ("other", ["eu", "prod", "x"], None, ["everyone", "prod-eu"]),
        ("support-bot", ("prod",), None, ["everyone", "support", "support-prod"]),
        ("other", [], {"tenant": "acme", "tier": 2, "extra": 1}, ["everyone", "acme"]),
        ("other", [], {"tenant": "acme"}, ["everyone"]),  # every key is required
        ("other", [], {"tenant": "acme", "tier": "2"}, ["everyone"]),  # exact, not stringly
        ("other", [], {"tenant": "ACME", "tier": 2}, ["everyone"]),
    ],
)
def test_matching_policies(
    graph: str,
    tags: list[str] | tuple[str, ...],
    metadata: dict[str, object] | None,
    expected: list[str],
) -> None:
    loaded = load_policy_text(MATCHING)
    assert names(loaded.matching(graph, tags, metadata)) == expected


def test_matching_defaults_to_no_tags_and_no_metadata() -> None:
    loaded = load_policy_text(MATCHING)
    assert names(loaded.matching("support-x")) == ["everyone", "support"]
    assert loaded.policies[1].match == Match(graphs=("support-*", "billing"))
    assert loaded.policies[3].match == Match(metadata={"tenant": "acme", "tier": 2})
    assert loaded.policies[4].match == Match(graphs=("support-*",), tags=frozenset({"prod"}))


def with_redis(url: str, *policy_names: str) -> str:
    return policy_text(*policy_names).replace(
        "version: 1\n", f"version: 1\ndefaults:\n  redis_url: {url}\n"
    )


def test_a_redis_url_in_the_defaults_is_where_shared_limits_live(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(with_redis("redis://redis:6379/0", "a"), encoding="utf-8")
    (tmp_path / "b.yaml").write_text(with_redis("redis://redis:6379/0", "b"), encoding="utf-8")
    (tmp_path / "c.yaml").write_text(policy_text("c"), encoding="utf-8")
    assert load_policies(tmp_path).redis_url == "redis://redis:6379/0"
    assert load_policies(tmp_path / "c.yaml").redis_url is None


def test_two_files_that_name_two_redis_servers_are_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(with_redis("redis://one:6379", "a"), encoding="utf-8")
    (tmp_path / "b.yaml").write_text(with_redis("redis://two:6379", "b"), encoding="utf-8")
    (problem,) = load_errors_from(tmp_path).problems
    assert (problem.file, problem.line, problem.path) == (
        str(tmp_path / "b.yaml"),
        3,
        "defaults.redis_url",
    )
    assert problem.message == (
        f"'redis://two:6379' is not the Redis URL set at {tmp_path / 'a.yaml'}:3:14 "
        "('redis://one:6379'); expected one Redis for every policy file"
    )


def test_a_redis_url_must_say_it_is_one() -> None:
    (problem,) = load_error(with_redis("http://redis:6379", "a")).problems
    assert (problem.line, problem.column, problem.path) == (3, 14, "defaults.redis_url")
    assert problem.message == (
        "expected a Redis URL such as redis://redis:6379/0 (or rediss://, unix://), got "
        "'http://redis:6379'"
    )
