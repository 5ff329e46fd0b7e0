"""A real ``watchdog serve`` against hostile clients on loopback: no token, huge bodies,
bodies and headers that trickle in or never come."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.processes import TOKEN, Pod, wait_for
from watchdog._pod.link import EVENTS_BODY_LIMIT
from watchdog._pod.sidecar import BODY_LIMIT

READ_TIMEOUT = 0.5  # the sidecar's, for these tests: a slow client is cut off after it


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pod]:
    """One sidecar for the module: no test here changes what it holds."""
    pod = Pod(tmp_path_factory.mktemp("pod"))
    pod.start_sidecar(0.2, "--read-timeout", str(READ_TIMEOUT))
    yield pod
    pod.stop()


def rss_kib(pod: Pod) -> int:
    assert pod.sidecar is not None
    status = Path(f"/proc/{pod.sidecar.popen.pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])


Connect = Callable[[], socket.socket]


@pytest.fixture
def connect(pod: Pod) -> Iterator[Connect]:
    """Opens a connection to the sidecar; all are closed after the test."""
    opened: list[socket.socket] = []

    def open_one() -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", pod.port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        opened.append(sock)
        return sock

    yield open_one
    for sock in opened:
        sock.close()


def head(method: str, path: str, *, token: str | None = None, length: int | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: sidecar", "Content-Type: application/json"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answer(sock: socket.socket) -> tuple[int, bytes]:
    """The status of the answer on ``sock``, and all the rest until the server closes it."""
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    status_line = received.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 "), received[:200]
    return int(status_line.split()[1]), received


PATHS = [
    ("POST", "/v1/runs/r-1/cancel"),
    ("POST", "/v1/events"),
    ("POST", "/v1/policies/reload"),
    ("POST", "/v1/commands"),
    ("GET", "/v1/runs"),
    ("GET", "/v1/runs/r-1"),
    ("GET", "/v1/policies"),
    ("GET", "/v1/nothing-here"),
]


@pytest.mark.parametrize(("method", "path"), PATHS)
def test_without_the_token_nothing_of_a_body_is_read(
    pod: Pod, connect: Connect, method: str, path: str
) -> None:
    """The answer comes as soon as the headers are in: the 52 MB the client announces are
    never waited for, nor held."""
    before = rss_kib(pod)
    sock = connect()
    sock.sendall(head(method, path, length=52_000_000) + b"[" * 65536)
    status, received = answer(sock)
    assert status == 401
    assert b"www-authenticate: bearer" in received.lower()
    assert pod.answers("/healthz")
    assert rss_kib(pod) - before < 20_000


def test_a_whole_52_mb_body_without_the_token_costs_the_sidecar_nothing(
    pod: Pod, connect: Connect
) -> None:
    before = rss_kib(pod)
    sock = connect()
    sent = 0
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(head("POST", "/v1/runs/r-1/cancel", length=52_000_000))
        while sent < 52_000_000:  # until the sidecar closes the connection
            sent += sock.send(b"[" * 1_000_000)
    assert answer(sock)[0] == 401
    assert sent < 52_000_000, "the sidecar read the whole body"
    assert rss_kib(pod) - before < 20_000


@pytest.mark.parametrize(
    ("path", "limit"),
    [("/v1/runs/r-1/cancel", BODY_LIMIT), ("/v1/events", EVENTS_BODY_LIMIT)],
)
def test_a_body_over_its_cap_gets_413_at_once(
    pod: Pod, connect: Connect, path: str, limit: int
) -> None:
    sock = connect()
    sock.sendall(head("POST", path, token=TOKEN, length=limit + 1))
    assert answer(sock)[0] == 413


def test_a_chunked_body_over_its_cap_gets_413_once_the_cap_is_passed(
    pod: Pod, connect: Connect
) -> None:
    sock = connect()
    sock.sendall(
        head("POST", "/v1/runs/r-1/cancel", token=TOKEN).replace(
            b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
    )
    chunk = b"%x\r\n%s\r\n" % (BODY_LIMIT // 2, b" " * (BODY_LIMIT // 2))
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        for _ in range(3):
            sock.sendall(chunk)
    assert answer(sock)[0] == 413


def test_a_body_that_stops_coming_gets_408_after_the_read_timeout(
    pod: Pod, connect: Connect
) -> None:
    sock = connect()
    started = time.monotonic()
    sock.sendall(head("POST", "/v1/runs/r-1/cancel", token=TOKEN, length=100) + b'{"rea')
    assert answer(sock)[0] == 408
    assert time.monotonic() - started >= READ_TIMEOUT


def test_clients_that_trickle_their_headers_or_send_nothing_are_cut_off(
    pod: Pod, connect: Connect
) -> None:
    """A hundred sockets sending a byte of their headers every 20 ms, and a hundred that
    send nothing: each is closed by the sidecar, which answers others all along."""
    trickling = [connect() for _ in range(100)]
    silent = [connect() for _ in range(100)]
    for sock in trickling:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    open_ = set(trickling)
    stop = threading.Event()

    def trickle() -> None:
        while open_ and not stop.wait(0.02):
            for sock in list(open_):
                try:
                    sock.sendall(b"a")
                except OSError:  # closed by the sidecar
                    open_.discard(sock)

    thread = threading.Thread(target=trickle)
    thread.start()
    try:
        assert pod.answers("/healthz")
        wait_for("every trickling client to be cut off", lambda: not open_, timeout=60)
    finally:
        stop.set()
        thread.join()
    for sock in silent:
        assert sock.recv(1) == b""  # closed, with nothing said
    assert pod.answers("/healthz")


def test_reads_of_v1_need_the_token_and_health_and_metrics_do_not(
    pod: Pod, connect: Connect
) -> None:
    for path in ("/v1/runs", "/v1/runs/r-1", "/v1/policies"):
        sock = connect()
        sock.sendall(head("GET", path))
        assert answer(sock)[0] == 401, path
    assert pod.get("/v1/runs") == {"runs": []}
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert pod.answers(path), path
    for path in ("/docs", "/redoc"):
        assert not pod.answers(path), f"{path} is served without --docs"


def test_docs_are_served_when_asked_for(tmp_path: Path) -> None:
    pod = Pod(tmp_path)
    pod.start_sidecar(0.2, "--docs")
    try:
        assert pod.answers("/docs")
        assert pod.answers("/redoc")
    finally:
        pod.stop()
