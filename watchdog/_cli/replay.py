"""``watchdog replay``: recorded runs through a policy set, or two, to see what they would do."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from .._core.errors import PolicyError
from .._core.policies import PolicySet
from .._core.replay import Summary, Verdict, changed, replay, summarize
from .._core.trace import Trace, TraceError, read_traces
from .._files.loading import load_policies

__all__ = ["add_parser"]


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "replay",
        help="replay recorded runs through policies: which would stop which, and where",
        description="Replay recorded runs (JSON-lines traces, from Supervisor(record=...), "
        "WATCHDOG_RECORD or the sidecar's /v1/traces) through a policy set, with the engine "
        "that enforces live, on a simulated clock. Prints, for each run, which policy would "
        "stop it, at which step and why, then a summary. With --diff OLD NEW, prints the "
        "runs whose outcome changes from one policy set to the other. Exits 0, or 1 when a "
        "policy set or a trace cannot be read.",
    )
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="the policy file or directory, then trace files ('-': standard input); with "
        "--diff, trace files only",
    )
    parser.add_argument(
        "--diff",
        nargs=2,
        metavar=("OLD", "NEW"),
        help="compare two policy sets: print the runs whose outcome changes",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON report")
    parser.set_defaults(run=_replay_command)


def _replay_command(args: argparse.Namespace) -> int:
    paths: list[str] = list(args.paths)
    policy_paths = list(args.diff) if args.diff else [paths.pop(0)]
    if not paths:
        print("watchdog replay: expected at least one trace file", file=sys.stderr)
        return 2
    try:
        sets = [load_policies(path) for path in policy_paths]
        traces = _traces(paths)
    except PolicyError as error:
        print("\n".join(problem.render() for problem in error.problems), file=sys.stderr)
        return 1
    except (TraceError, OSError) as error:
        print(f"watchdog replay: {error}", file=sys.stderr)
        return 1
    if args.diff:
        _print_diff(policy_paths, sets, traces, as_json=args.json)
    else:
        _print_replay(policy_paths[0], sets[0], traces, as_json=args.json)
    return 0


def _traces(paths: Sequence[str]) -> list[Trace]:
    found: list[Trace] = []
    for path in paths:
        if path == "-":
            found += read_traces(sys.stdin.read(), "<stdin>")
            continue
        with open(path, encoding="utf-8") as file:
            found += read_traces(file.read(), path)
    return found


def _print_replay(source: str, policies: PolicySet, traces: list[Trace], *, as_json: bool) -> None:
    verdicts = replay(policies, traces)
    summary = summarize(verdicts)
    if as_json:
        report = {
            "policies": source,
            "runs": [v.as_dict() for v in verdicts],
            "summary": summary.as_dict(),
        }
        print(json.dumps(report, indent=2))
        return
    for verdict in verdicts:
        print(_line(verdict))
        for found in verdict.near:
            print(f"  near: {found.policy} ({found.kind}, {found.key}) at step {found.step}")
        for found in verdict.audit:
            print(f"  audit: {found.policy} ({found.kind}, {found.key}) at step {found.step}")
    print(_summary(summary))


def _line(verdict: Verdict) -> str:
    head = f"run {verdict.run_id} (graph {verdict.graph}, recorded {_recorded(verdict)})"
    found = verdict.finding
    if found is None:
        return f"{head}: {verdict.describe()}"
    node = f" in node {found.node}" if found.node else ""
    return f"{head}: {verdict.describe()}{node}: {found.reason}"


def _recorded(verdict: Verdict) -> str:
    end = verdict.recorded
    outcome = str(end.get("outcome", "unknown"))
    if end.get("policy"):
        return f"{outcome} by {end['policy']} at step {end.get('step')}"
    return outcome


def _summary(summary: Summary) -> str:
    counts = ", ".join(
        f"{n} {outcome.replace('_', ' ')}" for outcome, n in summary.outcomes.items()
    )
    lines = [f"{summary.runs} run{'' if summary.runs == 1 else 's'}: {counts or 'none'}"]
    for title, by in (
        ("stopped by", summary.stopped_by),
        ("near limits of", summary.near_by),
        ("audit, would stop", summary.audit_by),
    ):
        if by:
            lines.append(f"  {title}: " + ", ".join(f"{p} {_runs(n)}" for p, n in by.items()))
    return "\n".join(lines)


def _runs(count: int) -> str:
    return f"{count} run{'' if count == 1 else 's'}"


def _print_diff(
    sources: list[str], sets: list[PolicySet], traces: list[Trace], *, as_json: bool
) -> None:
    old, new = (replay(policies, traces) for policies in sets)
    changes = changed(old, new)
    if as_json:
        report = {
            "old": sources[0],
            "new": sources[1],
            "runs": len(traces),
            "changed": [
                {"run_id": a.run_id, "graph": a.graph, "old": a.as_dict(), "new": b.as_dict()}
                for a, b in changes
            ],
        }
        print(json.dumps(report, indent=2))
        return
    for before, after in changes:
        print(
            f"run {before.run_id} (graph {before.graph}): {before.describe()} -> {after.describe()}"
        )
    newly = sum(a.finding is None and b.finding is not None for a, b in changes)
    freed = sum(a.finding is not None and b.finding is None for a, b in changes)
    print(
        f"{len(changes)} of {_runs(len(traces))} change: {newly} newly stopped, {freed} no "
        f"longer stopped, {len(changes) - newly - freed} stopped otherwise"
    )
