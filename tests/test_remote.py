"""The worker's side of the sidecar link, when the sidecar is not there."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from tests.graphs import Bodies, endless
from watchdog import RunCancelled, Supervisor
from watchdog.testing import capture_events

POLICIES = "version: 1\npolicies:\n- {name: local-steps, step_count: {max_steps: 2}}\n"


@pytest.fixture
def nowhere() -> str:
    """A loopback url where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_an_unreachable_sidecar_without_a_fallback_is_a_clear_error(nowhere: str) -> None:
    with pytest.raises(ConnectionError, match="pass fallback= or set WATCHDOG_POLICIES"):
        Supervisor.connect(nowhere, token="t")


def test_an_unreachable_sidecar_falls_back_to_local_policies_and_counts_dropped_events(
    nowhere: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "local.yaml").write_text(POLICIES)
    monkeypatch.setenv("WATCHDOG_SIDECAR_URL", nowhere)
    monkeypatch.setenv("WATCHDOG_POLICIES", str(tmp_path / "local.yaml"))
    registry = CollectorRegistry()
    with capture_events() as events:
        supervisor = Supervisor.connect(registry=registry)
    try:
        assert events[0]["event"] == "watchdog.sidecar_unreachable"
        assert supervisor.link is not None
        supervisor.link.max_buffer = 3  # a small buffer, to see it overflow
        app = supervisor.attach(endless(Bodies(), is_async=False, checkpointer=False), name="g")
        with capture_events() as emitted, pytest.raises(RunCancelled) as raised:
            app.invoke({"count": 0})  # enforced locally all the same
        assert raised.value.policy == "local-steps"
        assert not supervisor.link.flush()
    finally:
        supervisor.close()
    # Nothing was ever sent: all but the three the buffer holds were dropped, and counted.
    assert len(emitted) == 6
    assert registry.get_sample_value("watchdog_sidecar_events_dropped_total") == 3
