"""On a Ray cluster, each study's driver is a Ray job: it runs on the cluster, and a restarted
service follows the job it left running instead of starting the study again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import tiny_study, wait_until_midway
from servers import RayHead, Service

BIN = Path(sys.executable).parent
FINISHED = {"completed", "failed", "cancelled"}


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A Ray head with its job server; the service's settings to use it."""
    head = RayHead(tmp_path_factory.mktemp("ray-head"), jobs=True).wait()
    try:
        yield {"HPO_RAY_JOBS_ADDRESS": str(head.jobs_url), "RAY_AUTH_MODE": "token"}
    finally:
        head.kill()


def study_jobs(jobs_address: str, study: str) -> list[str]:
    """Statuses of the Ray jobs of ``study``, asked in a process with Ray's token auth on."""
    script = (
        "import json, sys; from ray.job_submission import JobSubmissionClient; "
        "jobs = JobSubmissionClient(sys.argv[1]).list_jobs(); "
        "print(json.dumps([j.status.value for j in jobs "
        "if (j.metadata or {}).get('hpo_study') == sys.argv[2]]))"
    )
    listed = subprocess.run(
        [sys.executable, "-c", script, jobs_address, study],
        env=dict(os.environ, RAY_AUTH_MODE="token"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)


def test_studies_run_as_ray_jobs_that_outlive_the_service(
    ray_cluster: dict[str, str],
    tiny_models: dict[str, Path],
    sentiment_files: tuple[Path, Path],
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    document = tiny_study(
        "as-a-job",
        tiny_models["bert"],
        sentiment_files,
        parameters={
            "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "num_train_epochs": 2,
        },
        dataset={"max_train_samples": 160},
        limits={"trials": 5},
    )
    roots = [sentiment_files[0].parent]
    first = Service(sqlite_url, tmp_path / "work", roots, **ray_cluster).start()
    try:
        assert first.client.get("/readyz").json()["ray"].startswith("ok")
        assert first.client.post("/v1/studies", json=document).status_code == 201
        wait_until_midway(first, "as-a-job", finished=1)
    finally:
        first.kill()  # the job runs on without the service

    with Service(sqlite_url, tmp_path / "work", roots, **ray_cluster) as second:
        final = second.wait_for("as-a-job", FINISHED, timeout=600)
        trials = second.client.get("/v1/studies/as-a-job/trials").json()["items"]
    assert final["status"] == "completed", final
    assert final["progress"]["finished"] == 5
    assert not any("interrupted" in (t["error"] or "") for t in trials)  # nothing was cut off
    # One job, followed by the second service, not started again; it ends once Ray shuts down.
    deadline = time.monotonic() + 60
    while (jobs := study_jobs(ray_cluster["HPO_RAY_JOBS_ADDRESS"], "as-a-job")) == ["RUNNING"]:
        assert time.monotonic() < deadline, jobs
        time.sleep(1)
    assert jobs == ["SUCCEEDED"]
