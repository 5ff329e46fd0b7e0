"""pytest plugin for the transparency suite, loaded into LangGraph's own test run.

It is loaded as the top-level module ``watchdog_transparency`` (``-p watchdog_transparency``
with this folder on ``PYTHONPATH``), never as ``tests.transparency...``: LangGraph's tests are
a package named ``tests`` too, and importing ours first would shadow theirs.

Two jobs, each behind an option:

- ``--watchdog-attach``: every graph LangGraph's tests compile (``StateGraph.compile``, the
  functional API's ``entrypoint``) comes back attached to one ``Supervisor`` under the
  permissive policies beside this file. Subgraphs are attached too and added to their parents
  as users add them: supervision is never stripped off a graph.
- ``--watchdog-outcomes PATH``: the outcome of every test (and every collection error) is
  written to ``PATH`` as JSON, by the controller when pytest-xdist runs the tests.
"""

from __future__ import annotations

import functools
import json
import os
from collections import Counter
from collections.abc import Callable, Generator, MutableMapping
from contextlib import ExitStack
from contextvars import ContextVar
from pathlib import Path
from typing import Any, NoReturn

import pytest
import structlog
from langgraph.func import entrypoint
from langgraph.graph.state import StateGraph
from prometheus_client import CollectorRegistry

POLICY_FILE = Path(__file__).with_name("permissive.yaml")
GRAPH_NAME = "transparency"  # one name for every graph: a bounded metric label

# Watchdog events that never happen under policies that never fire: a bug of the watchdog's
# own (it logs those and lets the run go on, so the test can still pass), or a policy firing.
# A cancel by the caller (a test cancelling its task) also drains and cancels the run, with
# no policy: that is the watchdog working, and is not noted.
BUG_EVENTS = frozenset({"watchdog.internal_error", "watchdog.cleanup_abandoned"})
POLICY_EVENTS = frozenset(
    {
        "watchdog.violation",
        "watchdog.near_limit",
        "watchdog.drain_requested",
        "watchdog.hard_cancel",
        "watchdog.run_cancelled",
    }
)
NOTE_PROPERTY = "watchdog_transparency"  # a test report's user property: the Attacher's note
MESSAGE_LIMIT = 500

# Set while ``attach()`` runs, so a compile it does itself is not attached again.
_attaching: ContextVar[bool] = ContextVar("watchdog_transparency_attaching", default=False)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("watchdog-transparency", "langgraph-watchdog transparency suite")
    group.addoption(
        "--watchdog-attach",
        action="store_true",
        default=False,
        help="attach every compiled graph to a watchdog Supervisor with permissive policies",
    )
    group.addoption(
        "--watchdog-outcomes",
        metavar="PATH",
        default=None,
        help="write the outcome of every test to PATH as JSON",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("watchdog_attach"):
        attacher = Attacher()
        attacher.install()
        config.pluginmanager.register(attacher, "watchdog-transparency-attacher")
    outcomes = config.getoption("watchdog_outcomes")
    if outcomes and not hasattr(config, "workerinput"):  # the controller, or a run without -n
        config.pluginmanager.register(
            OutcomeRecorder(Path(outcomes)), "watchdog-transparency-outcomes"
        )


def supervised(build: Callable[..., Any], attach: Callable[[Any], Any]) -> Callable[..., Any]:
    """``build`` (a method that returns a compiled graph), returning the graph attached."""

    @functools.wraps(build)
    def build_supervised(*args: Any, **kwargs: Any) -> Any:
        graph = build(*args, **kwargs)
        if _attaching.get():
            return graph
        token = _attaching.set(True)
        try:
            return attach(graph)
        finally:
            _attaching.reset(token)

    return build_supervised


class Attacher:
    """Patches LangGraph's compile paths for the session, and takes notes for each test.

    The patches go on the classes as pytest configures, before any test module is imported,
    and come off at the end. The watchdog's events are silenced (it would otherwise write a
    JSON line to stderr per run) but listened to: each test's report carries a note of how
    many graphs it attached and supervised runs it started, and of any notable event, so the
    outcome file shows a test that passed without the watchdog ever running, or one that
    passed while the watchdog logged an internal error.
    """

    def __init__(self) -> None:
        self._exit = ExitStack()
        self._events: list[dict[str, Any]] = []
        self._graphs = 0

    def install(self) -> None:
        # Imported here, so that a bare run never imports the watchdog.
        from watchdog import Supervisor  # noqa: PLC0415
        from watchdog.testing import capture_events  # noqa: PLC0415

        structlog.configure(processors=[drop_event])
        self._exit.callback(structlog.reset_defaults)
        self._events = self._exit.enter_context(capture_events())

        supervisor = Supervisor.from_path(POLICY_FILE, registry=CollectorRegistry())
        self._exit.callback(supervisor.close)

        def attach(graph: Any) -> Any:
            self._graphs += 1
            return supervisor.attach(graph, name=GRAPH_NAME)

        compile_paths: tuple[tuple[type[Any], str], ...] = (
            (StateGraph, "compile"),
            (entrypoint, "__call__"),
        )
        for owner, attribute in compile_paths:
            original = owner.__dict__[attribute]
            setattr(owner, attribute, supervised(original, attach))
            self._exit.callback(setattr, owner, attribute, original)

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self._exit.close()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        note = self._take_note()
        if note:
            report.user_properties.append((NOTE_PROPERTY, note))
        return report

    def _take_note(self) -> dict[str, Any]:
        """What happened since the last note: graphs, runs and notable events."""
        taken = len(self._events)  # the listener may append from another thread meanwhile
        events = self._events[:taken]
        del self._events[:taken]
        graphs, self._graphs = self._graphs, 0
        names = [str(event.get("event")) for event in events]
        note: dict[str, Any] = {"graphs": graphs, "runs": names.count("watchdog.run_started")}
        notable = Counter(str(event["event"]) for event in events if is_notable(event))
        if notable:
            note["events"] = dict(notable)
        errors = [e for e in events if e.get("event") == "watchdog.internal_error"]
        if errors:
            note["internal_error"] = str(errors[0].get("error", ""))[:MESSAGE_LIMIT]
        return note if any(note.values()) else {}


class OutcomeRecorder:
    """Collects one outcome per test id from the reports, and writes them when pytest ends.

    Outcomes: ``passed``, ``failed`` (a failure in setup, call or teardown, or a crashed
    worker), ``skipped``, ``xfailed``, ``xpassed``. ``message`` is the first line of the
    error (or the skip reason); ``watchdog`` sums the attached run's notes over the phases.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tests: dict[str, dict[str, Any]] = {}
        self.collection_errors: dict[str, str] = {}

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.collection_errors[report.nodeid] = first_line(report.longrepr)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        record = self.tests.setdefault(report.nodeid, {"outcome": "passed"})
        for name, note in report.user_properties:
            if name == NOTE_PROPERTY and isinstance(note, dict):
                merge_note(record.setdefault("watchdog", {}), note)
        if record["outcome"] == "failed":
            return  # the first failure of a test is its cause
        expected_failure = hasattr(report, "wasxfail")
        if report.failed:
            record["outcome"] = "failed"
            where = "" if report.when == "call" else f"[{report.when}] "
            record["message"] = where + first_line(report.longrepr)
        elif report.skipped:
            record["outcome"] = "xfailed" if expected_failure else "skipped"
            record["message"] = first_line(report.longrepr)
        elif report.when == "call" and expected_failure:
            record["outcome"] = "xpassed"

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(
            json.dumps(
                {"tests": self.tests, "collection_errors": self.collection_errors},
                indent=1,
                sort_keys=True,
            ),
            encoding="utf-8",
        )
        os.replace(partial, self.path)


def is_notable(event: dict[str, Any]) -> bool:
    name = event.get("event")
    return name in BUG_EVENTS or (name in POLICY_EVENTS and event.get("policy") is not None)


def merge_note(total: dict[str, Any], note: dict[str, Any]) -> None:
    """Add one phase's note to a test's total: counts add up, the first error stays."""
    for key in ("graphs", "runs"):
        total[key] = total.get(key, 0) + note.get(key, 0)
    for event, count in note.get("events", {}).items():
        events = total.setdefault("events", {})
        events[event] = events.get(event, 0) + count
    if "internal_error" in note:
        total.setdefault("internal_error", note["internal_error"])


def drop_event(logger: object, method: str, event: MutableMapping[str, Any]) -> NoReturn:
    """A structlog processor that drops every event: the listener has them already."""
    raise structlog.DropEvent


def first_line(longrepr: object) -> str:
    """The line that names a failure (or a skip's reason), from a report's ``longrepr``."""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # a skip: (path, line, reason)
        text = str(longrepr[2])
    else:
        crash = getattr(longrepr, "reprcrash", None)
        text = str(getattr(crash, "message", None) or longrepr or "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else "")[:MESSAGE_LIMIT]
