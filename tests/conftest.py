from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from tests.processes import Pod, RedisServer
from watchdog import testing
from watchdog.testing import FakeClock


@pytest.fixture(autouse=True)
def _reset_watchdog() -> Iterator[None]:
    testing.reset()
    yield
    testing.reset()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[Pod]:
    """A running ``watchdog serve`` on a free loopback port, with its token and policies."""
    pod = Pod(tmp_path)
    pod.start_sidecar()
    yield pod
    pod.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real ``redis-server`` on a free loopback port (skipped when it is not installed,
    failed on CI, where ``.ci/run`` installs it)."""
    server = RedisServer(tmp_path)
    yield server
    server.stop()
