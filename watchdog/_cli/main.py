"""The ``watchdog`` command."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from .._core.errors import PolicyError, PolicyProblem
from .._core.policies import Policy
from .._files.loading import check_policies
from . import policy_tests, replay

__all__ = ["main"]


@dataclass(frozen=True, slots=True)
class FileSummary:
    file: str
    policies: tuple[Policy, ...]

    @property
    def kinds(self) -> list[str]:
        return list(dict.fromkeys(p.kind.name for p in self.policies))

    @property
    def graphs(self) -> list[str]:
        """The graph globs the file's policies match; ``*`` for a policy with no graph glob."""
        return list(dict.fromkeys(g for p in self.policies for g in p.match.graphs or ("*",)))

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "policies": len(self.policies),
            "kinds": self.kinds,
            "graphs": self.graphs,
            "audit": [p.name for p in self.policies if p.mode == "audit"],
        }

    def __str__(self) -> str:
        count = len(self.policies)
        noun = "policy" if count == 1 else "policies"
        kinds = f" ({', '.join(self.kinds)})" if self.kinds else ""
        graphs = f"; graphs: {', '.join(self.graphs)}" if self.policies else ""
        scoped = sum(bool(p.match.tags or p.match.metadata) for p in self.policies)
        scoped_note = f"; {scoped} scoped by tags or metadata" if scoped else ""
        audit = sum(p.mode == "audit" for p in self.policies)
        audit_note = f"; {audit} in audit mode" if audit else ""
        return f"{self.file}: ok, {count} {noun}{kinds}{graphs}{scoped_note}{audit_note}"


def check(paths: Sequence[str]) -> tuple[list[FileSummary], list[PolicyProblem]]:
    """Validate each path (a file or a directory); summaries of the good files, and problems.

    A directory's files are checked as one set, but each file without a problem is summed up
    even when another file of the set has one.
    """
    summaries: list[FileSummary] = []
    problems: list[PolicyProblem] = []
    for path in paths:
        policy_set, found = check_policies(path)
        problems.extend(found)
        failed = {problem.file for problem in found}
        for file in policy_set.files:
            if file not in failed:
                mine = tuple(p for p in policy_set.policies if p.file == file)
                summaries.append(FileSummary(file, mine))
    return summaries, problems


def _check_command(args: argparse.Namespace) -> int:
    summaries, problems = check(args.paths)
    if args.json:
        report = {
            "ok": not problems,
            "files": [s.as_dict() for s in summaries],
            "errors": [p.as_dict() for p in problems],
        }
        print(json.dumps(report, indent=2))
    else:
        for summary in summaries:
            print(summary)
        for problem in problems:
            print(problem.render(), file=sys.stderr)
        if problems:
            count = len(problems)
            print(f"{count} error{'s' if count > 1 else ''}", file=sys.stderr)
    return 1 if problems else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="watchdog",
        description="A policy-driven watchdog that cancels runaway LangGraph runs.",
    )
    parser.add_argument(
        "--version",
        action=_Version,
        nargs=0,
        default=argparse.SUPPRESS,
        help="print the version and exit",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check_parser = commands.add_parser(
        "check",
        help="validate policy files",
        description="Validate policy files and directories. Prints each problem as "
        "file:line:col: message; exits 0 when all are valid, 1 when not.",
    )
    check_parser.add_argument("paths", nargs="+", metavar="PATH", help="a policy file or directory")
    check_parser.add_argument("--json", action="store_true", help="print one JSON report")
    check_parser.set_defaults(run=_check_command)

    replay.add_parser(commands)
    policy_tests.add_parser(commands)

    demo_parser = commands.add_parser(
        "demo",
        help="supervise runaway agents and a good one, locally",
        description="Run a set of runaway LangGraph agents (a fake chat model, no network) "
        "under the watchdog, beside one that behaves, and show which policy stopped which.",
    )
    demo_parser.add_argument(
        "--serve-metrics",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on 127.0.0.1:PORT and keep serving afterwards",
    )
    demo_parser.add_argument(
        "--json", action="store_true", help="print the watchdog's events as JSON lines"
    )
    demo_parser.set_defaults(run=_demo_command)

    serve_parser = commands.add_parser(
        "serve",
        help="run the sidecar: policies, events, metrics and cancels for a pod's workers",
        description="Serve policies to the agent workers of a pod, take their events, expose "
        "the pod's /metrics and deliver cancels. Needs langgraph-watchdog[sidecar].",
    )
    # Each help ends with the default, written by argparse from the option's own default.
    serve_parser.add_argument(
        "--policies",
        required=True,
        metavar="PATH",
        help="the policy file, or a directory of them, to serve (required)",
    )
    serve_parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on (default: %(default)s, loopback only)",
    )
    serve_parser.add_argument(
        "--port",
        type=int,
        default=9464,
        help="the port to listen on; 0 takes a free one (default: %(default)s)",
    )
    serve_parser.add_argument(
        "--token-file",
        metavar="FILE",
        help="a file holding the bearer token of the /v1/ endpoints (default: the token in "
        "the WATCHDOG_SIDECAR_TOKEN environment variable; one of the two is required)",
    )
    serve_parser.add_argument(
        "--poll-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="seconds between checks of the policy files for changes (default: %(default)g)",
    )
    serve_parser.add_argument(
        "--worker-timeout",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="seconds of silence after which a worker's runs count as lost (default: %(default)g)",
    )
    serve_parser.add_argument(
        "--read-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="seconds a client has to send a request's headers, and again its body "
        "(default: %(default)g)",
    )
    serve_parser.add_argument(
        "--heartbeat",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="with Redis (WATCHDOG_REDIS_URL): seconds between listings of the pod's runs in "
        "the fleet's registry; a pod silent for five is dropped (default: %(default)g)",
    )
    serve_parser.add_argument(
        "--docs",
        action="store_true",
        help="serve the API's pages at /docs and /redoc (default: off)",
    )
    serve_parser.set_defaults(run=_serve_command)
    return parser


class _Version(argparse.Action):
    """``--version``: the installed distribution's version, looked up only when asked for
    (importlib.metadata would add a third to the start-up time of every command)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        import importlib.metadata  # noqa: PLC0415

        try:
            version = importlib.metadata.version("langgraph-watchdog")
        except importlib.metadata.PackageNotFoundError:  # a source tree never installed
            version = "(not installed)"
        print(f"{parser.prog} {version}")
        parser.exit()


def _serve_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the serve options, in one line; None when nothing is."""
    if not 0 <= args.port <= 65535:
        return f"--port must be from 0 to 65535, got {args.port}"
    for option in ("poll_interval", "worker_timeout", "read_timeout", "heartbeat"):
        value = getattr(args, option)
        if not (math.isfinite(value) and value > 0):
            return f"--{option.replace('_', '-')} must be a number of seconds above 0, got {value}"
    return None


def _serve_command(args: argparse.Namespace) -> int:
    if problem := _serve_problem(args):
        print(f"watchdog serve: {problem}", file=sys.stderr)
        return 2
    try:
        from .._pod.sidecar import StartError, serve  # noqa: PLC0415 - the sidecar extra
    except ImportError as error:
        print(
            f"watchdog serve needs the sidecar extra: pip install 'langgraph-watchdog[sidecar]' "
            f"({error})",
            file=sys.stderr,
        )
        return 2
    try:
        return serve(
            args.policies,
            host=args.host,
            port=args.port,
            token_file=args.token_file,
            poll_interval=args.poll_interval,
            worker_timeout=args.worker_timeout,
            read_timeout=args.read_timeout,
            heartbeat=args.heartbeat,
            docs=args.docs,
        )
    except StartError as error:
        print(f"watchdog serve: {error}", file=sys.stderr)
        return 2
    except PolicyError as error:
        print("\n".join(problem.render() for problem in error.problems), file=sys.stderr)
        return 1


def _demo_command(args: argparse.Namespace) -> int:
    from .demo import run_demo  # noqa: PLC0415 - langgraph loads only when needed

    return run_demo(serve_metrics=args.serve_metrics, as_json=args.json)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    status: int = args.run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
