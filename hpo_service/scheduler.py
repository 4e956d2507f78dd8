"""The service's scheduler: queued studies start in order of submission, each in its own driver
process, up to ``max_running_studies`` at once; a driver that dies is started again."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from hpo_service.db.store import Store
from hpo_service.db.tables import StudyStatus
from hpo_service.driver import PARENT_PID_VARIABLE
from hpo_service.settings import Settings

logger = logging.getLogger(__name__)

MAX_DRIVER_CRASHES = 3
CANCEL_GRACE_S = 30.0
CANCELLED_RUNNING = "cancelled while running"


@dataclass
class Driver:
    process: subprocess.Popen[bytes]
    log: IO[bytes]
    log_path: Path
    cancel_seen_at: float | None = None


@dataclass
class Scheduler:
    """Owns the driver processes of this service; the database says what should run."""

    settings: Settings
    store: Store
    drivers: dict[str, Driver] = field(default_factory=dict)
    crashes: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Queue again every study a previous service left running, then schedule."""
        for name in self.store.study_names(StudyStatus.RUNNING):
            logger.info("study %s was running when the service stopped: resuming it", name)
            self.store.set_status(name, StudyStatus.QUEUED, only_from={StudyStatus.RUNNING})
        self._thread = threading.Thread(target=self._loop, name="hpo-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop scheduling and end the drivers; their studies resume at the next start."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for driver in self.drivers.values():
            driver.process.kill()
            driver.process.wait(timeout=30)
            driver.log.close()
        self.drivers.clear()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # the loop must outlive a database hiccup; it is logged
                logger.exception("scheduler tick failed")
            self._stop.wait(self.settings.scheduler_interval_s)

    def tick(self) -> None:
        self._reap()
        free = self.settings.max_running_studies - len(self.drivers)
        for name in self.store.study_names(StudyStatus.QUEUED)[: max(free, 0)]:
            self._launch(name)

    def _launch(self, name: str) -> None:
        log_dir = self.settings.work_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{name}.log"
        log = log_path.open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "hpo_service.driver", name],
            env=self._driver_environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.drivers[name] = Driver(process=process, log=log, log_path=log_path)
        logger.info("study %s: driver %d started", name, process.pid)

    def _driver_environment(self) -> dict[str, str]:
        settings = self.settings
        cpus = settings.ray_num_cpus or max(
            1, (os.cpu_count() or 1) // settings.max_running_studies
        )
        env = dict(
            os.environ,
            HPO_DATABASE_URL=settings.database_url,
            HPO_WORK_DIR=str(settings.work_dir),
            HPO_RAY_NUM_CPUS=str(cpus),
            **{PARENT_PID_VARIABLE: str(os.getpid())},
        )
        if settings.ray_address:
            env["HPO_RAY_ADDRESS"] = settings.ray_address
        return env

    def _reap(self) -> None:
        for name, driver in list(self.drivers.items()):
            status = self.store.get_study(name).status
            code = driver.process.poll()
            if code is None:
                self._enforce_cancel(name, driver, status)
                continue
            driver.log.close()
            del self.drivers[name]
            if status == StudyStatus.RUNNING:
                self._driver_died(name, code, driver.log_path)
            elif status == StudyStatus.CANCELLED:
                self.store.fail_running_trials(name, CANCELLED_RUNNING)

    def _enforce_cancel(self, name: str, driver: Driver, status: StudyStatus) -> None:
        """A cancelled study's driver stops its trials itself; one that does not is killed."""
        if status != StudyStatus.CANCELLED:
            return
        now = time.monotonic()
        if driver.cancel_seen_at is None:
            driver.cancel_seen_at = now
        elif now - driver.cancel_seen_at > CANCEL_GRACE_S:
            driver.process.kill()

    def _driver_died(self, name: str, code: int, log_path: Path) -> None:
        self.crashes[name] = self.crashes.get(name, 0) + 1
        if self.crashes[name] < MAX_DRIVER_CRASHES:
            logger.warning("study %s: driver exited with %d; resuming it", name, code)
            self.store.set_status(name, StudyStatus.QUEUED, only_from={StudyStatus.RUNNING})
            return
        tail = _last_line(log_path)
        self.store.set_status(
            name,
            StudyStatus.FAILED,
            f"its driver exited with code {code} {self.crashes[name]} times; last: {tail}",
        )


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
