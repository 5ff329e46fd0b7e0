"""The README's set-up commands are the ones CI runs, and its examples, run as shown, do
what it says."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

import watchdog
from tests.processes import TOKEN, Pod, tool

ROOT = Path(__file__).parent.parent


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = re.findall(r"```sh\n(.+?)\n```", readme)
    test_command = next(c for c in commands if "pytest" in c)
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test_command in ci_lines


def test_the_readme_documents_every_name_the_package_exports() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### What `watchdog` exports", 1)[1].split("\n#", 1)[0]
    documented = set(re.findall(r"`(\w+)[`(]", section))
    assert set(watchdog.__all__) - documented == set()


def test_the_readme_way_to_route_events_through_logging_quiets_the_info_events() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    events_section = readme[readme.index("## Events") :]
    (configure,) = re.findall(r"```python\n(.+?)\n```", events_section, re.DOTALL)[:1]
    runaway = textwrap.dedent(
        """
        from tests.graphs import Bodies, endless, policies
        from watchdog import RunCancelled, Supervisor

        supervisor = Supervisor(policies("- {name: steps, step_count: {max_steps: 2}}"))
        app = supervisor.attach(endless(Bodies(), is_async=False), name="loop")
        try:
            app.invoke({"count": 0}, {"configurable": {"thread_id": "1"}})
        except RunCancelled:
            pass
        """
    )

    result = subprocess.run(
        [sys.executable, "-c", configure + runaway],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    events = [json.loads(line) for line in result.stderr.splitlines()]
    assert [(e["event"], e["level"]) for e in events] == [
        ("watchdog.violation", "warning"),
        ("watchdog.drain_requested", "warning"),
        ("watchdog.run_cancelled", "warning"),
    ]
    assert result.stdout == ""


def test_the_readme_errors_example_is_what_watchdog_check_prints(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n### Errors\n", 1)[1].split("\n## ", 1)[0]
    policy_file = re.findall(r"```yaml\n(.+?)```", section, re.DOTALL)[0]
    command, *output = re.findall(r"```text\n(.+?)```", section, re.DOTALL)[0].splitlines()
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "default.yaml").write_text(policy_file, encoding="utf-8")

    assert command == "$ watchdog check policies/"
    result = subprocess.run(
        [sys.executable, "-m", "watchdog", "check", "policies/"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == output


def test_the_project_cites_no_document_outside_the_repository() -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    citing = [
        path
        for path in tracked
        if (ROOT / path).is_file()
        and re.search(
            r"DESIGN(\.md| §)", (ROOT / path).read_text(encoding="utf-8", errors="replace")
        )
    ]
    assert citing == []


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


def test_the_curl_commands_list_the_runs_and_cancel_one(pod: Pod) -> None:
    tool("curl")
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
