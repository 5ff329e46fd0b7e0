"""The transparency suite: LangGraph's own tests, bare and with every graph supervised.

Under policies that never fire, every LangGraph test that passes bare must pass with the
watchdog attached, but for a short list kept in ``known_differences.toml`` with a reason for
each. This module fetches the tests of exactly the installed LangGraph (from its
source distribution on PyPI, once, into a git-ignored cache), runs them twice with
pytest-xdist, and compares the outcomes test by test.

LangGraph's tests run with their own pytest configuration, from their own directory, so this
repository's ``conftest.py`` and pytest settings never apply to them. Tests that need Docker
services (Postgres, Redis, a LangGraph dev server) are skipped by LangGraph's own switch,
``NO_DOCKER=true``; only tests that pass bare are compared.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
DEFAULT_CACHE = REPO_ROOT / ".transparency"
KNOWN_DIFFERENCES = HERE / "known_differences.toml"
PLUGIN = "watchdog_transparency"  # HERE/watchdog_transparency.py, imported from PYTHONPATH

# What LangGraph's tests import or need beyond this project's own test dependencies: module
# to look for, and the distribution that provides it (pyproject's `transparency` extra).
REQUIRED_MODULES = {
    "xdist": "pytest-xdist",
    "pytest_timeout": "pytest-timeout",
    "pytest_mock": "pytest-mock",
    "syrupy": "syrupy",
    "redis": "redis",
    "psycopg": "psycopg[binary]",
    "psycopg_pool": "psycopg-pool",
    "langgraph.checkpoint.postgres": "langgraph-checkpoint-postgres",
    "langgraph.checkpoint.sqlite": "langgraph-checkpoint-sqlite",
    "Crypto": "pycryptodome",
}

# pytest's exit codes that mean the run itself broke (interrupted, internal error, usage
# error, no tests collected), as opposed to 0 (all passed) and 1 (some failed).
BROKEN_RUN_CODES = frozenset({2, 3, 4, 5})

# A run that hangs as a whole is killed after --wall seconds and tried once more: LangGraph's
# suite takes two or three minutes here, and CI gives the whole job 90.
ATTEMPTS = 2

EXIT_OK = 0
EXIT_DIFFERENCES = 1
EXIT_ERROR = 2


class SuiteError(Exception):
    """A problem that stops the suite before it can compare anything (exit status 2)."""


@dataclass(frozen=True)
class Outcomes:
    """One run of LangGraph's tests: each test id's outcome, and the modules that failed to
    import. ``selection`` is the arguments that chose the tests; runs compare test by test
    only when their selections are equal."""

    langgraph: str
    mode: str
    selection: list[str]
    seconds: float
    tests: dict[str, dict[str, Any]]
    collection_errors: dict[str, str]

    def passing(self) -> set[str]:
        return {test for test, record in self.tests.items() if record["outcome"] == "passed"}

    def counts(self) -> Counter[str]:
        return Counter(record["outcome"] for record in self.tests.values())

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1, sort_keys=True), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Outcomes:
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Difference:
    """A test that passes bare and does not pass attached."""

    test: str
    cause: str
    known_reason: str | None = None


@dataclass
class Comparison:
    """The verdict: of ``compared`` bare-passing tests, ``passing`` pass attached."""

    compared: int = 0
    passing: int = 0
    differences: list[Difference] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)  # known differences that now pass
    unmatched: list[str] = field(default_factory=list)  # known differences naming no test

    @property
    def unexpected(self) -> list[Difference]:
        return [d for d in self.differences if d.known_reason is None]

    @property
    def known(self) -> list[Difference]:
        return [d for d in self.differences if d.known_reason is not None]


# --- LangGraph's tests ------------------------------------------------------------------------


def langgraph_version() -> str:
    return importlib.metadata.version("langgraph")


def missing_dependencies() -> list[str]:
    """The distributions LangGraph's tests need that this environment lacks."""
    missing = []
    for module, distribution in REQUIRED_MODULES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            missing.append(distribution)
    return missing


def langgraph_tests(cache: Path, version: str) -> Path:
    """The folder holding LangGraph ``version``'s ``pyproject.toml`` and ``tests/``.

    Taken from the sdist on PyPI (the wheel has no tests), downloaded with pip once and kept
    in ``cache`` with its extracted tests; later runs reuse both.
    """
    root = cache / f"langgraph-{version}"
    if (root / "pyproject.toml").is_file() and (root / "tests" / "conftest.py").is_file():
        return root
    archive = cache / "sdist" / f"langgraph-{version}.tar.gz"
    if not archive.is_file():
        print(f"transparency: downloading the langgraph {version} sdist with pip", flush=True)
        download = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"langgraph=={version}",
                "--dest",
                str(archive.parent),
            ],
            check=False,
        )
        if download.returncode != 0 or not archive.is_file():
            raise SuiteError(f"could not download the langgraph {version} sdist with pip")
    extract_tests(archive, root, prefix=f"langgraph-{version}/")
    return root


def extract_tests(archive: Path, root: Path, *, prefix: str) -> None:
    """Extract ``pyproject.toml`` and ``tests/`` from the sdist into ``root``, all or nothing.

    Only those: the sdist's ``langgraph/`` package must not shadow the installed one.
    """
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=root.parent))
    try:
        with tarfile.open(archive, "r:gz") as sdist:
            members = []
            for member in sdist.getmembers():
                relative = member.name.removeprefix(prefix)
                if member.name.startswith(prefix) and (
                    relative == "pyproject.toml" or relative.startswith("tests/")
                ):
                    if not (member.isfile() or member.isdir()) or ".." in Path(relative).parts:
                        raise SuiteError(f"{archive.name}: unexpected member {member.name}")
                    member.name = relative
                    members.append(member)
            if hasattr(tarfile, "data_filter"):
                sdist.extractall(staging, members=members, filter="data")
            else:  # Python before 3.11.4: the members were checked above
                sdist.extractall(staging, members=members)
        if not (staging / "tests" / "conftest.py").is_file():
            raise SuiteError(f"{archive.name} holds no tests/conftest.py")
        shutil.rmtree(root, ignore_errors=True)
        staging.rename(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def run_tests(
    root: Path,
    *,
    mode: str,
    cache: Path,
    selection: list[str],
    workers: int,
    timeout: int,
    wall: float,
) -> Outcomes:
    """Run LangGraph's tests in ``root`` (bare, or attached) and return their outcomes."""
    outcomes_file = cache / f"{mode}.outcomes.json"
    log = cache / f"{mode}.log"
    outcomes_file.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-c",
        str(root / "pyproject.toml"),
        "--rootdir",
        str(root),
        "-o",
        f"addopts={shlex.join(addopts(root))}",
        "--tb=short",
        "-p",
        "no:cacheprovider",
        "-p",
        PLUGIN,
        "-n",
        str(workers),
        "--dist",
        "worksteal",
        "--timeout",
        str(timeout),
        # On a timeout, dump every thread's stack and end the worker (xdist starts another):
        # the signal method cannot break a test blocked outside Python code.
        "--timeout-method",
        "thread",
        "--continue-on-collection-errors",
        "--watchdog-outcomes",
        str(outcomes_file),
        "-q",
    ]
    if mode == "attached":
        command.append("--watchdog-attach")
    command += selection
    if not any(arg == "tests" or arg.startswith("tests/") for arg in selection):
        command.append("tests")  # all of them, unless the arguments name some
    env = dict(os.environ)
    env["NO_DOCKER"] = "true"  # LangGraph's switch: no Postgres, Redis or dev server here
    env["PYTHONPATH"] = os.pathsep.join(
        [str(HERE), str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    for attempt in range(1, ATTEMPTS + 1):
        print(f"{mode}: running LangGraph's tests with -n {workers} (log: {log})", flush=True)
        started = time.monotonic()
        try:
            returncode = run_bounded(command, cwd=root, env=env, log=log, wall=wall)
            break
        except RunHungError as error:
            print(f"{mode}: {error}; the log ends with:", flush=True)
            print(tail(log), flush=True)
            if attempt == ATTEMPTS:
                raise SuiteError(f"{mode}: {error} in each of {ATTEMPTS} attempts") from None
    seconds = time.monotonic() - started
    summary = last_line(log)
    print(f"{mode}: {summary} [{seconds:.0f} s wall]", flush=True)
    if returncode in BROKEN_RUN_CODES or not outcomes_file.is_file():
        print(tail(log), flush=True)
        raise SuiteError(f"{mode}: pytest exited with status {returncode}; see {log}")
    recorded = json.loads(outcomes_file.read_text(encoding="utf-8"))
    outcomes = Outcomes(
        langgraph=langgraph_version(),
        mode=mode,
        selection=selection,
        seconds=round(seconds, 1),
        tests=recorded["tests"],
        collection_errors=recorded["collection_errors"],
    )
    outcomes.save(cache / f"{mode}.json")
    outcomes_file.unlink()
    return outcomes


class RunHungError(Exception):
    """A run of LangGraph's tests went past its wall-clock bound and was killed."""


def run_bounded(
    command: list[str], *, cwd: Path, env: dict[str, str], log: Path, wall: float
) -> int:
    """Run ``command`` with its output in ``log``; kill it and all it started after ``wall``
    seconds.

    pytest-timeout bounds each test, but not a worker that never exits after its last test
    (a thread a test left behind) or an xdist scheduler that stops handing out work: either
    would hold the whole run until CI's own limit, with nothing in its output to say why.
    """
    with log.open("w", encoding="utf-8") as output:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the xdist workers die with it
        )
        try:
            return process.wait(timeout=wall)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            msg = f"still running after {wall:g} s, killed"
            raise RunHungError(msg) from None


def tail(log: Path, lines: int = 40) -> str:
    text = log.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(text[-lines:])


def addopts(root: Path) -> list[str]:
    """LangGraph's pytest ``addopts`` without ``--full-trace``.

    Full traces only change how failures print, but they print pytest's own frames too: with
    a few hundred failures the log grows to tens of megabytes and takes minutes to write.
    """
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    options = config.get("tool", {}).get("pytest", {}).get("ini_options", {}).get("addopts", [])
    split = shlex.split(options) if isinstance(options, str) else list(options)
    return [option for option in split if option not in {"--full-trace", "--fulltrace"}]


def last_line(log: Path) -> str:
    lines = [line.strip(" =") for line in log.read_text(encoding="utf-8").splitlines()]
    return next((line for line in reversed(lines) if line), "(no output)")


# --- Known differences ------------------------------------------------------------------------


def load_known_differences(path: Path) -> dict[str, str]:
    """Test id (or test id without its ``[parameters]``) to the reason it differs."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise SuiteError(f"{path.name}: {error}") from error
    unknown = set(data) - {"difference"}
    if unknown:
        raise SuiteError(f"{path.name}: unknown top-level keys {sorted(unknown)}")
    known: dict[str, str] = {}
    entries: Any = data.get("difference", [])
    if not isinstance(entries, list):
        raise SuiteError(f"{path.name}: 'difference' must be an array of tables")
    for number, entry in enumerate(entries, 1):
        where = f"{path.name}: difference #{number}"
        if not isinstance(entry, dict) or set(entry) != {"test", "reason"}:
            raise SuiteError(f"{where}: needs exactly the keys 'test' and 'reason'")
        test, reason = entry["test"], entry["reason"]
        if not (isinstance(test, str) and test and isinstance(reason, str) and reason.strip()):
            raise SuiteError(f"{where}: 'test' and 'reason' must be non-empty strings")
        if test in known:
            raise SuiteError(f"{where}: {test} is listed twice")
        known[test] = reason.strip()
    return known


def known_entry(test: str, known: dict[str, str]) -> str | None:
    """The entry of ``known`` that covers ``test``: its id, or its id without parameters."""
    if test in known:
        return test
    function = test.split("[", 1)[0]
    return function if function in known else None


# --- Comparing --------------------------------------------------------------------------------


def compare(bare: Outcomes, attached: Outcomes, known: dict[str, str]) -> Comparison:
    """Every test that passed bare, checked attached.

    When both runs chose their tests alike, a bare-passing test that did not run attached is
    a difference; otherwise only the tests both runs ran are compared (plus the modules that
    failed to import attached).
    """
    same_selection = bare.selection == attached.selection
    failed_modules = {
        nodeid.split("::", 1)[0]: message for nodeid, message in attached.collection_errors.items()
    }
    comparison = Comparison()
    covered: dict[str, list[bool]] = defaultdict(list)  # known entry -> passed attached?
    for test in sorted(bare.passing()):
        record = attached.tests.get(test)
        module = test.split("::", 1)[0]
        if record is not None:
            passed = record["outcome"] == "passed"
            cause = f"{record['outcome']}: {record.get('message', '')}".rstrip(": ")
        elif module in failed_modules:
            passed, cause = False, f"collection error: {failed_modules[module]}"
        elif same_selection:
            passed, cause = False, "did not run attached"
        else:
            continue  # not chosen by the attached run's selection
        comparison.compared += 1
        entry = known_entry(test, known)
        if entry is not None:
            covered[entry].append(passed)
        if passed:
            comparison.passing += 1
        else:
            reason = known[entry] if entry is not None else None
            comparison.differences.append(Difference(test, cause, reason))
    comparison.stale = sorted(entry for entry, results in covered.items() if all(results))
    if same_selection and not bare.selection:
        comparison.unmatched = sorted(set(known) - set(covered))
    return comparison


def cause_key(cause: str) -> str:
    """A failure's cause with the parts that differ run to run (addresses, ids) masked."""
    cause = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<uuid>", cause)
    cause = re.sub(r"\b(?:0x)?[0-9a-f]*[0-9][0-9a-f]*\b", _mask_hex, cause)
    return cause[:300]


def _mask_hex(match: re.Match[str]) -> str:
    """An address or the tail of an id (8 or more hex digits) as ``…``; shorter runs stay."""
    return "…" if len(match.group()) >= 8 else match.group()


def grouped(differences: Sequence[Difference]) -> list[tuple[str, list[str]]]:
    """Differences grouped by cause, the most common cause first."""
    groups: dict[str, list[str]] = defaultdict(list)
    for difference in differences:
        groups[cause_key(difference.cause)].append(difference.test)
    return sorted(groups.items(), key=lambda group: (-len(group[1]), group[0]))


def watchdog_events(attached: Outcomes, tests: set[str]) -> list[tuple[str, list[str]]]:
    """Tests among ``tests`` during which the watchdog logged notable events (an internal
    error, a violation, ...), grouped by the first internal error or else the event counts."""
    groups: dict[str, list[str]] = defaultdict(list)
    for test in sorted(tests):
        note = attached.tests.get(test, {}).get("watchdog", {})
        if "internal_error" in note:
            groups[cause_key(f"internal error: {note['internal_error']}")].append(test)
        elif "events" in note:
            counts = ", ".join(f"{name}={n}" for name, n in sorted(note["events"].items()))
            groups[f"events: {counts}"].append(test)
    return sorted(groups.items(), key=lambda group: (-len(group[1]), group[0]))


def supervision(attached: Outcomes, tests: set[str]) -> str:
    """How much supervising the attached run did over ``tests``: the proof it was attached."""
    notes = [attached.tests.get(test, {}).get("watchdog", {}) for test in tests]
    graphs = sum(note.get("graphs", 0) for note in notes)
    runs = sum(note.get("runs", 0) for note in notes)
    supervised = sum(1 for note in notes if note.get("runs", 0))
    return (
        f"attached: {graphs} graphs attached and {runs} supervised runs started by the "
        f"{len(tests)} bare-passing tests; {supervised} of them ran a supervised graph"
    )


def render(comparison: Comparison, attached: Outcomes, bare_passing: set[str]) -> str:
    lines = [
        supervision(attached, bare_passing),
        f"attached: {comparison.passing} of {comparison.compared} bare-passing tests pass",
    ]
    if comparison.known:
        lines.append(f"known differences still failing: {len(comparison.known)}")
    unexpected = comparison.unexpected
    if unexpected:
        lines.append(
            f"\n{len(unexpected)} bare-passing tests fail attached and are not listed in "
            f"tests/transparency/{KNOWN_DIFFERENCES.name}, by cause:"
        )
        for cause, tests in grouped(unexpected):
            lines.append(f"\n[{len(tests)}] {cause}")
            lines.extend(f"    {test}" for test in tests)
    events = watchdog_events(attached, bare_passing)
    if events:
        count = sum(len(tests) for _, tests in events)
        lines.append(f"\nwarning: the watchdog logged notable events in {count} tests:")
        for cause, tests in events:
            lines.append(f"\n[{len(tests)}] {cause}")
            lines.extend(f"    {test}" for test in tests)
    if comparison.stale:
        lines.append(
            f"\nwarning: {len(comparison.stale)} known differences now pass attached; "
            f"remove them from {KNOWN_DIFFERENCES.name}:"
        )
        lines.extend(f"    {entry}" for entry in comparison.stale)
    if comparison.unmatched:
        lines.append(
            f"\nwarning: {len(comparison.unmatched)} known differences name no bare-passing "
            "test (renamed, removed, or failing bare):"
        )
        lines.extend(f"    {entry}" for entry in comparison.unmatched)
    return "\n".join(lines)


# --- Command line -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.transparency",
        description=(
            "Run LangGraph's own tests bare and with every compiled graph attached to a "
            "watchdog Supervisor under policies that never fire, and check that every test "
            "that passes bare passes attached, except the known differences."
        ),
        epilog="Arguments after -- go to pytest as they are, e.g. -- tests/test_pregel.py -x",
    )
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--bare-only", action="store_true", help="run the tests bare, and stop")
    modes.add_argument(
        "--attached-only",
        action="store_true",
        help="run the tests attached and compare with the last bare run's outcomes",
    )
    parser.add_argument("-k", dest="keyword", metavar="EXPR", help="pytest's -k, both runs")
    parser.add_argument("-n", "--workers", type=int, default=2, help="pytest-xdist workers")
    parser.add_argument(
        "--timeout", type=int, default=120, help="seconds one test may take (pytest-timeout)"
    )
    parser.add_argument(
        "--wall",
        type=float,
        default=900,
        help="seconds a whole run may take before it is killed and tried once more",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE,
        help="where the sdist, LangGraph's tests, logs and outcomes are kept",
    )
    parser.add_argument(
        "--report", type=Path, help="also write the comparison to this file (kept in full)"
    )
    parser.add_argument("pytest_args", nargs="*", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        return run(options)
    except SuiteError as error:
        print(f"transparency: error: {error}", file=sys.stderr)
        return EXIT_ERROR


def run(options: argparse.Namespace) -> int:
    missing = missing_dependencies()
    if missing:
        raise SuiteError(
            "LangGraph's tests need packages this environment lacks: "
            f"{', '.join(missing)} (pip install -e '.[transparency]')"
        )
    known = load_known_differences(KNOWN_DIFFERENCES)
    cache: Path = options.cache_dir.resolve()
    version = langgraph_version()
    root = langgraph_tests(cache, version)
    print(f"transparency: LangGraph {version}'s tests in {root}", flush=True)
    selection = (["-k", options.keyword] if options.keyword else []) + options.pytest_args

    def run_mode(mode: str) -> Outcomes:
        return run_tests(
            root,
            mode=mode,
            cache=cache,
            selection=selection,
            workers=options.workers,
            timeout=options.timeout,
            wall=options.wall,
        )

    if options.attached_only:
        bare_file = cache / "bare.json"
        if not bare_file.is_file():
            raise SuiteError(f"no bare outcomes at {bare_file}: run without --attached-only")
        bare = Outcomes.load(bare_file)
        if bare.langgraph != version:
            raise SuiteError(f"{bare_file} is for LangGraph {bare.langgraph}, not {version}")
    else:
        bare = run_mode("bare")
    counts = bare.counts()
    print(
        f"bare: {counts['passed']} of {len(bare.tests)} tests pass "
        f"({counts['failed']} fail, {counts['skipped']} skipped, "
        f"{len(bare.collection_errors)} collection errors) in {bare.seconds:.0f} s",
        flush=True,
    )
    if options.bare_only:
        return EXIT_OK

    attached = run_mode("attached")
    if not any(record.get("watchdog", {}).get("graphs") for record in attached.tests.values()):
        message = "attached: no graph was attached, so the plugin did not take effect"
        if not selection:
            raise SuiteError(message)
        print(f"warning: {message} (or the chosen tests compile no graph)")
    comparison = compare(bare, attached, known)
    text = render(comparison, attached, bare.passing())
    print(text)
    if options.report:
        options.report.write_text(text + "\n", encoding="utf-8")
    return EXIT_DIFFERENCES if comparison.unexpected else EXIT_OK
