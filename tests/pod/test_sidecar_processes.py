"""The sidecar with real processes: one ``watchdog serve`` and three agent workers."""

from __future__ import annotations

import inspect
import itertools
import re
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from prometheus_client import CollectorRegistry

from tests.graphs import Bodies, endless, policies, react_agent, scripted, tool_call
from tests.processes import POLICIES, RFC_3339, TOKEN, Pod
from tests.sidecar_worker import flood_events, run_events
from watchdog import RunCancelled, Supervisor
from watchdog._pod.link import BATCH, SidecarLink
from watchdog.testing import capture_events


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

    served = pod.get("/readyz")["policies"]["hash"]
    pod.policy_file.write_text(POLICIES.replace("max_steps: 100000", "max_steps: -3"))
    pod.wait_for(
        "the broken edit to be reported", lambda: pod.get("/readyz")["policies"]["reload_error"]
    )
    # The old limits still hold: workers are served what they had, and the run goes on.
    assert pod.get("/readyz")["policies"]["hash"] == served
    assert [r["run_id"] for r in pod.get("/v1/runs")["runs"]] == [run_id]

    edited = time.time()
    pod.policy_file.write_text(POLICIES.replace("max_steps: 100000", "max_steps: 3"))
    ended = worker.expect("run_id")
    took = ended["at"] - edited
    print(f"edit to cancel of a live run: {took:.2f} s")
    assert (ended["outcome"], ended["policy"]) == ("cancelled", "slow-steps")
    assert took < 5.0  # a sidecar poll and a worker's policy check, on a busy machine
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


def test_a_sidecar_hung_then_killed_under_load_blocks_no_run_and_workers_reconnect(
    pod: Pod,
) -> None:
    """A worker runs short runs one after another while its sidecar hangs (SIGSTOP: its
    socket takes connections and never answers, so the link waits out its 5 s timeouts),
    then is killed, then restarts. Every step waits for what it needs, however long a busy
    machine takes; runs never wait on the sidecar."""
    worker = pod.worker("w-1", {"steady": None})
    ends: list[float] = []

    def runs_after(moment: float, count: int) -> None:
        while sum(t > moment for t in ends) < count:
            line = worker.expect("run_id", timeout=60)
            assert line["outcome"] == "completed", line
            ends.append(line["at"])

    runs_after(0, 5)
    assert pod.sidecar is not None
    pod.sidecar.popen.send_signal(signal.SIGSTOP)
    hung = time.time()
    runs_after(hung, 20)
    pod.sidecar.stop()  # SIGKILL
    killed = time.time()
    runs_after(killed, 5)
    pod.start_sidecar()  # same port, a fresh process with empty counters
    restarted = time.time()
    completed = ("watchdog_runs_finished_total", (("graph", "steady"), ("outcome", "completed")))
    pod.wait_for("events after the restart", lambda: pod.metrics().get(completed, 0) > 0, 60)
    worker.close_stdin()
    while "done" not in (line := worker.lines.get(timeout=60)):
        assert line["outcome"] == "completed", line
        ends.append(line["at"])
    gaps = [b - a for a, b in itertools.pairwise(ends)]
    down = [t for t in ends if hung < t < restarted]
    print(f"{len(down)} runs completed while the sidecar was away; longest gap {max(gaps):.3f} s")
    assert max(gaps) < 2.0, "a run waited on the sidecar (its link's timeouts are 5 s)"


def test_sigterm_answers_the_open_long_polls_and_exits_0_at_once(pod: Pod) -> None:
    """uvicorn's graceful stop waits for every open request, and a worker's long-poll is one
    for up to its whole wait: the sidecar answers it as it stops. The worker takes that
    answer as it takes any, and links up again with the next sidecar."""
    run_id = str(uuid.uuid4())
    worker = pod.worker("w-1", {"hang": [run_id]})
    pod.wait_for("the run", lambda: len(pod.get("/v1/runs")["runs"]) == 1)
    pod.wait_for("the worker's long-poll", lambda: pod.get("/readyz")["polling"] == 1)
    assert pod.sidecar is not None
    stopping = time.monotonic()
    pod.sidecar.popen.send_signal(signal.SIGTERM)
    status = pod.sidecar.popen.wait(60)
    took = time.monotonic() - stopping
    wait = inspect.signature(SidecarLink).parameters["command_wait"].default
    print(f"SIGTERM to exit, with a long-poll of {wait:g} s open: {took:.3f} s")
    assert status == 0, pod.sidecar.errors
    assert took < wait / 2, "it waited for the long-poll to end on its own"
    pod.sidecar.stop()  # reads what is left of its output
    assert not [line for line in pod.sidecar.errors if "Traceback" in line]

    pod.start_sidecar()  # a fresh table: the run comes back from the worker's list
    pod.wait_for("the run again", lambda: len(pod.get("/v1/runs")["runs"]) == 1, timeout=60)
    [row] = pod.get("/v1/runs")["runs"]
    assert (row["run_id"], row["started_at"] is not None) == (run_id, True)
    pod.wait_for("the long-poll again", lambda: pod.get("/readyz")["polling"] == 1)
    assert worker.events("internal_error") == []


def test_runs_show_their_steps_tokens_and_times(pod: Pod) -> None:
    slow = str(uuid.uuid4())
    worker = pod.worker("w-1", {"slow": [slow], "chat": 1})
    chat = worker.expect("run_id")
    assert chat["outcome"] == "completed", chat
    pod.wait_for(
        "steps in the list", lambda: pod.call("GET", f"/v1/runs/{slow}")[1].get("steps", 0) > 0
    )
    live = pod.get(f"/v1/runs/{slow}")
    assert re.fullmatch(RFC_3339, live["started_at"]), live
    assert live["elapsed_s"] > 0
    assert live["finished_at"] is None
    ended_chat = f"/v1/runs/{chat['run_id']}"
    pod.wait_for("the chat run's end", lambda: pod.call("GET", ended_chat)[1].get("finished_at"))
    completed = pod.get(ended_chat)
    assert (completed["status"], completed["tokens"]) == ("completed", 240)  # 2 calls, 120 each
    assert completed["steps"] > 0
    assert re.fullmatch(RFC_3339, completed["finished_at"])
    assert pod.post(f"/v1/runs/{slow}/cancel", {"reason": "enough"}) == 202
    pod.wait_for("its end", lambda: pod.get(f"/v1/runs/{slow}")["status"] == "cancelled")
    ended = pod.get(f"/v1/runs/{slow}")
    assert ended["steps"] >= live["steps"]
    assert ended["elapsed_s"] >= live["elapsed_s"]


def test_sighup_reloads_the_policies_at_once(tmp_path: Path) -> None:
    pod = Pod(tmp_path)
    pod.start_sidecar(poll_interval=3600)  # no polling: only the signal can reload
    try:
        before = pod.get("/readyz")["policies"]["hash"]
        pod.policy_file.write_text(POLICIES.replace("max_steps: 5", "max_steps: 6"))
        assert pod.sidecar is not None
        pod.sidecar.popen.send_signal(signal.SIGHUP)
        pod.wait_for("the reload", lambda: pod.get("/readyz")["policies"]["hash"] != before)
    finally:
        pod.stop()


def ingested(pod: Pod) -> float:
    return pod.metrics().get(("watchdog_sidecar_events_total", ()), 0.0)


def test_a_flood_bigger_than_the_buffers_is_ingested_whole(pod: Pod) -> None:
    """The benchmark's path: workers push more events than a link's buffer holds, waiting
    while it is full; the sidecar counts every one, and no worker drops any."""
    per_worker = 15_000  # the buffer holds 10,000
    workers = pod.start_workers({name: {"flood": per_worker} for name in ("w-1", "w-2")})
    for worker in workers.values():
        worker.tell(go=True)
    reports = [worker.expect("flooded", timeout=60) for worker in workers.values()]
    pod.wait_for("every event", lambda: ingested(pod) >= 2 * per_worker, timeout=30)
    assert ingested(pod) == 2 * per_worker
    assert [report["dropped"] for report in reports] == [0, 0]
    for worker in workers.values():
        worker.close_stdin()
        assert worker.expect("done")["dropped"] == 0


def test_a_full_batch_is_sent_at_once_not_at_the_next_flush(pod: Pod) -> None:
    supervisor = Supervisor(
        policies("- {name: s, step_count: {max_steps: 9}}"), registry=CollectorRegistry()
    )
    link = SidecarLink(supervisor, pod.url, TOKEN, flush_interval=60, command_wait=0.2)
    try:
        for event in itertools.islice(flood_events("w-1", 0), BATCH):
            link.enqueue(event)
        pod.wait_for("a full batch", lambda: ingested(pod) >= BATCH, timeout=5)
    finally:
        link.close()
        supervisor.close()


def test_the_flood_sends_events_shaped_as_real_runs_send_them() -> None:
    supervisor = Supervisor(
        policies("- {name: steps, match: {graph: [loop]}, step_count: {max_steps: 3}}"),
        registry=CollectorRegistry(),
    )
    chat = supervisor.attach(react_agent(scripted(tool_call("q"), AIMessage("done"))), name="c")
    loop = supervisor.attach(endless(Bodies(), is_async=False, checkpointer=False), name="loop")
    with capture_events() as completed:
        chat.invoke({"messages": [("user", "hi")]})
    with capture_events() as cancelled, pytest.raises(RunCancelled):
        loop.invoke({"count": 0})

    def shapes(events: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
        return [(e["event"], sorted(e)) for e in events if "run_id" in e]

    assert shapes(run_events("r", "g", cancelled=False)) == shapes(completed)
    assert shapes(run_events("r", "g", cancelled=True)) == shapes(cancelled)


def test_a_threads_totals_reset_through_the_sidecar_reach_every_worker(tmp_path: Path) -> None:
    pod = Pod(
        tmp_path,
        "version: 1\ndefaults: {warn_at: null, grace_seconds: 0}\npolicies:\n"
        "- {name: thread-steps, step_count: {max_steps: 3, scope: thread}}\n",
    )
    pod.start_sidecar()
    try:
        assert pod.call("POST", "/v1/threads/t/reset")[0] == 409  # no worker to reset it
        linked = {
            name: Supervisor.connect(pod.url, TOKEN, worker=name, registry=CollectorRegistry())
            for name in ("w-1", "w-2")
        }
        bodies = Bodies()
        # Each worker keeps its threads in a checkpointer of its own; only w-1 has thread t.
        apps = {
            name: supervisor.attach(endless(bodies, is_async=False), name="chat")
            for name, supervisor in linked.items()
        }
        config = {"configurable": {"thread_id": "t"}}
        for graph_input in ({"count": 0}, None):  # the second is blocked as it begins
            with pytest.raises(RunCancelled):
                apps["w-1"].invoke(graph_input, config)
        assert bodies.ran == 3
        pod.wait_for("both workers", lambda: pod.get("/readyz")["workers"] == 2)

        status, answer = pod.call("POST", "/v1/threads/t/reset")

        assert status == 200, answer
        assert answer["thread_id"] == "t"
        assert answer["checkpointers"] == 1
        assert sorted((w["worker"], w["taken"], w["checkpointers"]) for w in answer["workers"]) == [
            ("w-1", True, 1),
            ("w-2", True, 0),
        ]
        with pytest.raises(RunCancelled):
            apps["w-1"].invoke(None, config)
        assert bodies.ran == 6  # three fresh steps
        for supervisor in linked.values():
            supervisor.close()
    finally:
        pod.stop()
