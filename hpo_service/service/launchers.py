"""Where a study's driver process runs: a child process of the service, or a Ray job on the
cluster. The scheduler starts, polls and stops drivers only through these."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from sqlalchemy import make_url

from hpo_service.core.settings import (
    LOCAL_OBJECT_STORE_BYTES,
    PARENT_PID_VARIABLE,
    Settings,
    without_password,
)
from hpo_service.service.ray_head import LocalRayHead

logger = logging.getLogger(__name__)

DRIVER_MODULE = "hpo_service.driver"
STUDY_METADATA = "hpo_study"


class Driver(Protocol):
    def poll(self) -> int | None:
        """The exit code once the driver ended (0: it finished the study), else ``None``."""

    def kill(self) -> None: ...

    def last_output(self) -> str: ...


class Launcher(Protocol):
    def launch(self, study: str) -> Driver: ...

    def adopt(self, study: str) -> Driver | None:
        """A driver of ``study`` still running from before the service restarted, if any."""

    def stop_all(self, drivers: list[Driver]) -> None:
        """The service is stopping: end or leave its drivers."""


def launcher_for(settings: Settings) -> Launcher:
    if settings.ray_jobs_address:
        return RayJobLauncher(settings)
    return ChildProcessLauncher(settings)


def driver_environment(settings: Settings) -> dict[str, str]:
    """The settings a driver needs, as ``HPO_*`` variables."""
    return {"HPO_DATABASE_URL": settings.database_url}


@dataclass
class ChildProcess:
    process: subprocess.Popen[bytes]
    log: IO[bytes]
    log_path: Path

    def poll(self) -> int | None:
        code = self.process.poll()
        if code is not None:
            self.log.close()
        return code

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)
        self.log.close()

    def last_output(self) -> str:
        lines = [line for line in self.log_path.read_text(errors="replace").splitlines() if line]
        return lines[-1] if lines else "(no output)"


@dataclass
class ChildProcessLauncher:
    """Drivers as child processes that die with the service (the local default). Without
    ``HPO_RAY_ADDRESS`` they all join one local Ray head, started with the first of them."""

    settings: Settings
    head: LocalRayHead | None = None

    def launch(self, study: str) -> Driver:
        log_dir = self.settings.work_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        ray_env = self._ray_environment()
        log_path = log_dir / f"{study}.log"
        log = log_path.open("ab")
        env = {
            **os.environ,
            **driver_environment(self.settings),
            **ray_env,
            "HPO_WORK_DIR": str(self.settings.work_dir),
            PARENT_PID_VARIABLE: str(os.getpid()),
        }
        process = subprocess.Popen(
            [sys.executable, "-m", DRIVER_MODULE, study],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return ChildProcess(process, log, log_path)

    def _ray_environment(self) -> dict[str, str]:
        """Where drivers find Ray: the user's cluster, else this service's head (started now
        if it is not running)."""
        settings = self.settings
        if settings.ray_address:
            return {"HPO_RAY_ADDRESS": settings.ray_address}
        if self.head is None or not self.head.alive():
            if self.head is not None:
                logger.warning("the local Ray head stopped; starting a new one")
                self.head.stop()
            self.head = LocalRayHead.start(
                num_cpus=settings.ray_num_cpus or os.cpu_count() or 1,
                object_store_bytes=LOCAL_OBJECT_STORE_BYTES * settings.max_running_studies,
                log_path=settings.work_dir / "logs" / "ray-head.log",
            )
            logger.info("local Ray head started at %s", self.head.address)
        return self.head.environment()

    def adopt(self, study: str) -> Driver | None:
        return None  # child processes died with the previous service

    def stop_all(self, drivers: list[Driver]) -> None:
        for driver in drivers:
            driver.kill()
        if self.head is not None:
            self.head.stop()
            self.head = None


@dataclass
class RayJob:
    client: Any  # ray.job_submission.JobSubmissionClient
    job_id: str

    def poll(self) -> int | None:
        status = self.client.get_job_status(self.job_id)
        if not status.is_terminal():
            return None
        return 0 if status.value == "SUCCEEDED" else 1

    def kill(self) -> None:
        self.client.stop_job(self.job_id)

    def last_output(self) -> str:
        lines = [line for line in self.client.get_job_logs(self.job_id).splitlines() if line]
        return lines[-1] if lines else "(no output)"


class RayJobLauncher:
    """Drivers as Ray jobs on the cluster: they outlive a restart of the service."""

    def __init__(self, settings: Settings) -> None:
        from ray.job_submission import JobSubmissionClient

        self.settings = settings
        self.client = JobSubmissionClient(settings.ray_jobs_address)
        if make_url(settings.database_url).password is not None:
            logger.warning(
                "drivers run as Ray jobs get HPO_DATABASE_URL without its password: the Ray "
                "cluster's environment must hold HPO_DATABASE_PASSWORD"
            )

    def launch(self, study: str) -> Driver:
        job_id = self.client.submit_job(
            # -P: the job's working directory must not shadow packages (Ray keeps a ./ray there).
            entrypoint=f"python -P -m {DRIVER_MODULE} {shlex.quote(study)}",
            metadata={STUDY_METADATA: study},
            # Inside a job, Ray's own RAY_ADDRESS leads `auto` to this cluster. A job's variables
            # show in Ray's job list and dashboard: never the database's password, which the
            # cluster's own environment gives (HPO_DATABASE_PASSWORD).
            runtime_env={
                "env_vars": {
                    "HPO_DATABASE_URL": without_password(self.settings.database_url),
                    "HPO_RAY_ADDRESS": "auto",
                }
            },
        )
        return RayJob(self.client, job_id)

    def adopt(self, study: str) -> Driver | None:
        for job in self.client.list_jobs():
            metadata = job.metadata or {}
            if metadata.get(STUDY_METADATA) == study and not job.status.is_terminal():
                return RayJob(self.client, job.submission_id)
        return None

    def stop_all(self, drivers: list[Driver]) -> None:
        return None  # the jobs run on; the next service adopts them
