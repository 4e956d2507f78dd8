"""Nothing outlives the service: its one local Ray head (gcs_server, raylet, agents, workers) and
its drivers end with it, SIGKILLed or stopped; every study joins that one head; `hpo run` leaves
nothing behind either, interrupted with Ctrl-C or not."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import psutil
import pytest
import yaml
from helpers import tiny_study, wait_until_midway
from servers import BIN, Service

from hpo_service.core.records import StudyStatus, TrialState
from hpo_service.db.store import Store

pytestmark = pytest.mark.slow  # end to end: a real service, Ray or CLI process

FINISHED = {"completed", "failed", "cancelled"}
Started = set[tuple[int, float]]  # (pid, start time): a pid alone may be reused
IDLE = {"ray::IDLE", "ray::DashboardAgent", "ray::RuntimeEnvAgent"}  # not running a trial


def drivers(service: Service) -> list[psutil.Process]:
    assert service.process is not None
    return [
        p
        for p in psutil.Process(service.process.pid).children()
        if "hpo_service.driver" in p.cmdline()
    ]


def started_by(root: int) -> Started:
    """Every live process below ``root``, and every process in a session one of them leads
    (where Ray's daemons and workers run), but for the sessions of this test process."""
    below = psutil.Process(root).children(recursive=True)
    ours = {os.getsid(0), os.getsid(root)}
    sessions = {os.getsid(p.pid) for p in below if p.is_running()} - ours
    found: Started = set()
    for process in [*below, *psutil.process_iter()]:
        with contextlib.suppress(psutil.Error, OSError):
            mine = process in below or os.getsid(process.pid) in sessions
            if mine and process.status() != psutil.STATUS_ZOMBIE:
                found.add((process.pid, process.create_time()))
    return found


def alive(started: Started) -> list[str]:
    """The processes of ``started`` that still run."""
    left = []
    for pid, created in started:
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            if process.create_time() == created and process.status() != psutil.STATUS_ZOMBIE:
                left.append(" ".join(process.cmdline())[:160] or process.name())
    return left


def wait_all_gone(started: Started, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while alive(started) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(started), alive(started)


def names(started: Started) -> list[str]:
    found = []
    for pid, _ in started:
        with contextlib.suppress(psutil.Error):
            found.append(" ".join(psutil.Process(pid).cmdline()) or psutil.Process(pid).name())
    return found


def count(started: Started, kind: str) -> int:
    return sum(kind in text for text in names(started))


def head_address(driver: psutil.Process) -> str:
    return driver.environ()["HPO_RAY_ADDRESS"]


@pytest.fixture
def slow_study(tiny_models: dict[str, Path], sentiment_files: tuple[Path, Path]) -> dict:
    return tiny_study(
        "lasting",
        tiny_models["bert"],
        sentiment_files,
        parameters={
            "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "num_train_epochs": 2,
        },
        dataset={"max_train_samples": 160},
        sampler={"type": "random", "seed": 3},
        limits={"trials": 3},
    )


def test_a_killed_service_leaves_nothing_and_a_new_one_resumes_on_a_fresh_head(
    slow_study: dict, sentiment_files: tuple[Path, Path], sqlite_url: str, tmp_path: Path
) -> None:
    roots = [sentiment_files[0].parent]
    first = Service(sqlite_url, tmp_path / "work", roots).start()
    try:
        assert first.client.post("/v1/studies", json=slow_study).status_code == 201
        wait_until_midway(first, "lasting", finished=0)
        [driver] = drivers(first)
        old_address = head_address(driver)
        assert first.process is not None
        started = started_by(first.process.pid)
        for kind in ("hpo_service.driver", "gcs_server", "raylet", "ray::"):
            assert count(started, kind) >= 1, (kind, names(started))
        assert count(started, "raylet --") == 1
    finally:
        first.kill()
    wait_all_gone(started)

    with Service(sqlite_url, tmp_path / "work", roots) as second:
        deadline = time.monotonic() + 120
        while not drivers(second) and time.monotonic() < deadline:
            time.sleep(0.1)
        [driver] = drivers(second)
        assert head_address(driver) != old_address  # a fresh head, not the killed one
        assert second.wait_for("lasting", FINISHED, timeout=600)["status"] == "completed"


def test_a_stopped_service_leaves_nothing(
    slow_study: dict, sentiment_files: tuple[Path, Path], sqlite_url: str, tmp_path: Path
) -> None:
    service = Service(sqlite_url, tmp_path / "work", [sentiment_files[0].parent]).start()
    try:
        assert service.client.post("/v1/studies", json=slow_study).status_code == 201
        wait_until_midway(service, "lasting", finished=0)
        assert service.process is not None
        started = started_by(service.process.pid)
        assert count(started, "raylet --") == 1, names(started)
    finally:
        service.stop()
    wait_all_gone(started)
    assert "Application shutdown complete" in service.log_path.read_text()  # a clean stop


def test_studies_share_the_service_head(
    tiny_models: dict[str, Path],
    sentiment_files: tuple[Path, Path],
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    documents = [
        tiny_study(
            name,
            tiny_models["bert"],
            sentiment_files,
            parameters={"num_train_epochs": 3},
            dataset={"max_train_samples": 160},
            limits={"trials": 2, "concurrent_trials": 1},
        )
        for name in ("first", "second")
    ]
    roots = [sentiment_files[0].parent]
    env = {"HPO_MAX_RUNNING_STUDIES": "2", "HPO_RAY_NUM_CPUS": "2"}
    with Service(sqlite_url, tmp_path / "work", roots, **env) as service:
        for document in documents:
            assert service.client.post("/v1/studies", json=document).status_code == 201
        deadline = time.monotonic() + 120
        while len(drivers(service)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        both = drivers(service)
        assert len(both) == 2
        assert head_address(both[0]) == head_address(both[1])
        assert service.process is not None
        started = started_by(service.process.pid)
        assert count(started, "raylet --") == 1, names(started)
        assert count(started, "gcs_server") == 1, names(started)
        # The head's temp folder is its own: `ray start` leaves the machine's "current cluster"
        # file, which every other Ray user reads, alone and writes its own there.
        [supervisor] = [n for n in names(started) if "hpo_service.service.ray_head" in n]
        temp_dir = Path(supervisor.split()[4])
        port = head_address(both[0]).rsplit(":", 1)[1]
        assert (temp_dir / "ray_current_cluster").read_text().endswith(f":{port}")
        for name in ("first", "second"):
            study = service.wait_for(name, FINISHED, timeout=600)
            assert study["status"] == "completed", study
        head_log = (tmp_path / "work" / "logs" / "ray-head.log").read_text()
        assert head_log.count("Ray runtime started") == 1
    assert not temp_dir.exists()  # removed with the head


def hpo_run(document: dict, sqlite_url: str, tmp_path: Path) -> subprocess.Popen[bytes]:
    """`hpo run` in a session of its own, as a terminal runs a foreground command."""
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(document))
    env = dict(os.environ, HPO_DATABASE_URL=sqlite_url, HPO_WORK_DIR=str(tmp_path / "work"))
    return subprocess.Popen(
        [BIN / "hpo", "run", str(tmp_path / "study.yaml")],
        env=env,
        cwd=tmp_path,
        stdout=(tmp_path / "run.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def session_of(sid: int) -> Started:
    found: Started = set()
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getsid(process.pid) == sid and process.status() != psutil.STATUS_ZOMBIE:
                found.add((process.pid, process.create_time()))
    return found


def wait_for_running_trial(sqlite_url: str, name: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # the study is not stored yet
            if any(t.state == TrialState.RUNNING for t in Store.open(sqlite_url).trials(name)):
                return
        time.sleep(0.3)
    raise TimeoutError(f"{name} never ran a trial")


@pytest.mark.parametrize(
    "stop", [None, "ctrl-c", "sigterm"], ids=["to-the-end", "ctrl-c", "sigterm"]
)
def test_hpo_run_leaves_nothing_behind(
    stop: str | None, slow_study: dict, sqlite_url: str, tmp_path: Path
) -> None:
    run = hpo_run(slow_study, sqlite_url, tmp_path)
    try:
        wait_for_running_trial(sqlite_url, "lasting")
        started = session_of(run.pid)
        assert any("raylet" in text for text in names(started)), names(started)
        if stop == "ctrl-c":
            os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        elif stop == "sigterm":
            os.kill(run.pid, signal.SIGTERM)  # a service manager's or `timeout`'s stop
        code = run.wait(300)
    finally:
        if run.poll() is None:
            run.kill()
    log = (tmp_path / "run.log").read_text()
    interrupt = stop is not None
    assert code == (130 if interrupt else 0), log[-3000:]
    assert "Traceback" not in log
    wait_all_gone(started | session_of(run.pid))
    if interrupt:  # cancelled, with the cut-off trial interrupted in both stores
        store = Store.open(sqlite_url)
        assert store.get_study("lasting").status == StudyStatus.CANCELLED
        assert TrialState.INTERRUPTED in {t.state for t in store.trials("lasting")}
        theirs = optuna.load_study(study_name="lasting", storage=sqlite_url).trials
        assert not [t for t in theirs if t.state == optuna.trial.TrialState.RUNNING]


def test_a_killed_driver_leaves_nothing_on_the_head(
    slow_study: dict, sentiment_files: tuple[Path, Path], sqlite_url: str, tmp_path: Path
) -> None:
    with Service(sqlite_url, tmp_path / "work", [sentiment_files[0].parent]) as service:
        assert service.client.post("/v1/studies", json=slow_study).status_code == 201
        wait_until_midway(service, "lasting", finished=0)
        [driver] = drivers(service)
        assert driver.children() == []  # it joined the head: no Ray of its own
        assert service.process is not None
        busy = {  # the workers running its trials
            (pid, created)
            for pid, created in started_by(service.process.pid)
            if any(
                text.startswith("ray::") and text.split()[0] not in IDLE
                for text in names({(pid, created)})
            )
        }
        assert busy, names(started_by(service.process.pid))
        driver.kill()
        wait_all_gone(busy)
        assert service.wait_for("lasting", FINISHED, timeout=600)["status"] == "completed"
