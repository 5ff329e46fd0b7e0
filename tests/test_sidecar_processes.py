"""The sidecar with real processes: one ``watchdog serve`` and three agent workers."""

from __future__ import annotations

import itertools
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).parent.parent
TOKEN = "pod-token"
POLICIES = """\
version: 1
defaults: {grace_seconds: 0.05, warn_at: null}
policies:
  - {name: loop-steps, match: {graph: [loop]}, step_count: {max_steps: 5}}
  - {name: slow-steps, match: {graph: [slow]}, step_count: {max_steps: 100000}}
  - {name: backstop, wall_time: {max_seconds: 60}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Process:
    """A subprocess whose stdout lines are read, as JSON, by a thread."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.popen = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            if line.startswith("{"):
                self.lines.put(json.loads(line))

    def expect(self, key: str, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            if key in line:
                return line

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)
        self.reader.join(10)  # it reads to the end of the output, then closes it
        if self.popen.stdout is not None:
            self.popen.stdout.close()


class Pod:
    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.policy_file = tmp_path / "policies" / "watchdog.yaml"
        self.policy_file.parent.mkdir()
        self.policy_file.write_text(POLICIES)
        self.token_file = tmp_path / "token"
        self.token_file.write_text(TOKEN + "\n")
        self.env = {
            **os.environ,
            "WATCHDOG_SIDECAR_URL": self.url,
            "WATCHDOG_SIDECAR_TOKEN": TOKEN,
        }
        self.sidecar: Process | None = None
        self.workers: list[Process] = []

    def start_sidecar(self, poll_interval: float = 0.2) -> None:
        args = [sys.executable, "-m", "watchdog", "serve", "--policies", str(self.policy_file)]
        args += ["--port", str(self.port), "--token-file", str(self.token_file)]
        args += ["--poll-interval", str(poll_interval), "--worker-timeout", "5"]
        self.sidecar = Process(args, self.env)
        deadline = time.monotonic() + 20
        while not self.answers("/healthz"):
            assert time.monotonic() < deadline, "the sidecar did not start"
            time.sleep(0.05)

    def worker(self, name: str, plan: dict[str, Any]) -> Process:
        worker = Process(
            [sys.executable, "-m", "tests.sidecar_worker", name, json.dumps(plan)], self.env
        )
        self.workers.append(worker)
        worker.expect("ready")
        return worker

    def answers(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(self.url + path, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=5) as response:
            body = response.read().decode()
            return json.loads(body) if path != "/metrics" else body

    def post(self, path: str, body: Any = None, token: str | None = TOKEN) -> int:
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body or {}).encode(), method="POST"
        )
        request.add_header("Content-Type", "application/json")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return error.code

    def wait_for(self, what: str, check: Any, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.02)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(self.get("/metrics"))
            for s in family.samples
        }

    def stop(self) -> None:
        for process in [*self.workers, *([self.sidecar] if self.sidecar else [])]:
            process.stop()


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[Pod]:
    pod = Pod(tmp_path)
    pod.start_sidecar()
    yield pod
    pod.stop()


def test_cancels_reach_the_owning_worker_and_metrics_total_every_worker(pod: Pod) -> None:
    hung = {name: str(uuid.uuid4()) for name in ("w-1", "w-2", "w-3")}
    workers = {
        name: pod.worker(name, {"hang": [run_id], "loops": 3}) for name, run_id in hung.items()
    }
    pod.wait_for("three hung runs", lambda: len(pod.get("/v1/runs")["runs"]) == 3)
    assert {r["worker"] for r in pod.get("/v1/runs")["runs"]} == set(hung)

    for name, run_id in hung.items():
        posted = time.time()
        assert pod.post(f"/v1/runs/{run_id}/cancel", {"reason": f"ops stop {name}"}) == 202
        ended = workers[name].expect("run_id")
        while ended["run_id"] != run_id:
            ended = workers[name].expect("run_id")
        latency = ended["at"] - posted
        print(f"cancel through the sidecar to {name}: {1000 * latency:.1f} ms")
        assert (ended["outcome"], ended["reason"]) == ("cancelled", f"ops stop {name}")
        assert latency < 1.0
    for worker in workers.values():
        worker.expect("done")

    pod.wait_for(
        "every event",
        lambda: (
            pod.metrics().get(
                ("watchdog_runs_finished_total", (("graph", "loop"), ("outcome", "cancelled")))
            )
            == 9
        ),
    )
    values = pod.metrics()
    assert values[("watchdog_runs_started_total", (("graph", "hang"),))] == 3
    assert values[("watchdog_runs_started_total", (("graph", "loop"),))] == 9
    manual = (("graph", "hang"), ("kind", "manual"), ("phase", "hard"), ("policy", ""))
    assert values[("watchdog_cancellations_total", manual)] == 3
    steps = (
        ("graph", "loop"),
        ("kind", "step_count"),
        ("phase", "drained"),
        ("policy", "loop-steps"),
    )
    assert values[("watchdog_cancellations_total", steps)] == 9
    assert pod.get("/v1/runs") == {"runs": []}


def test_a_policy_edit_tightens_live_runs_and_a_broken_edit_is_refused(pod: Pod) -> None:
    run_id = str(uuid.uuid4())
    worker = pod.worker("w-1", {"slow": [run_id]})
    pod.wait_for("the slow run", lambda: len(pod.get("/v1/runs")["runs"]) == 1)

    pod.policy_file.write_text(POLICIES.replace("max_steps: 100000", "max_steps: -3"))
    pod.wait_for(
        "the broken edit to be reported", lambda: pod.get("/readyz")["policies"]["reload_error"]
    )
    time.sleep(0.3)  # the old limits still hold: the run goes on
    assert [r["run_id"] for r in pod.get("/v1/runs")["runs"]] == [run_id]

    edited = time.time()
    pod.policy_file.write_text(POLICIES.replace("max_steps: 100000", "max_steps: 3"))
    ended = worker.expect("run_id")
    took = ended["at"] - edited
    print(f"edit to cancel of a live run: {took:.2f} s")
    assert (ended["outcome"], ended["policy"]) == ("cancelled", "slow-steps")
    assert took < 2.0
    assert pod.get("/readyz")["policies"]["reload_error"] is None


def test_mutating_endpoints_refuse_a_missing_or_wrong_token(pod: Pod) -> None:
    run_id = str(uuid.uuid4())
    pod.worker("w-1", {"hang": [run_id]})
    pod.wait_for("the run", lambda: len(pod.get("/v1/runs")["runs"]) == 1)
    for token in (None, "wrong"):
        assert pod.post(f"/v1/runs/{run_id}/cancel", token=token) == 401
        assert pod.post("/v1/policies/reload", token=token) == 401
        assert pod.post("/v1/events", {"worker": "x", "events": []}, token=token) == 401
    assert [r["status"] for r in pod.get("/v1/runs")["runs"]] == ["running"]
    assert pod.post(f"/v1/runs/{run_id}/cancel") == 202


def test_a_sidecar_killed_under_load_blocks_no_run_and_workers_reconnect(pod: Pod) -> None:
    worker = pod.worker("w-1", {"steady": 4.0})
    time.sleep(0.5)
    assert pod.sidecar is not None
    pod.sidecar.stop()  # SIGKILL
    killed = time.time()
    time.sleep(0.7)
    pod.start_sidecar()  # same port, a fresh process with empty counters
    restarted = time.time()
    ends = []
    while "done" not in (line := worker.lines.get(timeout=20)):
        assert line["outcome"] == "completed"
        ends.append(line["at"])
    during = [t for t in ends if killed < t < restarted]
    gaps = [b - a for a, b in itertools.pairwise(ends)]
    print(f"{len(during)} runs completed while the sidecar was down; longest gap {max(gaps):.3f} s")
    assert during, "runs went on while the sidecar was down"
    assert max(gaps) < 0.5, "no run waited on the missing sidecar"
    pod.wait_for(
        "events after the restart",
        lambda: (
            (
                pod.metrics().get(
                    (
                        "watchdog_runs_finished_total",
                        (("graph", "steady"), ("outcome", "completed")),
                    )
                )
                or 0
            )
            > 0
        ),
    )


def test_sighup_reloads_the_policies_at_once(tmp_path: Path) -> None:
    pod = Pod(tmp_path)
    pod.start_sidecar(poll_interval=3600)  # no polling: only the signal can reload
    try:
        before = pod.get("/readyz")["policies"]["hash"]
        pod.policy_file.write_text(POLICIES.replace("max_steps: 5", "max_steps: 6"))
        assert pod.sidecar is not None
        pod.sidecar.popen.send_signal(signal.SIGHUP)
        pod.wait_for("the reload", lambda: pod.get("/readyz")["policies"]["hash"] != before, 5)
    finally:
        pod.stop()
