"""The README's set-up commands are the ones CI runs, and its examples are true."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = re.findall(r"```sh\n(.+?)\n```", readme)
    test_command = next(c for c in commands if "pytest" in c)
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test_command in ci_lines


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
