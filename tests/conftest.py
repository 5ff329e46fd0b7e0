from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

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
