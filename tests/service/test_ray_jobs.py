"""On a Ray cluster, each study's driver is a Ray job: it runs on the cluster, and a restarted
service follows the job it left running instead of starting the study again. The job is never
given the database's password: the cluster's environment holds it."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from databases import postgres_database
from helpers import tiny_study, wait_until_midway
from servers import RayHead, Service
from sqlalchemy import make_url

pytestmark = pytest.mark.slow  # end to end: a real service, Ray or CLI process

BIN = Path(sys.executable).parent
FINISHED = {"completed", "failed", "cancelled"}


PASSWORD = f"pw-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A Ray head with its job server, the database's password in its environment; the
    service's settings to use it."""
    folder = tmp_path_factory.mktemp("ray-head")
    head = RayHead(folder, jobs=True, HPO_DATABASE_PASSWORD=PASSWORD).wait()
    try:
        yield {"HPO_RAY_JOBS_ADDRESS": str(head.jobs_url), "RAY_AUTH_MODE": "token"}
    finally:
        head.kill()


def study_jobs(jobs_address: str, study: str) -> list[dict]:
    """The status and runtime environment of each Ray job of ``study``, asked in a process with
    Ray's token auth on."""
    script = (
        "import json, sys; from ray.job_submission import JobSubmissionClient; "
        "jobs = JobSubmissionClient(sys.argv[1]).list_jobs(); "
        "print(json.dumps([{'status': j.status.value, 'runtime_env': j.runtime_env} "
        "for j in jobs if (j.metadata or {}).get('hpo_study') == sys.argv[2]]))"
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


def job_driver_environment(study: str) -> dict[str, str]:
    """The environment of the job's driver process (the cluster runs on this machine)."""
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            cmdline = process.cmdline()
            if "hpo_service.driver" in cmdline and cmdline[-1] == study:
                environment = process.environ()
                if environment.get("HPO_DATABASE_PASSWORD") == PASSWORD:  # this test's cluster
                    return environment
    raise AssertionError(f"no driver of {study} runs on the cluster")


def test_studies_run_as_ray_jobs_that_outlive_the_service(
    ray_cluster: dict[str, str],
    tiny_models: dict[str, Path],
    sentiment_files: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    with postgres_database() as url:
        database_url = make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)
        run_a_study_as_a_job(database_url, ray_cluster, tiny_models, sentiment_files, tmp_path)


def run_a_study_as_a_job(
    database_url: str,
    ray_cluster: dict[str, str],
    tiny_models: dict[str, Path],
    sentiment_files: tuple[Path, Path],
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
    first = Service(database_url, tmp_path / "work", roots, **ray_cluster).start()
    try:
        assert first.client.get("/readyz").json()["ray"].startswith("ok")
        assert first.client.post("/v1/studies", json=document).status_code == 201
        wait_until_midway(first, "as-a-job", finished=1)
        # The job's variables (in Ray's job list and dashboard) hold no password; its driver
        # has the cluster's.
        [job] = study_jobs(ray_cluster["HPO_RAY_JOBS_ADDRESS"], "as-a-job")
        assert PASSWORD not in json.dumps(job["runtime_env"])
        assert job["runtime_env"]["env_vars"]["HPO_DATABASE_URL"].startswith("postgresql")
        assert PASSWORD not in job_driver_environment("as-a-job")["HPO_DATABASE_URL"]
    finally:
        first.kill()  # the job runs on without the service

    with Service(database_url, tmp_path / "work", roots, **ray_cluster) as second:
        final = second.wait_for("as-a-job", FINISHED, timeout=600)
        trials = second.client.get("/v1/studies/as-a-job/trials").json()["items"]
    assert final["status"] == "completed", final
    assert final["progress"]["finished"] == 5
    assert not any("interrupted" in (t["error"] or "") for t in trials)  # nothing was cut off
    # One job, followed by the second service, not started again; it ends once Ray shuts down.
    deadline = time.monotonic() + 60
    while (jobs := statuses(ray_cluster["HPO_RAY_JOBS_ADDRESS"], "as-a-job")) == ["RUNNING"]:
        assert time.monotonic() < deadline, jobs
        time.sleep(1)
    assert jobs == ["SUCCEEDED"]


def statuses(jobs_address: str, study: str) -> list[str]:
    return [job["status"] for job in study_jobs(jobs_address, study)]
