"""The sidecar keeps the traces of its pod's last runs, and they replay as the runs went."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from tests.processes import POLICIES, TOKEN, Pod
from watchdog import Trace
from watchdog._pod.link import TRACE_EVENT
from watchdog._pod.policy_source import PolicySource
from watchdog._pod.sidecar import create_app
from watchdog._pod.table import MAX_TRACES
from watchdog._sinks.metrics import Metrics

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def traced(run_id: str, graph: str = "agent") -> dict[str, Any]:
    trace = Trace(run_id=run_id, graph=graph, end={"elapsed_s": 0.0, "outcome": "completed"})
    return {"event": TRACE_EVENT, "trace": trace.as_record()}


def test_the_sidecar_keeps_the_last_traces_and_leaves_out_what_is_not_one(
    tmp_path: Path,
) -> None:
    policies = tmp_path / "policies.yaml"
    policies.write_text(POLICIES)
    source = PolicySource(str(policies), Metrics(CollectorRegistry()))
    app = create_app(source, token=TOKEN, poll_interval=3600)
    with TestClient(app) as client:
        events = [traced(f"r{i}", "agent" if i % 2 else "other") for i in range(MAX_TRACES + 5)]
        events.append({"event": TRACE_EVENT, "trace": {"trace": 1, "run_id": 3}})
        answer = client.post("/v1/events", json={"worker": "w", "events": events}, headers=AUTH)
        assert answer.status_code == 202
        lines = client.get("/v1/traces", headers=AUTH).text.splitlines()
        assert len(lines) == MAX_TRACES
        assert [Trace.from_json(line).run_id for line in lines[:2]] == ["r5", "r6"]
        other = client.get("/v1/traces", params={"graph": "other", "limit": 2}, headers=AUTH)
        assert other.headers["content-type"] == "application/x-ndjson"
        assert [Trace.from_json(line).run_id for line in other.text.splitlines()] == [
            "r1002",
            "r1004",
        ]
        metrics = client.get("/metrics").text
        assert "watchdog_sidecar_traces_refused_total 1.0" in metrics
        assert client.get("/v1/traces").status_code == 401


def test_a_workers_recorded_runs_reach_its_sidecar_and_replay_as_they_went(
    tmp_path: Path,
) -> None:
    pod = Pod(tmp_path)
    pod.env["WATCHDOG_RECORD"] = "1"  # traces go to the sidecar only
    try:
        pod.start_sidecar()
        worker = pod.worker("w-1", {"loops": 2})
        ended = [worker.expect("run_id") for _ in range(2)]
        worker.expect("done")

        def traces() -> str:
            request = urllib.request.Request(pod.url + "/v1/traces", headers=AUTH)
            with urllib.request.urlopen(request, timeout=10) as response:
                return str(response.read().decode())

        pod.wait_for("both traces", lambda: len(traces().splitlines()) == 2)
        replayed = subprocess.run(
            [sys.executable, "-m", "watchdog", "replay", str(pod.policy_file), "-"],
            input=traces(),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        lines = [line for line in replayed.stdout.splitlines() if line.startswith("run ")]
        assert sorted(line.split()[1] for line in lines) == sorted(run["run_id"] for run in ended)
        assert all(
            ": cancelled by loop-steps (step_count, max_steps) at step 6 in node " in line
            for line in lines
        )
        assert {(run["outcome"], run["policy"]) for run in ended} == {("cancelled", "loop-steps")}
    finally:
        pod.stop()
