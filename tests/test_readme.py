"""The README's set-up commands are the ones CI runs, and its sidecar commands, run as shown,
do what it says."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.processes import TOKEN, Pod

ROOT = Path(__file__).parent.parent


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = re.findall(r"```sh\n(.+?)\n```", readme)
    test_command = next(c for c in commands if "pytest" in c)
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test_command in ci_lines


def shown(command: str) -> str:
    """The README's sh block that holds ``command``."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sh\n(.+?)\n```", readme, re.S)
    [block] = [block for block in blocks if command in block]
    return str(block)


def bash(script: str, **env: str) -> str:
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_the_sidecars_token_is_made_as_shown(tmp_path: Path) -> None:
    setup = shown("openssl rand")
    making = [line for line in setup.splitlines() if not line.startswith(("pip ", "watchdog "))]
    run = tmp_path / "run" / "watchdog"  # /run/watchdog, which the commands must make
    bash("\n".join(making).replace("/run/watchdog", str(run)))
    assert stat.S_IMODE(run.stat().st_mode) == 0o700
    assert re.fullmatch(r"[0-9a-f]{32}\n", (run / "token").read_text())


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[Pod]:
    pod = Pod(tmp_path)
    pod.start_sidecar()
    yield pod
    pod.stop()


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_the_curl_commands_list_the_runs_and_cancel_one(pod: Pod) -> None:
    run_id = str(uuid.uuid4())
    worker = pod.worker("w-1", {"hang": [run_id]})
    pod.wait_for("the run", lambda: len(pod.get("/v1/runs")["runs"]) == 1)
    commands = shown("curl").replace("http://127.0.0.1:9464", pod.url)
    assert pod.token_file.read_text().strip() == TOKEN
    output = bash(commands.replace("/run/watchdog/token", str(pod.token_file)), RUN_ID=run_id)
    listed, cancelled = answers(output)
    assert [run["run_id"] for run in listed["runs"]] == [run_id]
    assert (cancelled["run_id"], cancelled["applied"]) == (run_id, True)
    ended = worker.expect("run_id")
    assert (ended["outcome"], ended["reason"]) == ("cancelled", "stopped by ops")


def answers(output: str) -> list[Any]:
    """The JSON answers that curl printed one after the other."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while at < len(output):
        answer, at = decoder.raw_decode(output, at)
        found.append(answer)
    return found
