"""A real ``watchdog serve`` under the faults of a real pod: policy files it cannot read,
floods of label values, runs whose end never arrives, workers that restart or share a name."""

from __future__ import annotations

import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langgraph.graph import START, StateGraph
from prometheus_client import CollectorRegistry

from tests.graphs import Counter, policies
from tests.processes import POLICIES, TOKEN, Pod, Process, without_file_access_override
from watchdog import Supervisor
from watchdog._pod.link import SidecarLink
from watchdog._pod.table import MAX_LABEL_LENGTH, MAX_LABEL_VALUES

FAILED = ("watchdog_policy_reloads_total", (("result", "failed"),))
VALID = ("watchdog_policy_files_valid", ())


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


def ended(worker: Process, run_ids: set[str]) -> dict[str, dict[str, Any]]:
    """The lines ``worker`` prints as those runs end, by run id."""
    found: dict[str, dict[str, Any]] = {}
    while set(found) != run_ids:
        line = worker.expect("run_id", timeout=60)
        if line["run_id"] in run_ids:
            found[line["run_id"]] = line
    return found


def test_two_workers_of_one_name_each_get_the_cancels_of_their_own_runs(pod: Pod) -> None:
    """Two containers of a pod share hostname-pid: each cancel is still taken, and
    acknowledged, by the process that owns the run."""
    hung = {key: {str(uuid.uuid4()) for _ in range(4)} for key in ("a", "b")}
    twins = pod.start_workers(
        {key: {"worker": "twin", "hang": sorted(runs)} for key, runs in hung.items()}
    )
    pod.wait_for("eight hung runs", lambda: len(pod.get("/v1/runs")["runs"]) == 8)
    rows = pod.get("/v1/runs")["runs"]
    assert {row["worker"] for row in rows} == {"twin"}
    assert len({row["incarnation"] for row in rows}) == 2
    for run_id in sorted(hung["a"] | hung["b"]):
        status, answer = pod.call("POST", f"/v1/runs/{run_id}/cancel?wait=30", {"reason": "stop"})
        assert (status, answer["delivered"], answer["applied"]) == (202, True, True), answer
    for key, twin in twins.items():
        lines = ended(twin, hung[key])
        assert {line["outcome"] for line in lines.values()} == {"cancelled"}


def test_a_cancel_just_after_a_worker_restarts_reaches_the_new_process(tmp_path: Path) -> None:
    """A restarted container is the same hostname-pid: the dead process's long-poll must
    not take the cancel meant for the new one, and the dead one's runs leave the table."""
    pod = Pod(tmp_path)
    pod.start_sidecar(worker_timeout=10)  # the dead process's run stays that long
    try:
        before, after = str(uuid.uuid4()), str(uuid.uuid4())
        dead = pod.worker("w-1", {"hang": [before]})
        pod.wait_for("the first run", lambda: len(pod.get("/v1/runs")["runs"]) == 1)
        dead.stop()  # SIGKILL, in the middle of its long-poll
        status, answer = pod.call("POST", f"/v1/runs/{before}/cancel?wait=0.2")
        assert status == 504, answer  # no process took it: not answered 202
        assert pod.get(f"/v1/runs/{before}")["cancel"]["delivered"] is False

        restarted = pod.worker("w-1-again", {"worker": "w-1", "hang": [after]})
        pod.wait_for(
            "the new process's run",
            lambda: after in {row["run_id"] for row in pod.get("/v1/runs")["runs"]},
        )
        status, answer = pod.call("POST", f"/v1/runs/{after}/cancel?wait=30", {"reason": "x"})
        assert (status, answer["applied"]) == (202, True), answer
        assert ended(restarted, {after})[after]["outcome"] == "cancelled"
        pod.wait_for(
            "the dead process's run to leave the table",
            lambda: pod.get(f"/v1/runs/{before}")["status"] == "lost",
            timeout=60,
        )
    finally:
        pod.stop()


def hold(release: threading.Event) -> Any:
    """A graph whose one node waits for ``release``."""

    def wait(state: Counter) -> dict[str, int]:
        release.wait(60)
        return {}

    builder = StateGraph(Counter)
    builder.add_node("wait", wait)
    builder.add_edge(START, "wait")
    return builder.compile()


def test_a_run_whose_end_was_dropped_leaves_the_table_within_seconds(pod: Pod) -> None:
    """The sidecar hangs (SIGSTOP) while a run ends; the worker's buffer is full, so the
    run's end is dropped. The worker's next list of its live runs takes the ghost out."""
    supervisor = Supervisor(
        policies("- {name: s, step_count: {max_steps: 9}}"), registry=CollectorRegistry()
    )
    link = SidecarLink(
        supervisor, pod.url, TOKEN, flush_interval=0.02, max_buffer=5, sync_interval=0.2
    )
    release = threading.Event()
    app = supervisor.attach(hold(release), name="ghostly")
    runner = threading.Thread(target=app.invoke, args=({"count": 0},))
    runner.start()
    assert pod.sidecar is not None
    stopped = False
    try:
        pod.wait_for("the run", lambda: len(pod.get("/v1/runs")["runs"]) == 1)
        [row] = pod.get("/v1/runs")["runs"]
        pod.sidecar.popen.send_signal(signal.SIGSTOP)
        stopped = True
        for _ in range(link.max_buffer):
            link.enqueue({"event": "test.filler"})
        # The link takes them and waits on the hung sidecar; what comes next has no room.
        pod.wait_for("the link to send and wait", lambda: link.buffered == 0)
        for _ in range(link.max_buffer):
            link.enqueue({"event": "test.filler"})
        release.set()
        runner.join(30)
        assert dropped(supervisor) == 1, "the run's end was not dropped"
        pod.sidecar.popen.send_signal(signal.SIGCONT)
        stopped = False
        pod.wait_for("the ghost to leave the table", lambda: not pod.get("/v1/runs")["runs"])
    finally:
        if stopped:
            pod.sidecar.popen.send_signal(signal.SIGCONT)
        release.set()
        runner.join(30)
        link.close(timeout=5)
        supervisor.close()
    assert pod.get(f"/v1/runs/{row['run_id']}")["status"] == "lost"
    values = pod.metrics()
    assert values[("watchdog_active_runs", (("graph", "ghostly"),))] == 0
    assert values[("watchdog_sidecar_runs_lost_total", (("graph", "ghostly"),))] == 1
    assert pod.call("POST", f"/v1/runs/{row['run_id']}/cancel")[0] == 404


def dropped(supervisor: Supervisor) -> float | None:
    return supervisor.metrics.registry.get_sample_value("watchdog_sidecar_events_dropped_total")
