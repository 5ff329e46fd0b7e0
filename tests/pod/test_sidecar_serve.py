"""``watchdog serve`` as a command: what it says when it starts, and when it cannot."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import POLICIES, ROOT, TOKEN, Pod, Process, answers, wait_for


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "watchdog", "serve", *args],
        cwd=ROOT,
        env={**os.environ, "WATCHDOG_SIDECAR_TOKEN": "", **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "watchdog.yaml"
    path.write_text(POLICIES)
    return path


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (
            "no such token file",
            "cannot read the token file {tmp}/missing: No such file or directory",
        ),
        ("a directory as token file", "cannot read the token file {tmp}: Is a directory"),
        ("an empty token file", "the token file {tmp}/empty is empty"),
        (
            "no token at all",
            (
                "the sidecar needs a bearer token for its API: --token-file FILE, "
                "or WATCHDOG_SIDECAR_TOKEN"
            ),
        ),
        ("port 70000", "--port must be from 0 to 65535, got 70000"),
        ("port taken", "cannot listen on 127.0.0.1:{port}: Address already in use"),
        ("poll interval 0", "--poll-interval must be a number of seconds above 0, got 0.0"),
        ("read timeout nan", "--read-timeout must be a number of seconds above 0, got nan"),
        ("heartbeat -1", "--heartbeat must be a number of seconds above 0, got -1.0"),
    ],
)
def test_a_sidecar_that_cannot_start_says_why_in_one_line_and_exits_2(
    case: str,
    expected: str,
    *,
    tmp_path: Path,
    policy_file: Path,
    token_file: Path,
    taken_port: int,
) -> None:
    (tmp_path / "empty").write_text("\n")
    token = {
        "no such token file": ["--token-file", str(tmp_path / "missing")],
        "a directory as token file": ["--token-file", str(tmp_path)],
        "an empty token file": ["--token-file", str(tmp_path / "empty")],
        "no token at all": [],
    }.get(case, ["--token-file", str(token_file)])
    port = {"port 70000": "70000", "port taken": str(taken_port)}.get(case, "0")
    options = {
        "poll interval 0": ["--poll-interval", "0"],
        "read timeout nan": ["--read-timeout", "nan"],
        "heartbeat -1": ["--heartbeat", "-1"],
    }.get(case, [])
    result = serve("--policies", str(policy_file), "--port", port, *token, *options)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "watchdog serve: " + expected.format(tmp=tmp_path, port=taken_port)
    ]


def test_invalid_policies_at_start_are_located_and_exit_1(tmp_path: Path, token_file: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(POLICIES.replace("max_steps: 5", "max_steps: -5"))
    result = serve("--policies", str(bad), "--token-file", str(token_file), "--port", "0")
    assert result.returncode == 1
    # as `watchdog check` shows them: located, with the line and a caret under the column
    assert result.stderr.splitlines() == [
        (
            f"{bad}:4:72: policies[0].step_count.max_steps: expected a whole number greater "
            "than 0, got -5"
        ),
        "  |",
        "4 |   - {name: loop-steps, match: {graph: [loop]}, step_count: {max_steps: -5}}",
        "  |                                                                        ^",
    ]


def test_on_start_it_says_where_it_listens_and_which_policies_it_loaded(tmp_path: Path) -> None:
    pod = Pod(tmp_path)
    sidecar = pod.start_sidecar()
    try:
        hash_ = pod.get("/readyz")["policies"]["hash"]
        assert sidecar.errors[:2] == [
            f"watchdog serve: listening on http://127.0.0.1:{pod.port}",
            (
                f"watchdog serve: 3 policies from {pod.policy_file} (hash {hash_}): "
                "loop-steps, slow-steps, backstop"
            ),
        ]
    finally:
        pod.stop()


def test_port_0_takes_a_free_port_and_says_which(policy_file: Path, token_file: Path) -> None:
    args = ["--policies", str(policy_file), "--token-file", str(token_file), "--port", "0"]
    sidecar = Process([sys.executable, "-m", "watchdog", "serve", *args], dict(os.environ))
    try:
        wait_for("the listening line", lambda: bool(sidecar.errors), timeout=60)
        listening = re.fullmatch(
            r"watchdog serve: listening on (http://127\.0\.0\.1:\d+)", sidecar.errors[0]
        )
        assert listening, sidecar.errors
        wait_for("an answer there", lambda: answers(f"{listening[1]}/healthz"), timeout=60)
    finally:
        sidecar.stop()


def test_every_option_says_what_it_does_and_its_default() -> None:
    result = serve("--help", env={"COLUMNS": "100"})
    assert result.returncode == 0, result.stderr
    options = result.stdout.split("\noptions:\n", 1)[1]
    # An option's entry starts at its name; its help may wrap onto the lines below.
    entries = re.findall(r"^  (-\S+(?: [A-Z]+)?)\s+(.*?)(?=^  -|\Z)", options, re.M | re.S)
    helps = {name.split()[0]: " ".join(text.split()) for name, text in entries}
    assert helps.pop("-h,") == "--help show this help message and exit"
    assert helps == {
        "--policies": "the policy file, or a directory of them, to serve (required)",
        "--host": "the address to listen on (default: 127.0.0.1, loopback only)",
        "--port": "the port to listen on; 0 takes a free one (default: 9464)",
        "--token-file": (
            "a file holding the bearer token of the /v1/ endpoints (default: the token in the "
            "WATCHDOG_SIDECAR_TOKEN environment variable; one of the two is required)"
        ),
        "--poll-interval": "seconds between checks of the policy files for changes (default: 1)",
        "--worker-timeout": (
            "seconds of silence after which a worker's runs count as lost (default: 15)"
        ),
        "--read-timeout": (
            "seconds a client has to send a request's headers, and again its body (default: 10)"
        ),
        "--heartbeat": (
            "with Redis (WATCHDOG_REDIS_URL): seconds between listings of the pod's runs in the "
            "fleet's registry; a pod silent for five is dropped (default: 2)"
        ),
        "--docs": "serve the API's pages at /docs and /redoc (default: off)",
    }


def test_the_sidecar_imports_no_langgraph() -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import watchdog._pod.sidecar"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert "watchdog._pod.sidecar" in imported
    assert not {m for m in imported if m.split(".")[0] in ("langgraph", "langchain_core")}
