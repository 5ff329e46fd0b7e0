"""The example under deploy/agent-server/, served by a real ``langgraph dev``.

The Agent Server pins its own dependencies, so it runs from a virtualenv of its own
(``.venv-agent-server``, which ``.ci/run`` makes; ``WATCHDOG_LANGGRAPH`` names another
``langgraph`` command). The tests drive it with ``langgraph_sdk``'s client, over loopback.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langgraph_sdk import get_sync_client
from langgraph_sdk.client import SyncLangGraphClient
from prometheus_client.parser import text_string_to_metric_families

from tests.processes import answers, call, free_port, terminate, wait_for

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "deploy" / "agent-server"
LANGGRAPH = Path(
    os.environ.get("WATCHDOG_LANGGRAPH") or ROOT / ".venv-agent-server" / "bin" / "langgraph"
)
TOKEN = "server-token"
RELOADS = ("watchdog_policy_reloads_total", (("result", "ok"),))
NO_EXTRAS = ("--no-browser", "--no-reload")  # no browser tab, no file watcher

if not LANGGRAPH.exists():
    if os.environ.get("CI") == "true":
        pytest.fail(f"{LANGGRAPH} is missing: .ci/run installs langgraph-cli[inmem] there")
    pytest.skip(
        "langgraph-cli[inmem] is not installed (.ci/run installs it in .venv-agent-server)",
        allow_module_level=True,
    )


class Server:
    """``langgraph dev`` on the example, copied so that the tests may edit its policies."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "WATCHDOG_POLICIES": str(folder / "policies"),
            "WATCHDOG_TOKEN": TOKEN,
            "WATCHDOG_POLL_INTERVAL": "0.05",
            "LANGGRAPH_CLI_NO_ANALYTICS": "1",
            "LANGSMITH_TRACING": "false",
        }
        self.log = (folder / "server.log").open("w")
        self.process = subprocess.Popen(
            [str(LANGGRAPH), "dev", "--host", "127.0.0.1", "--port", str(self.port), *NO_EXTRAS],
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.client: SyncLangGraphClient = get_sync_client(url=self.url)

    def wait_until_up(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not answers(self.url + "/ok"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"langgraph dev did not start:\n{self.output()}")
            time.sleep(0.1)

    def output(self) -> str:
        self.log.flush()
        return (self.folder / "server.log").read_text(errors="replace")[-5000:]

    def request(
        self, method: str, path: str, body: Any = None, token: str | None = TOKEN
    ) -> tuple[int, Any]:
        return call(self.url + path, method, body, token)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as response:
            text = response.read().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name.startswith("watchdog_")
        }

    def ask(self, question: str, **options: Any) -> tuple[str, dict[str, Any], Any]:
        """One run on a new thread, to its end: its thread id, the run, and what it returned."""
        thread_id = self.client.threads.create()["thread_id"]
        return (thread_id, *self.ask_on(thread_id, question, **options))

    def ask_on(self, thread_id: str, question: str, **options: Any) -> tuple[dict[str, Any], Any]:
        run = self.client.runs.create(thread_id, "agent", input=_user(question), **options)
        output = self.client.runs.join(thread_id, run["run_id"])
        return dict(self.client.runs.get(thread_id, run["run_id"])), output

    def stop(self) -> None:
        self.client.close()
        terminate(self.process)
        self.log.close()

    @contextlib.contextmanager
    def extra_policies(self, name: str, text: str) -> Iterator[None]:
        """A policy file added to the server's for the block, each change waited for."""
        extra = self.folder / "policies" / name
        before = self.metrics().get(RELOADS, 0.0)
        extra.write_text(text)
        try:
            wait_for("the reload", lambda: self.metrics().get(RELOADS, 0.0) > before)
            yield
        finally:
            extra.unlink()
        wait_for("the reload back", lambda: self.metrics().get(RELOADS, 0.0) > before + 1)


def _user(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("agent-server") / "example"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns(".env"))
    served = Server(folder)
    try:
        served.wait_until_up()
        yield served
    finally:
        served.stop()


def _error(output: Any) -> dict[str, Any]:
    assert isinstance(output, dict), output
    assert "__error__" in output, output
    error: dict[str, Any] = output["__error__"]
    return error


def test_a_good_run_completes(server: Server) -> None:
    _, run, output = server.ask("weather Lima")
    assert run["status"] == "success"
    assert output["messages"][-1]["content"] == "Here is the weather for Lima."


@pytest.mark.parametrize(
    ("scenario", "policy", "kind"),
    [
        ("repeat", "loop", "loop"),
        ("wander", "step-count", "step_count"),
        ("spend", "token-budget", "token_budget"),
        ("hang", "wall-time", "wall_time"),
    ],
)
def test_a_runaway_is_stopped_and_its_thread_goes_on(
    server: Server, scenario: str, policy: str, kind: str
) -> None:
    before = server.metrics()
    thread_id, run, output = server.ask(scenario)
    assert run["status"] == "error"
    error = _error(output)
    assert error["error"] == "RunCancelled"
    # The server's run id, and what stopped it: the policy, its kind and why.
    assert error["message"].startswith(f"run {run['run_id']} of graph 'support-agent' ")
    assert f"cancelled ({kind}): " in error["message"]
    assert f"policy {policy!r}" in error["message"]
    assert _made(server, before, "watchdog_cancellations_total", kind=kind) == 1
    # The thread keeps its last completed checkpoint and takes a new run. A hung tool's run
    # went to its policy's cleanup_node before it ended.
    values: Any = server.client.threads.get_state(thread_id)["values"]
    messages = values["messages"]
    assert messages[0]["content"] == scenario
    wrapped_up = messages[-1]["content"] == "Sorry: a lookup stopped answering. Please try again."
    assert wrapped_up is (policy == "wall-time")
    run, output = server.ask_on(thread_id, "weather Quito")
    assert run["status"] == "success"
    assert output["messages"][-1]["content"] == "Here is the weather for Quito."
    # /metrics counts exactly the two runs made, and how each ended.
    assert _made(server, before, "watchdog_runs_started_total") == 2
    assert _made(server, before, "watchdog_runs_finished_total", outcome="cancelled") == 1
    assert _made(server, before, "watchdog_runs_finished_total", outcome="completed") == 1
    assert _made(server, before, "watchdog_active_runs") == 0


def _made(
    server: Server,
    before: dict[tuple[str, tuple[tuple[str, str], ...]], float],
    name: str,
    **labels: str,
) -> float:
    """How much the sum of a metric's samples of our graph with ``labels`` moved since
    ``before``."""
    wanted = {("graph", "support-agent"), *labels.items()}
    return sum(
        value - before.get(key, 0.0)
        for key, value in server.metrics().items()
        if key[0] == name and wanted <= set(key[1])
    )


def _live_runs(server: Server) -> list[dict[str, Any]]:
    status, body = server.request("GET", "/watchdog/v1/runs")
    assert status == 200, body
    runs: list[dict[str, Any]] = body["runs"]
    return runs


def test_the_servers_own_cancel_is_recorded_as_a_manual_cancel(server: Server) -> None:
    before = server.metrics()
    thread_id = server.client.threads.create()["thread_id"]
    run = server.client.runs.create(thread_id, "agent", input=_user("hang"))
    wait_for("the run to hang in its tool", lambda: bool(_live_runs(server)))
    server.client.runs.cancel(thread_id, run["run_id"], action="interrupt")
    server.client.runs.join(thread_id, run["run_id"])
    assert server.client.runs.get(thread_id, run["run_id"])["status"] == "interrupted"
    after = server.metrics()
    key = (
        "watchdog_cancellations_total",
        (("graph", "support-agent"), ("kind", "manual"), ("phase", "hard"), ("policy", "")),
    )
    assert after[key] - before.get(key, 0.0) == 1
    assert _live_runs(server) == []


def test_the_watchdog_api_lists_and_cancels_live_runs(server: Server) -> None:
    assert server.request("GET", "/watchdog/v1/runs", token=None)[0] == 401
    assert server.request("GET", "/watchdog/v1/runs", token="wrong")[0] == 401
    thread_id = server.client.threads.create()["thread_id"]
    run = server.client.runs.create(thread_id, "agent", input=_user("hang"))
    wait_for("the run to be listed", lambda: bool(_live_runs(server)))
    [live] = _live_runs(server)
    assert (live["run_id"], live["thread_id"], live["graph"]) == (
        run["run_id"],
        thread_id,
        "support-agent",
    )
    path = f"/watchdog/v1/runs/{run['run_id']}/cancel"
    assert server.request("POST", path, {"reason": "operator"}, token=None)[0] == 401
    assert server.request("POST", path, {"reason": "operator"})[0] == 202
    output = server.client.runs.join(thread_id, run["run_id"])
    assert _error(output)["message"].endswith("cancelled (manual): operator")
    assert server.request("POST", path, {"reason": "again"})[0] == 404


def test_an_edited_policy_applies_to_the_next_run_without_a_restart(server: Server) -> None:
    strict = (
        "version: 1\n"
        "policies:\n"
        "  - name: strict-tenant\n"
        "    match: {metadata: {tenant: strict}}\n"
        "    step_count: {max_steps: 1}\n"
    )
    with server.extra_policies("strict.yaml", strict):
        _, run, output = server.ask("weather Oslo", metadata={"tenant": "strict"})
        assert run["status"] == "error"
        assert "policy 'strict-tenant'" in _error(output)["message"]
        _, run, _ = server.ask("weather Oslo", metadata={"tenant": "relaxed"})
        assert run["status"] == "success"
    _, run, _ = server.ask("weather Oslo", metadata={"tenant": "strict"})
    assert run["status"] == "success"


def test_a_run_at_an_ask_limit_pauses_and_an_extension_finishes_it(server: Server) -> None:
    ask_first = (
        "version: 1\n"
        "policies:\n"
        "  - name: ask-first\n"
        "    match: {metadata: {tenant: careful}}\n"
        "    on_violation: ask\n"
        "    step_count: {max_steps: 1}\n"
    )
    with server.extra_policies("ask.yaml", ask_first):
        thread_id = server.client.threads.create()["thread_id"]
        careful = {"tenant": "careful"}
        server.ask_on(thread_id, "weather Oslo", metadata=careful)
        # Paused with the server's own interrupt, the violation in its value.
        assert server.client.threads.get(thread_id)["status"] == "interrupted"
        state: Any = server.client.threads.get_state(thread_id)
        (asked,) = [i["value"] for task in state["tasks"] for i in task["interrupts"]]
        assert (asked["policy"], asked["limit_key"], asked["limit"]) == (
            "ask-first",
            "max_steps",
            1,
        )
        run = server.client.runs.create(
            thread_id, "agent", command={"resume": {"extend": 10}}, metadata=careful
        )
        output = server.client.runs.join(thread_id, run["run_id"])
        assert output["messages"][-1]["content"] == "Here is the weather for Oslo."
