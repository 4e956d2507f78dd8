"""What can be checked of the deployment without a Docker engine or a cluster: the compose file
resolves, the Dockerfiles pass hadolint, and every YAML example in the docs parses."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def yaml_blocks(markdown: Path) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", markdown.read_text(), flags=re.S)


def test_compose_file_resolves() -> None:
    env = dict(os.environ, POSTGRES_PASSWORD="secret", RAY_AUTH_TOKEN="token")
    run = subprocess.run(
        [BIN / "docker-compose", "-f", ROOT / "docker" / "compose.yaml", "config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    config = yaml.safe_load(run.stdout)
    services = config["services"]
    assert {"postgres", "migrate", "ray-head", "gpu-worker", "api"} <= set(services)
    assert "healthcheck" in services["postgres"]
    assert services["migrate"]["command"] == ["hpo", "db", "upgrade"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    api = services["api"]
    assert api["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert api["environment"]["HPO_RAY_ADDRESS"] == "ray-head:6379"
    assert api["environment"]["HPO_DATABASE_URL"].startswith("postgresql://")
    [gpu] = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["capabilities"] == ["gpu"] and gpu["driver"] == "nvidia"


def test_compose_refuses_to_run_without_its_secrets() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("POSTGRES_PASSWORD", "RAY_AUTH_TOKEN")}
    run = subprocess.run(
        [BIN / "docker-compose", "-f", ROOT / "docker" / "compose.yaml", "config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    assert "POSTGRES_PASSWORD" in run.stderr


@pytest.mark.parametrize("dockerfile", sorted((ROOT / "docker").glob("Dockerfile.*")))
def test_dockerfiles_pass_hadolint(dockerfile: Path) -> None:
    run = subprocess.run(
        [BIN / "hadolint", dockerfile], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_kubernetes_examples_parse() -> None:
    documents = [
        d for block in yaml_blocks(ROOT / "docs" / "deploy.md") for d in yaml.safe_load_all(block)
    ]
    kinds = {d.get("kind") for d in documents if isinstance(d, dict)}
    assert {"Secret", "RayCluster", "Job", "Deployment"} <= kinds
    [cluster] = [d for d in documents if isinstance(d, dict) and d.get("kind") == "RayCluster"]
    [group] = cluster["spec"]["workerGroupSpecs"]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"


def test_ci_examples_parse_and_use_the_gate() -> None:
    github, gitlab = yaml_blocks(ROOT / "docs" / "ci.md")
    workflow = yaml.safe_load(github)
    steps = workflow["jobs"]["tune"]["steps"]
    commands = "\n".join(step.get("run", "") for step in steps)
    for needed in ("hpo submit", "--wait", "hpo best", "--format env", "hpo gate"):
        assert needed in commands
    assert any(step.get("uses", "").startswith("actions/upload-artifact") for step in steps)

    pipeline = yaml.safe_load(gitlab)
    assert pipeline["stages"] == ["tune", "gate"]
    assert pipeline["tune"]["artifacts"]["reports"]["dotenv"] == "best.env"
    assert any("hpo gate" in line for line in pipeline["gate"]["script"])
