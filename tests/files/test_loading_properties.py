"""Mutated policy files: the loader answers with a PolicySet or a PolicyError, nothing else."""

from __future__ import annotations

import copy
import math
import re
import textwrap

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from watchdog import PolicyError, PolicySet, load_policy_text

FILE = "fuzz.yaml"
# The line breaks PyYAML's reader counts lines by: problems are located by its count.
LINE_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")

SEEDS = (
    # every kind, block style, defaults, match, prices
    textwrap.dedent("""\
        version: 1
        defaults:
          mode: audit
          grace_seconds: 5
          warn_at: 0.8
        policies:
          - name: wall-time
            description: the run as a whole
            cleanup_node: tidy
            match:
              graph: ["support-*", billing]
              tags: [prod]
              metadata: {tenant: acme, tier: 2}
            wall_time: {max_seconds: 300, idle_seconds: 60, node_seconds: 120}
          - name: steps
            mode: enforce
            step_count: {max_steps: 100, max_node_runs: 400}
          - name: loops
            warn_at: null
            loop: {window: 50, max_repeats: 3, max_tool_repeats: 3, max_cycle_repeats: null}
          - name: tokens
            grace_seconds: 0
            token_budget:
              max_total_tokens: 500000
              max_input_tokens: 400000
              max_output_tokens: 100000
              max_cost_usd: 5.0
              prices:
                "gpt-4o": {input_per_mtok: 2.5, output_per_mtok: 10.0}
                default: {input_per_mtok: 5, output_per_mtok: 15}
          - name: burst
            rate: {max_events: 30, per_seconds: 10, of: llm_calls}
        """),
    # flow style throughout
    textwrap.dedent("""\
        {version: 1, defaults: {warn_at: 0.5}, policies: [
          {name: a, match: {graph: x-*, tags: t}, step_count: {max_steps: 3}},
          {name: b, rate: {max_events: 1, per_seconds: 0.5, of: tokens}},
          {name: c, token_budget: {max_cost_usd: 1,
                                   prices: {default: {input_per_mtok: 1, output_per_mtok: 2}}}},
          {name: d, loop: {window: 4, max_cycle_repeats: 2}},
          {name: e, wall_time: {idle_seconds: 1.5}}]}
        """),
    # anchors, aliases and merge keys
    textwrap.dedent("""\
        version: 1
        defaults: &opts
          mode: enforce
          grace_seconds: 1
        policies:
          - &base
            name: first
            <<: *opts
            match: &m {tags: [prod, eu], metadata: {region: eu}}
            wall_time: &wall {max_seconds: 30}
          - <<: *base
            name: second
            match: *m
          - name: third
            wall_time:
              <<: *wall
              node_seconds: 9
          - name: fourth
            loop: {max_repeats: 2}
          - name: fifth
            rate: {max_events: 2, per_seconds: 1, of: tool_calls}
          - name: sixth
            step_count: {max_node_runs: 7}
          - name: seventh
            token_budget:
              max_output_tokens: 5
              prices: {default: {input_per_mtok: 0, output_per_mtok: 0}}
        """),
)
SEED_DOCS: tuple[object, ...] = tuple(yaml.safe_load(seed) for seed in SEEDS)

KNOWN_KEYS = (
    "version",
    "defaults",
    "policies",
    "name",
    "description",
    "match",
    "cleanup_node",
    "mode",
    "grace_seconds",
    "warn_at",
    "graph",
    "tags",
    "metadata",
    "wall_time",
    "step_count",
    "loop",
    "token_budget",
    "rate",
    "max_seconds",
    "idle_seconds",
    "node_seconds",
    "max_steps",
    "max_node_runs",
    "window",
    "max_repeats",
    "max_tool_repeats",
    "max_cycle_repeats",
    "max_total_tokens",
    "max_input_tokens",
    "max_output_tokens",
    "max_cost_usd",
    "prices",
    "default",
    "input_per_mtok",
    "output_per_mtok",
    "max_events",
    "per_seconds",
    "of",
    "<<",
)
YAML_PUNCTUATION = list(":{}[]-&*!|>'\"#\n\t ,?%@`~<")

# -- text-level mutations --------------------------------------------------------------

inserted = st.text(
    alphabet=st.one_of(st.sampled_from(YAML_PUNCTUATION), st.characters()),
    min_size=1,
    max_size=8,
)


@st.composite
def delete_slice(draw: st.DrawFn, text: str) -> str:
    start = draw(st.integers(0, len(text)))
    end = draw(st.integers(start, min(len(text), start + 40)))
    return text[:start] + text[end:]


@st.composite
def insert_characters(draw: st.DrawFn, text: str) -> str:
    at = draw(st.integers(0, len(text)))
    return text[:at] + draw(inserted) + text[at:]


@st.composite
def duplicate_line(draw: st.DrawFn, text: str) -> str:
    lines = text.splitlines(keepends=True)
    if not lines:
        return text
    at = draw(st.integers(0, len(lines) - 1))
    return "".join([*lines[: at + 1], lines[at], *lines[at + 1 :]])


@st.composite
def swap_lines(draw: st.DrawFn, text: str) -> str:
    lines = text.splitlines(keepends=True)
    if not lines:
        return text
    i = draw(st.integers(0, len(lines) - 1))
    j = draw(st.integers(0, len(lines) - 1))
    lines[i], lines[j] = lines[j], lines[i]
    return "".join(lines)


@st.composite
def reindent_line(draw: st.DrawFn, text: str) -> str:
    lines = text.splitlines(keepends=True)
    if not lines:
        return text
    at = draw(st.integers(0, len(lines) - 1))
    indent = draw(st.sampled_from(["", " ", "  ", "   ", "      ", "\t", " \t"]))
    lines[at] = indent + lines[at].lstrip(" \t")
    return "".join(lines)


TEXT_MUTATIONS = (delete_slice, insert_characters, duplicate_line, swap_lines, reindent_line)


@st.composite
def text_mutants(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(SEEDS))
    for mutation in draw(st.lists(st.sampled_from(TEXT_MUTATIONS), min_size=1, max_size=3)):
        text = draw(mutation(text))
    return text


# -- structure-level mutations ---------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from([0, -1, 2**63, 10**30]),
    st.sampled_from([2**1024, 10**400, -(10**400)]),  # too large for a float
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(KNOWN_KEYS),
    st.sampled_from(["enforce", "audit", "steps", "llm_calls", "support-*", "1", "yes"]),
)
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=10), st.integers(), st.none())
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(keys, children, max_size=4),
    ),
    max_leaves=12,
)

Step = str | int | None
Path = tuple[Step, ...]


def paths(node: object, prefix: Path = ()) -> list[Path]:
    """Every place in a loaded document, the document itself first."""
    found = [prefix]
    if isinstance(node, dict):
        for key, child in node.items():
            found.extend(paths(child, (*prefix, key)))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found.extend(paths(child, (*prefix, index)))
    return found


def at(doc: object, path: Path) -> object:
    for step in path:
        if isinstance(doc, dict):
            doc = doc[step]
        else:
            assert isinstance(doc, list)
            assert isinstance(step, int)
            doc = doc[step]
    return doc


def put(doc: object, path: Path, value: object) -> object:
    if not path:
        return value
    parent = at(doc, path[:-1])
    if isinstance(parent, dict):
        parent[path[-1]] = value
    else:
        assert isinstance(parent, list)
        assert isinstance(path[-1], int)
        parent[path[-1]] = value
    return doc


def remove(doc: object, path: Path) -> None:
    parent = at(doc, path[:-1])
    if isinstance(parent, dict):
        del parent[path[-1]]
    else:
        assert isinstance(parent, list)
        assert isinstance(path[-1], int)
        del parent[path[-1]]


@st.composite
def structure_mutants(draw: st.DrawFn) -> str:
    doc = copy.deepcopy(draw(st.sampled_from(SEED_DOCS)))
    for operation in draw(
        st.lists(st.sampled_from(["replace", "leaf", "delete", "add"]), min_size=1, max_size=3)
    ):
        everywhere = paths(doc)
        if operation == "replace":
            doc = put(doc, draw(st.sampled_from(everywhere)), draw(values))
        elif operation == "leaf":
            leaves = [p for p in everywhere if not isinstance(at(doc, p), dict | list)]
            numbers = [p for p in leaves if type(at(doc, p)) in (int, float)]
            if draw(st.booleans()) and numbers:
                leaves = numbers  # limits are where most of the validation is
            if leaves:
                doc = put(doc, draw(st.sampled_from(leaves)), draw(scalars))
        elif operation == "delete":
            inner = [p for p in everywhere if p]
            if inner:
                remove(doc, draw(st.sampled_from(inner)))
        else:
            mappings = [p for p in everywhere if isinstance(at(doc, p), dict)]
            if mappings:
                target = at(doc, draw(st.sampled_from(mappings)))
                assert isinstance(target, dict)
                target[draw(keys)] = draw(values)
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=draw(st.booleans()))


@st.composite
def mixed_mutants(draw: st.DrawFn) -> str:
    """A structure mutation, then a text mutation of what it dumped."""
    text = draw(structure_mutants())
    mutation = draw(st.sampled_from(TEXT_MUTATIONS))
    return draw(mutation(text))


mutants = st.one_of(text_mutants(), structure_mutants(), mixed_mutants())


def outcome(text: str) -> PolicySet | PolicyError:
    try:
        return load_policy_text(text, FILE)
    except PolicyError as exc:
        return exc


# -- the properties --------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS, ids=["block", "flow", "anchors"])
def test_the_seeds_are_valid(seed: str) -> None:
    loaded = load_policy_text(seed, FILE)
    kinds = {policy.kind.name for policy in loaded.policies}
    assert kinds == {"wall_time", "step_count", "loop", "token_budget", "rate"}


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    # Shrinking a mutant of a 50-line file takes minutes and leaves it about as long; the
    # failing text is printed whole instead.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)
@given(mutants)
def test_a_mutated_file_loads_or_raises_policy_error(text: str) -> None:
    result = outcome(text)  # any other exception fails the test
    if isinstance(result, PolicyError):
        assert result.problems
        for problem in result.problems:
            assert problem.file == FILE
            assert problem.line >= 1
            assert problem.column >= 1
            assert problem.message.strip()
        assert (result.line, result.column) == (result.problems[0].line, result.problems[0].column)
        # one "file:line:col: path: message" line per problem
        assert str(result).splitlines() == [str(p) for p in result.problems]
        lines = [p.line for p in result.problems]
        assert lines == sorted(lines)
        # each problem shows the line it stands at, with the caret on it or just past its end
        text_lines = LINE_BREAK.split(text)
        for problem in result.problems:
            rendered = problem.render().split("\n")
            assert rendered[0] == str(problem)
            if problem.source_line is None:
                assert problem.message.startswith("the file is empty")
                continue
            assert problem.source_line == text_lines[problem.line - 1]
            assert problem.column <= len(problem.source_line) + 1
            assert len(rendered) == 4
            assert rendered[3].endswith("^")
    else:
        assert isinstance(result, PolicySet)
        names = [policy.name for policy in result.policies]
        assert len(names) == len(set(names))
        for policy in result.policies:
            assert len(policy.kind.limits) >= 1
            assert policy.mode in ("enforce", "audit")
            assert math.isfinite(policy.grace_seconds)
            assert policy.grace_seconds >= 0
            assert policy.warn_at is None or 0 < policy.warn_at < 1
