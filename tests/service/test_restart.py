"""Killing the service, or one study's driver, with SIGKILL mid-study loses nothing: the study
goes on from where it was and ends with exactly its requested number of finished trials."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
from helpers import drivers_of, tiny_study, wait_until_midway
from servers import Service

from hpo_service.core.settings import normalize_database_url

pytestmark = pytest.mark.slow  # end to end: a real service, Ray or CLI process

FINISHED = {"completed", "failed", "cancelled"}
COUNTED = {"complete", "early_stopped", "failed"}
AGREES = {
    "complete": optuna.trial.TrialState.COMPLETE,
    "early_stopped": optuna.trial.TrialState.PRUNED,
    "failed": optuna.trial.TrialState.FAIL,
    "interrupted": optuna.trial.TrialState.FAIL,
}


def trials_by_number(service: Service, name: str) -> dict[int, dict]:
    return {
        t["number"]: t for t in service.client.get(f"/v1/studies/{name}/trials").json()["items"]
    }


def check_finished_exactly(service: Service, name: str, n_trials: int) -> dict[int, dict]:
    """The study completed with exactly ``n_trials`` finished trials; the trials a kill cut off
    are recorded as interrupted and ran again; Optuna agrees trial by trial."""
    final = service.wait_for(name, FINISHED, timeout=600)
    assert final["status"] == "completed", final
    assert final["progress"] == {"finished": n_trials, "total": n_trials, "fraction": 1.0}
    trials = trials_by_number(service, name)
    finished = [t for t in trials.values() if t["state"] in COUNTED]
    interrupted = [t for t in trials.values() if t["state"] == "interrupted"]
    assert len(finished) == n_trials and len(finished) + len(interrupted) == len(trials)
    assert interrupted, "the kill cut off no trial"
    rerun = [t["params"] for t in finished]
    assert all(t["params"] in rerun for t in interrupted)  # each cut-off configuration ran again
    theirs = optuna.load_study(
        study_name=name, storage=normalize_database_url(service.database_url)
    ).trials
    assert sorted(t.number for t in theirs) == sorted(trials)
    for trial in theirs:
        assert trial.state == AGREES[trials[trial.number]["state"]], trial.number
    return trials


@pytest.fixture
def study_document(tiny_models: dict[str, Path], sentiment_files: tuple[Path, Path]) -> dict:
    return tiny_study(
        "survivor",
        tiny_models["bert"],
        sentiment_files,
        parameters={
            "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "num_train_epochs": 2,
        },
        dataset={"max_train_samples": 160},
        sampler={"type": "tpe", "seed": 5, "n_startup_trials": 2},
        limits={"trials": 6},
    )


def test_killing_the_service_mid_study_loses_nothing(
    study_document: dict, sentiment_files: tuple[Path, Path], sqlite_url: str, tmp_path: Path
) -> None:
    roots = [sentiment_files[0].parent]
    first = Service(sqlite_url, tmp_path / "work", roots).start()
    try:
        assert first.client.post("/v1/studies", json=study_document).status_code == 201
        wait_until_midway(first, "survivor", finished=2)
        done_before = {
            n: t for n, t in trials_by_number(first, "survivor").items() if t["state"] != "running"
        }
        assert drivers_of("survivor", tmp_path / "work")
    finally:
        first.kill()
    deadline = time.monotonic() + 30  # the driver dies with the service (no orphan runs on)
    while drivers_of("survivor", tmp_path / "work") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not drivers_of("survivor", tmp_path / "work")

    with Service(sqlite_url, tmp_path / "work", roots) as second:
        trials = check_finished_exactly(second, "survivor", 6)
    for number, before in done_before.items():  # finished trials are kept, not re-run
        assert trials[number] == before


def test_a_killed_driver_is_started_again(
    study_document: dict, sentiment_files: tuple[Path, Path], sqlite_url: str, tmp_path: Path
) -> None:
    with Service(sqlite_url, tmp_path / "work", [sentiment_files[0].parent]) as service:
        assert service.client.post("/v1/studies", json=study_document).status_code == 201
        wait_until_midway(service, "survivor", finished=1)
        [driver] = drivers_of("survivor", tmp_path / "work")
        driver.kill()
        assert service.client.get("/healthz").status_code == 200  # the API is unaffected
        check_finished_exactly(service, "survivor", 6)
