"""The service's scheduler: queued studies start in order of submission, each in its own driver
(a child process, or a Ray job on a cluster), up to ``max_running_studies`` at once; a driver
that dies is started again."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from hpo_service.core.records import StudyStatus
from hpo_service.core.settings import Settings
from hpo_service.db.optuna_storage import optuna_storage
from hpo_service.db.reconcile import fail_cut_off_trials
from hpo_service.db.store import Store
from hpo_service.service.launchers import Driver, Launcher, launcher_for

logger = logging.getLogger(__name__)

MAX_DRIVER_CRASHES = 3
CANCEL_GRACE_S = 30.0


@dataclass
class Scheduler:
    """Owns the drivers of this service; the database says what should run."""

    settings: Settings
    store: Store
    launcher: Launcher | None = None
    drivers: dict[str, Driver] = field(default_factory=dict)
    crashes: dict[str, int] = field(default_factory=dict)
    cancel_seen_at: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _wake: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Take over the studies a previous service left running, then schedule."""
        self.launcher = self.launcher or launcher_for(self.settings)
        for name in self.store.study_names(StudyStatus.RUNNING):
            driver = self.launcher.adopt(name)
            if driver is not None:
                logger.info("study %s: its driver is still running; following it", name)
                self.drivers[name] = driver
            else:
                logger.info("study %s was running when the service stopped: resuming it", name)
                self.store.set_status(name, StudyStatus.QUEUED, only_from={StudyStatus.RUNNING})
        self._thread = threading.Thread(target=self._loop, name="hpo-scheduler", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look at the queue now instead of at the next interval (a study was just submitted)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop scheduling; running studies resume (or are followed) at the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.launcher is not None:
            self.launcher.stop_all(list(self.drivers.values()))
        self.drivers.clear()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # the loop must outlive a database hiccup; it is logged
                logger.exception("scheduler tick failed")
            self._wake.wait(self.settings.scheduler_interval_s)
            self._wake.clear()

    def tick(self) -> None:
        assert self.launcher is not None, "start() first"
        self._reap()
        free = self.settings.max_running_studies - len(self.drivers)
        # a launched study stays queued until its driver starts it: never launch it twice
        waiting = [n for n in self.store.study_names(StudyStatus.QUEUED) if n not in self.drivers]
        for name in waiting[: max(free, 0)]:
            self.drivers[name] = self.launcher.launch(name)
            logger.info("study %s: driver started", name)

    def _reap(self) -> None:
        for name, driver in list(self.drivers.items()):
            status = self.store.get_study(name).status
            code = driver.poll()
            if code is None:
                self._enforce_cancel(name, driver, status)
                continue
            del self.drivers[name]
            self.cancel_seen_at.pop(name, None)
            if status.is_active:  # it ended before its study did, maybe before it started
                self._driver_died(name, code, driver.last_output())
            elif status == StudyStatus.CANCELLED:
                storage = optuna_storage(self.settings.database_url)
                fail_cut_off_trials(self.store, storage, name, "cancelled")

    def _enforce_cancel(self, name: str, driver: Driver, status: StudyStatus) -> None:
        """A cancelled study's driver stops its trials itself; one that does not is killed."""
        if status != StudyStatus.CANCELLED:
            return
        seen = self.cancel_seen_at.setdefault(name, time.monotonic())
        if time.monotonic() - seen > CANCEL_GRACE_S:
            driver.kill()

    def _driver_died(self, name: str, code: int, last_output: str) -> None:
        self.crashes[name] = self.crashes.get(name, 0) + 1
        if self.crashes[name] < MAX_DRIVER_CRASHES:
            logger.warning("study %s: driver exited with %d; resuming it", name, code)
            self.store.set_status(name, StudyStatus.QUEUED, only_from={StudyStatus.RUNNING})
            return
        self.store.set_status(
            name,
            StudyStatus.FAILED,
            f"its driver exited with code {code} {self.crashes[name]} times; last: {last_output}",
        )
