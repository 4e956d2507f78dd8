"""Reliability: SIGKILL the service and a study's driver at random points of a study, on SQLite
and PostgreSQL. The study still ends with exactly its N finished trials, every trial finished
before a kill is unchanged, our tables and Optuna's agree with no trial left running in either,
and no process outlives the service."""

from __future__ import annotations

import random
import time
from pathlib import Path

import optuna
import pytest
from helpers import drivers_of, processes_of, tiny_study
from servers import Service

from hpo_service.core.settings import normalize_database_url

pytestmark = [pytest.mark.slow, pytest.mark.reliability]

N_TRIALS = 6
KILLS = 3
COUNTED = {"complete", "early_stopped", "failed"}
AGREES = {
    "complete": optuna.trial.TrialState.COMPLETE,
    "early_stopped": optuna.trial.TrialState.PRUNED,
    "failed": optuna.trial.TrialState.FAIL,
    "interrupted": optuna.trial.TrialState.FAIL,
}


def finished_trials(service: Service, name: str) -> dict[int, dict]:
    items = service.client.get(f"/v1/studies/{name}/trials").json()["items"]
    return {t["number"]: t for t in items if t["state"] in COUNTED}


def wait_for_running_trial(service: Service, name: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        study = service.client.get(f"/v1/studies/{name}").json()
        if study["trial_counts"].get("running", 0) >= 1 or study["status"] not in (
            "queued",
            "running",
        ):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{name} never ran a trial")


@pytest.mark.parametrize("seed", [11])
def test_random_kills_of_service_and_driver_lose_nothing(
    seed: int,
    tiny_models: dict[str, Path],
    sentiment_files: tuple[Path, Path],
    database_url: str,
    tmp_path: Path,
) -> None:
    rng = random.Random(seed)
    document = tiny_study(
        "reliable",
        tiny_models["bert"],
        sentiment_files,
        parameters={
            "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "num_train_epochs": 3,
        },
        dataset={"max_train_samples": 160},
        sampler={"type": "tpe", "seed": seed, "n_startup_trials": 2},
        limits={"trials": N_TRIALS, "concurrent_trials": 2},
    )
    roots = [sentiment_files[0].parent]
    service = Service(database_url, tmp_path / "work", roots).start()
    kept: dict[int, dict] = {}
    try:
        assert service.client.post("/v1/studies", json=document).status_code == 201
        for kill in range(KILLS):
            wait_for_running_trial(service, "reliable")
            if kill == 0:  # the check at the end sees the head's daemons and workers too
                running = " ".join(" ".join(c) for c in processes_of(tmp_path / "work").values())
                assert "raylet" in running and "ray::" in running, running
            time.sleep(rng.uniform(0.5, 6.0))
            kept.update(finished_trials(service, "reliable"))
            if kill % 2 == 0:  # the whole service, as a crash of its machine would
                service.kill()
                service = Service(database_url, tmp_path / "work", roots).start()
            else:  # only the study's driver
                for driver in drivers_of("reliable", tmp_path / "work"):
                    driver.kill()
        final = service.wait_for("reliable", {"completed", "failed", "cancelled"}, timeout=900)
        items = service.client.get("/v1/studies/reliable/trials").json()["items"]
    finally:
        service.stop()

    assert final["status"] == "completed", final
    trials = {t["number"]: t for t in items}
    assert sum(t["state"] in COUNTED for t in trials.values()) == N_TRIALS
    assert all(t["state"] != "running" for t in trials.values())
    for number, trial in kept.items():  # finished before a kill: unchanged
        assert trials[number] == trial
    theirs = optuna.load_study(
        study_name="reliable", storage=normalize_database_url(database_url)
    ).trials
    assert sorted(t.number for t in theirs) == sorted(trials)
    for trial in theirs:
        assert trial.state == AGREES[trials[trial.number]["state"]], trial.number
    deadline = time.monotonic() + 30
    while (left := processes_of(tmp_path / "work")) and time.monotonic() < deadline:
        time.sleep(0.5)
    head_log = tmp_path / "work" / "logs" / "ray-head.log"  # each head's supervisor writes there
    assert not left, ([" ".join(c)[:200] for c in left.values()], head_log.read_text()[-3000:])
