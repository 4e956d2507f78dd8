"""The scheduler on a real store (SQLite) with drivers that are fakes: queued studies get drivers
in order and within ``max_running_studies``, crashed drivers are resumed then given up on with
their last output, cancelled studies' drivers are killed after a grace, and a restarted service
follows or resumes what was running."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hpo_service.core.definition import StudyDefinition
from hpo_service.core.records import StudyStatus, TrialState
from hpo_service.core.settings import Settings
from hpo_service.db.store import Store
from hpo_service.service.scheduler import CANCEL_GRACE_S, MAX_DRIVER_CRASHES, Scheduler
from hpo_service.service.studies import cancel_study


@dataclass
class FakeDriver:
    """A driver the test ends: ``code`` is its exit code once it has ended."""

    code: int | None = None
    output: str = "(no output)"
    killed: bool = False

    def poll(self) -> int | None:
        return self.code

    def kill(self) -> None:
        self.killed, self.code = True, -9

    def last_output(self) -> str:
        return self.output


@dataclass
class FakeLauncher:
    still_running: dict[str, FakeDriver] = field(default_factory=dict)  # from before a restart
    launched: list[tuple[str, FakeDriver]] = field(default_factory=list)
    stopped: list[FakeDriver] = field(default_factory=list)

    def launch(self, study: str) -> FakeDriver:
        driver = FakeDriver()
        self.launched.append((study, driver))
        return driver

    def adopt(self, study: str) -> FakeDriver | None:
        return self.still_running.get(study)

    def stop_all(self, drivers: list[FakeDriver]) -> None:
        self.stopped.extend(drivers)

    def names(self) -> list[str]:
        return [name for name, _ in self.launched]

    def last(self, study: str) -> FakeDriver:
        return [driver for name, driver in self.launched if name == study][-1]


@pytest.fixture
def store(sqlite_url: str) -> Store:
    return Store.open(sqlite_url)


def scheduler(
    store: Store, sqlite_url: str, max_running: int = 1
) -> tuple[Scheduler, FakeLauncher]:
    """A scheduler the test ticks itself (its own loop, once started, waits an hour)."""
    settings = Settings(
        database_url=sqlite_url, max_running_studies=max_running, scheduler_interval_s=3600
    )
    launcher = FakeLauncher()
    return Scheduler(settings, store, launcher=launcher), launcher


def submit(store: Store, *names: str) -> None:
    for name in names:
        definition = StudyDefinition.model_validate(
            {
                "name": name,
                "dataset": {"train": "train.csv", "eval": "dev.csv"},
                "parameters": {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3}},
            }
        )
        store.create_study({"name": name}, definition)


def test_queued_studies_get_drivers_in_order_up_to_the_limit(store: Store, sqlite_url: str) -> None:
    submit(store, "first", "second", "third")
    service, launcher = scheduler(store, sqlite_url, max_running=2)
    service.tick()
    assert launcher.names() == ["first", "second"]
    for name in ("first", "second"):  # what their drivers do first
        store.set_status(name, StudyStatus.RUNNING)
    service.tick()
    assert launcher.names() == ["first", "second"]  # no slot yet: third waits

    store.set_status("first", StudyStatus.COMPLETED)  # its driver finished the study
    launcher.last("first").code = 0
    service.tick()
    assert launcher.names() == ["first", "second", "third"]
    assert store.get_study("first").status == StudyStatus.COMPLETED


def test_a_study_whose_driver_has_not_started_it_yet_gets_no_second_driver(
    store: Store, sqlite_url: str
) -> None:
    submit(store, "first", "second")
    service, launcher = scheduler(store, sqlite_url, max_running=3)
    for _ in range(3):  # the drivers are still importing: their studies are still queued
        service.tick()
    assert launcher.names() == ["first", "second"]
    submit(store, "third")
    service.tick()
    assert launcher.names() == ["first", "second", "third"]


def test_a_crashed_driver_is_resumed_then_the_study_fails_with_its_last_output(
    store: Store, sqlite_url: str
) -> None:
    submit(store, "crashy")
    service, launcher = scheduler(store, sqlite_url)
    service.tick()
    for crash in range(1, MAX_DRIVER_CRASHES + 1):
        store.set_status("crashy", StudyStatus.RUNNING)
        driver = launcher.last("crashy")
        driver.code, driver.output = 1, f"RuntimeError: crash {crash}"
        service.tick()
        if crash < MAX_DRIVER_CRASHES:  # resumed: queued again, and a new driver started
            assert store.get_study("crashy").status == StudyStatus.QUEUED
            assert len(launcher.launched) == crash + 1
    study = store.get_study("crashy")
    assert study.status == StudyStatus.FAILED
    assert f"code 1 {MAX_DRIVER_CRASHES} times" in study.error
    assert f"RuntimeError: crash {MAX_DRIVER_CRASHES}" in study.error
    service.tick()
    assert len(launcher.launched) == MAX_DRIVER_CRASHES  # a failed study is not started again


def test_a_cancelled_studys_driver_is_killed_after_a_grace(store: Store, sqlite_url: str) -> None:
    submit(store, "long", "next")
    service, launcher = scheduler(store, sqlite_url)
    service.tick()
    store.set_status("long", StudyStatus.RUNNING)
    store.start_trial("long", 0, {"learning_rate": 1e-4})
    cancel_study("long", store)

    service.tick()
    driver = launcher.last("long")
    assert not driver.killed  # its own stopper gets the grace to end the trials
    service.cancel_seen_at["long"] -= CANCEL_GRACE_S + 1  # ... and does not use it
    service.tick()
    assert driver.killed
    service.tick()  # reaped: its slot goes to the next study, its trials stop running
    assert launcher.names() == ["long", "next"]
    study = store.get_study("long")
    assert study.status == StudyStatus.CANCELLED
    assert study.trial_counts[TrialState.RUNNING] == 0


def test_a_restarted_service_follows_live_drivers_and_resumes_the_rest(
    store: Store, sqlite_url: str
) -> None:
    submit(store, "alive", "orphaned", "queued")
    for name in ("alive", "orphaned"):
        store.set_status(name, StudyStatus.RUNNING)
    service, launcher = scheduler(store, sqlite_url, max_running=3)
    alive = FakeDriver()
    launcher.still_running["alive"] = alive

    service.start()  # its loop's first tick may run at once: only the queued studies start
    assert service.drivers["alive"] is alive  # followed, not started again
    assert store.get_study("alive").status == StudyStatus.RUNNING
    assert store.get_study("orphaned").status == StudyStatus.QUEUED  # resumed from its trials
    service.stop()
    assert alive in launcher.stopped
    service.tick()
    assert set(launcher.names()) == {"orphaned", "queued"}


def test_a_driver_that_dies_before_starting_its_study_counts_as_crashed(
    store: Store, sqlite_url: str
) -> None:
    """E.g. no Ray cluster to connect to: the study must not stay queued, restarted forever."""
    submit(store, "no-ray")
    service, launcher = scheduler(store, sqlite_url)
    for _ in range(MAX_DRIVER_CRASHES):
        service.tick()
        driver = launcher.last("no-ray")
        driver.code, driver.output = 2, "error: cannot connect to the Ray cluster"
    service.tick()
    study = store.get_study("no-ray")
    assert study.status == StudyStatus.FAILED
    assert "error: cannot connect to the Ray cluster" in study.error
    assert len(launcher.launched) == MAX_DRIVER_CRASHES


def test_a_wake_starts_a_queued_study_without_waiting_for_the_interval(
    store: Store, sqlite_url: str
) -> None:
    service, launcher = scheduler(store, sqlite_url)  # its loop looks once an hour
    looked = threading.Event()
    tick = service.tick

    def counted_tick() -> None:
        tick()
        looked.set()

    service.tick = counted_tick  # type: ignore[method-assign]
    service.start()
    try:
        assert looked.wait(10)  # its first look, at start: nothing was queued
        submit(store, "prompt")
        service.wake()
        deadline = time.monotonic() + 10
        while not launcher.launched and time.monotonic() < deadline:
            time.sleep(0.01)
        assert launcher.names() == ["prompt"]
    finally:
        service.stop()


def test_a_service_that_runs_no_studies_leaves_queued_and_running_ones_alone(
    store: Store, sqlite_url: str, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from hpo_service.api.app import create_app

    submit(store, "elsewhere", "waiting")
    store.set_status("elsewhere", StudyStatus.RUNNING)  # its driver belongs to another service
    settings = Settings(database_url=sqlite_url, work_dir=tmp_path, max_running_studies=0)
    with TestClient(create_app(settings)) as client:
        assert client.app.state.scheduler is None  # type: ignore[attr-defined]
        assert client.get("/healthz").status_code == 200
    assert store.get_study("elsewhere").status == StudyStatus.RUNNING
    assert store.get_study("waiting").status == StudyStatus.QUEUED
