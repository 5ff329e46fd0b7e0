"""deploy/: lint and validate every file, test the alerts with promtool, and run every
dashboard query against a real Prometheus scraping a real ``watchdog serve``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.processes import Pod, Process, free_port, tool
from watchdog import load_policy_text

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"


def run(*args: str, cwd: Path = ROOT) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_promtool_checks_and_unit_tests_the_alert_rules() -> None:
    promtool = tool("promtool")
    assert "SUCCESS: 7 rules found" in run(
        promtool, "check", "rules", "alerts.yml", cwd=DEPLOY / "prometheus"
    )
    assert "SUCCESS" in run(promtool, "test", "rules", "alerts_test.yml", cwd=DEPLOY / "prometheus")


def test_every_alert_links_its_runbook_section_in_the_repository() -> None:
    repository = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    prefix = repository["Repository"] + "/blob/main/deploy/README.md#"
    readme = (DEPLOY / "README.md").read_text()
    # GitHub's anchor for a heading: lowercased, punctuation dropped, spaces as hyphens.
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-")
        for title in re.findall(r"^#+ (.+)$", readme, re.MULTILINE)
    }
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    rules = [rule for group in alerts["groups"] for rule in group["rules"]]
    for rule in rules:
        url = rule["annotations"]["runbook_url"]
        assert url.startswith(prefix), rule["alert"]
        assert url.removeprefix(prefix) in anchors, rule["alert"]
        assert url.removeprefix(prefix) == rule["alert"].lower()
    assert len(rules) == 7


def test_the_kustomization_sets_every_image_the_deployment_names() -> None:
    kubernetes = DEPLOY / "kubernetes"
    kustomization = yaml.safe_load((kubernetes / "kustomization.yaml").read_text())
    deployment = yaml.safe_load((kubernetes / "deployment.yaml").read_text())
    assert all((kubernetes / resource).is_file() for resource in kustomization["resources"])
    containers = deployment["spec"]["template"]["spec"]["containers"]
    named = {container["image"] for container in containers}
    set_by_kustomization = {image["name"] for image in kustomization["images"]}
    assert named == set_by_kustomization == {"langgraph-watchdog", "support-agent"}
    # The steps to build and push the sidecar's image are written down.
    assert "docker build -f deploy/docker/Dockerfile" in (DEPLOY / "README.md").read_text()


def test_the_prometheus_rule_for_the_operator_is_the_alerts_file() -> None:
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    rule = yaml.safe_load((DEPLOY / "kubernetes" / "prometheusrule.yaml").read_text())
    assert rule["spec"] == alerts


@pytest.mark.parametrize("dockerfile", ["docker/Dockerfile", "compose/agent/Dockerfile"])
def test_dockerfiles_are_hadolint_clean(dockerfile: str) -> None:
    run(tool("hadolint"), str(DEPLOY / dockerfile))


def test_the_compose_file_is_valid_against_the_compose_specification() -> None:
    run(
        tool("check-jsonschema"),
        "--builtin-schema",
        "vendor.compose-spec",
        str(DEPLOY / "compose" / "compose.yaml"),
    )


def test_the_core_kubernetes_kinds_validate() -> None:
    manifests = [
        str(DEPLOY / "kubernetes" / f)
        for f in ("configmap.yaml", "deployment.yaml", "secret.yaml", "service.yaml")
    ]
    output = run(tool("kubernetes-validate"), "--strict", *manifests)
    assert output.count(" passed for resource ") == 5  # secret.yaml holds two


def test_the_configmap_carries_the_default_policies() -> None:
    configmap = yaml.safe_load((DEPLOY / "kubernetes" / "configmap.yaml").read_text())
    assert configmap["data"]["default.yaml"] == (ROOT / "policies" / "default.yaml").read_text()
    assert len(load_policy_text(configmap["data"]["default.yaml"])) == 5


# -- the dashboard, against a real Prometheus ------------------------------------------------


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads((DEPLOY / "grafana" / "watchdog.json").read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]


def test_the_dashboard_is_templated_on_datasource_and_graph() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "watchdog.json").read_text())
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource", "graph"]
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[Pod, str]]:
    binary = tool("prometheus")
    pod = Pod(tmp_path)
    pod.start_sidecar()
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{DEPLOY / 'prometheus' / 'alerts.yml'}]\n"
        "scrape_configs:\n"
        "  - job_name: watchdog-sidecar\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{pod.port}']}}]\n"
    )
    server = Process(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        dict(os.environ),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        yield pod, url
    finally:
        server.stop()
        pod.stop()


def query(url: str, expr: str) -> dict[str, Any]:
    address = f"{url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    try:
        with urllib.request.urlopen(address, timeout=5) as response:
            return dict(json.load(response))
    except urllib.error.HTTPError as error:
        return dict(json.load(error))


def test_every_dashboard_query_runs_against_a_real_prometheus(prometheus: tuple[Pod, str]) -> None:
    pod, url = prometheus
    worker = pod.worker("w-1", {"hang": [str(uuid.uuid4())], "loops": 4, "chat": 3})
    for _ in range(7):  # the four loops and the three chats end; the hung run stays live
        worker.expect("run_id")

    def scraped_twice() -> bool:
        answer = query(url, "count_over_time(watchdog_runs_started_total[1m])")
        counts = [float(r["value"][1]) for r in answer.get("data", {}).get("result", [])]
        return bool(counts) and min(counts) >= 3

    pod.wait_for("Prometheus to scrape the sidecar a few times", scraped_twice, timeout=30)
    # Every metric the sidecar declares, samples or not yet (a labelled counter has none
    # until its first move).
    exported = set(re.findall(r"^(?:# TYPE )?(watchdog_[a-z_]+)", pod.get("/metrics"), re.M))
    empty = []
    for title, expr in dashboard_queries():
        concrete = expr.replace("$__rate_interval", "1m").replace("$graph", ".*")
        answer = query(url, concrete)
        assert answer["status"] == "success", (title, concrete, answer)
        names = set(re.findall(r"\bwatchdog_[a-z_]+", concrete))
        assert names <= exported, (title, names - exported)
        if not answer["data"]["result"]:
            empty.append(title)
    must_have_data = {
        "Cancellations by policy",
        "Active runs by graph",
        "Run duration",
        "Tokens per second",
    }
    assert not must_have_data & set(empty), empty
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    for rule in alerts["groups"][0]["rules"]:
        names = set(re.findall(r"\bwatchdog_[a-z_]+", rule["expr"]))
        assert names <= exported, rule["alert"]
