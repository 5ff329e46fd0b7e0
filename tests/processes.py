"""Real processes for the tests: a ``watchdog serve`` sidecar and agent workers."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
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


def without_file_access_override() -> list[str]:
    """A command prefix under which root obeys file modes, as any other user does; empty
    for any other user."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and setpriv (util-linux) is not installed")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]


# A time as the APIs write it: RFC 3339, in UTC, to the millisecond.
RFC_3339 = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, check: Any, timeout: float = 30) -> None:
    """Wait until ``check()`` is true; the bound is generous, as machines are shared."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.02)


def call(
    url: str, method: str, body: Any = None, token: str | None = None, timeout: float = 60
) -> tuple[int, Any]:
    """A request with a JSON body: the status, and the JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def answers(url: str) -> bool:
    """Whether ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


class Process:
    """A subprocess whose stdout lines are read, as JSON, by a thread; ``tell`` writes it
    JSON lines on its stdin. Its stderr lines are kept in ``errors``."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.popen = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.errors: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.error_reader = threading.Thread(target=self._read_errors, daemon=True)
        self.error_reader.start()

    def _read_errors(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self.errors.append(line.rstrip("\n"))

    def events(self, name: str) -> list[dict[str, Any]]:
        """The watchdog events named ``watchdog.<name>`` it has logged on stderr."""
        return [
            json.loads(line)
            for line in list(self.errors)
            if line.startswith("{") and f'"watchdog.{name}"' in line
        ]

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

    def tell(self, **fields: Any) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(json.dumps(fields) + "\n")
        self.popen.stdin.flush()

    def close_stdin(self) -> None:
        """End of input: a worker reading its stdin finishes and says it is done."""
        if self.popen.stdin is not None and not self.popen.stdin.closed:
            self.popen.stdin.close()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        with contextlib.suppress(BrokenPipeError):
            self.close_stdin()
        self.popen.wait(10)
        self.reader.join(10)  # it reads to the end of the output, then closes it
        self.error_reader.join(10)
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()


ON_CI = os.environ.get("CI") == "true"


def tool(name: str) -> str:
    """A command's path; skips the test locally when it is missing, fails it on CI."""
    beside_python = Path(sys.executable).parent / name
    found = shutil.which(name) or (str(beside_python) if beside_python.exists() else None)
    if found is None:
        reason = f"{name} is not installed (.ci/run installs it)"
        if ON_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    return found


class RedisServer:
    """A real ``redis-server`` on a free loopback port. Its data is kept in an append-only
    file in ``tmp_path``, so a restart keeps it (as a production Redis would)."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.folder = tmp_path
        self.log = (tmp_path / "redis.log").open("a")
        self.start()

    def start(self) -> None:
        self.popen = subprocess.Popen(
            [
                *(tool("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "yes", "--appendfsync", "always"),
                *("--dir", str(self.folder)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for("redis-server to answer", self._answers)

    def kill(self) -> None:
        """Stop it at once, as a crash would."""
        self.popen.kill()
        self.popen.wait(10)

    def _answers(self) -> bool:
        assert self.popen.poll() is None, "redis-server exited"
        return answers_tcp(self.port)

    def stop(self) -> None:
        if self.popen.poll() is None:
            terminate(self.popen)
        self.log.close()


def terminate(process: subprocess.Popen[Any]) -> None:
    """Ask a server to stop, and kill it if it has not within 30 s."""
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def answers_tcp(port: int) -> bool:
    """Whether a server on the loopback port answers a Redis PING."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class Pod:
    """A sidecar and its workers, on a free loopback port, with the token and a policy file."""

    def __init__(
        self, tmp_path: Path, policies: str = POLICIES, *, directory: bool = False
    ) -> None:
        """``directory``: the sidecar watches the policy file's directory, not the file."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.policy_file = tmp_path / "policies" / "watchdog.yaml"
        self.policy_file.parent.mkdir()
        self.policy_file.write_text(policies)
        self.policy_path = self.policy_file.parent if directory else self.policy_file
        self.token_file = tmp_path / "token"
        self.token_file.write_text(TOKEN + "\n")
        self.env = {
            **os.environ,
            "WATCHDOG_SIDECAR_URL": self.url,
            "WATCHDOG_SIDECAR_TOKEN": TOKEN,
        }
        self.sidecar: Process | None = None
        self.workers: list[Process] = []

    def start_sidecar(
        self,
        poll_interval: float = 0.2,
        *options: str,
        worker_timeout: float = 5,
        prefix: Sequence[str] = (),
    ) -> Process:
        """``watchdog serve`` on this pod's port, once it answers (it may take a while to
        start on a busy machine); ``prefix`` goes before the command (``setpriv ...``)."""
        args = [*prefix, sys.executable, "-m", "watchdog", "serve"]
        args += ["--policies", str(self.policy_path)]
        args += ["--port", str(self.port), "--token-file", str(self.token_file)]
        args += ["--poll-interval", str(poll_interval), "--worker-timeout", str(worker_timeout)]
        sidecar = self.sidecar = Process([*args, *options], self.env)

        def answering() -> bool:
            assert sidecar.popen.poll() is None, "\n".join(
                ["watchdog serve exited:", *sidecar.errors]
            )
            return self.answers("/healthz")

        self.wait_for("the sidecar to answer", answering, timeout=60)
        return sidecar

    def worker(self, name: str, plan: dict[str, Any]) -> Process:
        return self.start_workers({name: plan})[name]

    def start_workers(self, plans: dict[str, dict[str, Any]]) -> dict[str, Process]:
        """Workers started side by side (each takes a while to import), ready when returned."""
        started = {
            name: Process(
                [sys.executable, "-m", "tests.sidecar_worker", name, json.dumps(plan)], self.env
            )
            for name, plan in plans.items()
        }
        self.workers += started.values()
        for worker in started.values():
            worker.expect("ready", timeout=120)  # a busy machine imports slowly
        return started

    def answers(self, path: str) -> bool:
        return answers(self.url + path)

    def get(self, path: str, token: str | None = TOKEN) -> Any:
        request = urllib.request.Request(self.url + path)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read().decode()
            return json.loads(body) if path != "/metrics" else body

    def call(
        self, method: str, path: str, body: Any = None, token: str | None = TOKEN
    ) -> tuple[int, Any]:
        """A request with a JSON body: the status, and the JSON answer."""
        return call(self.url + path, method, body, token)

    def post(self, path: str, body: Any = None, token: str | None = TOKEN) -> int:
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body or {}).encode(), method="POST"
        )
        request.add_header("Content-Type", "application/json")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return error.code

    def wait_for(self, what: str, check: Any, timeout: float = 30) -> None:
        wait_for(what, check, timeout)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(self.get("/metrics"))
            for s in family.samples
        }

    def stop(self) -> None:
        for process in [*self.workers, *([self.sidecar] if self.sidecar else [])]:
            process.stop()
