"""A real ``watchdog serve`` under the faults of a real pod: policy files it cannot read,
floods of label values, runs whose end never arrives, workers that restart or share a name."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.processes import POLICIES, Pod
from watchdog._sidecar import MAX_LABEL_LENGTH, MAX_LABEL_VALUES

FAILED = ("watchdog_policy_reloads_total", (("result", "failed"),))
VALID = ("watchdog_policy_files_valid", ())


def without_file_access_override() -> list[str]:
    """A command prefix under which root obeys file modes, as any other user does; empty
    for any other user."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and setpriv (util-linux) is not installed")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]


@pytest.fixture
def unreadable(tmp_path: Path) -> Iterator[Pod]:
    pod = Pod(tmp_path, directory=True)
    pod.start_sidecar(0.05, worker_timeout=1, prefix=without_file_access_override())
    yield pod
    pod.policy_path.chmod(0o755)
    pod.stop()


def test_a_policy_directory_it_cannot_list_is_reported_and_every_loop_goes_on(
    unreadable: Pod,
) -> None:
    pod = unreadable
    batch = {"worker": "w-1", "events": [{"event": "watchdog.run_started", "run_id": "r-1"}]}
    assert pod.post("/v1/events", batch) == 202
    before = pod.get("/readyz")["policies"]["hash"]

    pod.policy_path.chmod(0)  # a remount, a stale NFS handle: listing it fails
    pod.wait_for("the failure in /readyz", lambda: pod.get("/readyz")["policies"]["reload_error"])
    ready = pod.get("/readyz")["policies"]
    assert "cannot read the policies: Permission denied" in ready["reload_error"]
    assert (ready["hash"], ready["files_valid"]) == (before, False)
    assert pod.metrics()[VALID] == 0
    # The reaper goes on: the silent worker's run leaves the table, counted as lost.
    pod.wait_for("the silent worker to be reaped", lambda: not pod.get("/v1/runs")["runs"])
    values = pod.metrics()
    assert values[("watchdog_sidecar_runs_lost_total", (("graph", ""),))] == 1
    assert values[FAILED] == 1, "reported once, not at every poll"
    assert pod.sidecar is not None
    [event] = pod.sidecar.events("policy_reload_failed")
    assert "Permission denied" in event["error"]

    pod.policy_path.chmod(0o755)
    pod.policy_file.write_text(POLICIES.replace("max_steps: 5", "max_steps: 6"))
    pod.wait_for("the edit to load", lambda: pod.get("/readyz")["policies"]["hash"] != before)
    assert pod.get("/readyz")["policies"]["reload_error"] is None
    assert pod.metrics()[VALID] == 1
    assert "max_steps: 6" in pod.get("/v1/policies")["files"]["watchdog.yaml"]


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[Pod]:
    pod = Pod(tmp_path)
    pod.start_sidecar()
    yield pod
    pod.stop()


def rss_kib(pod: Pod) -> int:
    assert pod.sidecar is not None
    status = Path(f"/proc/{pod.sidecar.popen.pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])


def run_events(run_id: str, graph: str) -> list[dict[str, Any]]:
    fields = {"run_id": run_id, "graph": graph, "thread_id": "t"}
    return [
        {"event": "watchdog.run_started", **fields, "policies": ["backstop"]},
        {"event": "watchdog.run_finished", **fields, "outcome": "completed", "steps": 3},
    ]


def test_a_flood_of_label_values_is_collapsed_and_counted_and_the_scrape_stays_small(
    pod: Pod,
) -> None:
    """20,000 distinct graph names and a 1 MB one, from a token holder: the scrape keeps
    the first names, collapses the rest into __overflow__, and says how many."""
    before = rss_kib(pod)
    for batch in range(4):
        events = [
            event
            for i in range(5000)
            for event in run_events(f"r-{batch}-{i}", f"graph-{batch}-{i}")
        ]
        assert pod.post("/v1/events", {"worker": "w-1", "events": events}) == 202
    huge = "g" * 1_000_000
    assert pod.post("/v1/events", {"worker": "w-1", "events": run_events("r-huge", huge)}) == 202

    scrape = pod.get("/metrics")
    assert len(scrape) < 400_000, f"a scrape of {len(scrape)} bytes"
    assert huge[: MAX_LABEL_LENGTH + 1] not in scrape
    values = pod.metrics()
    started = {
        labels: v for (name, labels), v in values.items() if name == "watchdog_runs_started_total"
    }
    assert len(started) == MAX_LABEL_VALUES + 1  # and __overflow__
    assert started[(("graph", "__overflow__"),)] == 20_001 - MAX_LABEL_VALUES
    overflow = (
        "watchdog_sidecar_label_overflow_total",
        (("label", "graph"), ("metric", "watchdog_runs_started")),
    )
    assert values[overflow] == 20_001 - MAX_LABEL_VALUES
    assert rss_kib(pod) - before < 60_000
    assert pod.get("/readyz")["runs"] == 0
