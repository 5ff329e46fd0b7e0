"""The README's set-up commands are the ones CI runs, and its examples are true."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = re.findall(r"```sh\n(.+?)\n```", readme)
    test_command = next(c for c in commands if "pytest" in c)
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test_command in ci_lines


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
