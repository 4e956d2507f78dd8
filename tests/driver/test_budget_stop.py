"""Budgets: a study stops cleanly once its trials used up `limits.cpu_hours`, with the reason,
and both stores agree on every trial it ran."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import optuna
import pytest
from helpers import optuna_trials, run, tiny_study

from hpo_service.core.definition import StudyDefinition
from hpo_service.core.records import StudyStatus, TrialState
from hpo_service.db.store import Store
from hpo_service.db.tables import utcnow
from hpo_service.driver.recorder import BudgetWatch


def test_the_watch_stops_a_study_whose_running_trial_used_up_its_budget(sqlite_url: str) -> None:
    document = {
        "name": "metered",
        "dataset": {"train": "train.csv", "eval": "dev.csv"},
        "parameters": {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3}},
        "resources_per_trial": {"cpus": 4},
        "limits": {"cpu_hours": 2},
    }
    definition = StudyDefinition.model_validate(document)
    store = Store.open(sqlite_url)
    store.create_study(document, definition)
    store.start_trial("metered", 0, {"learning_rate": 1e-4})
    now = utcnow()
    watch = BudgetWatch(store, definition, interval_s=3600, clock=lambda: now)
    assert not watch.stop_all() and watch.reason is None  # 4 CPUs for a moment
    now += timedelta(minutes=29)
    assert not watch.stop_all()  # not checked again within the interval
    assert watch.used_up() is False  # 4 CPUs for 29 minutes: 1.93 CPU-hours
    now += timedelta(minutes=1)
    assert watch.stop_all() is False and watch.used_up() is True
    assert watch.reason == "stopped at its budget: 2 of limits.cpu_hours 2 used"
    assert watch.stop_all()


@pytest.mark.usefixtures("ray_runtime")
def test_a_study_stops_cleanly_at_its_budget_with_the_reason(
    tiny_models: dict[str, Path],
    sentiment_files: tuple[Path, Path],
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    document = tiny_study(
        "metered",
        tiny_models["bert"],
        sentiment_files,
        parameters={"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        sampler={"type": "random", "seed": 1},
        limits={"trials": 20, "cpu_hours": 1 / 3600},  # one CPU-second
    )
    status, store = run(document, sqlite_url, tmp_path)
    assert status == StudyStatus.COMPLETED
    record = store.get_study("metered")
    assert record.error is not None and record.error.startswith("stopped at its budget: ")
    assert "of limits.cpu_hours 0.000277778 used" in record.error
    used = float(record.error.removeprefix("stopped at its budget: ").split()[0])
    assert used >= 1 / 3600  # it stopped because the budget was spent, not before
    ran = store.trials("metered")
    # Checked every 2 s: the trials of a second or so that started after the budget ran out
    # are the few of one check's interval, not the rest of the study's 20.
    assert 1 <= len(ran) <= 5, [t.duration_s for t in ran]
    assert all(t.state != TrialState.RUNNING for t in ran)
    theirs = optuna_trials(sqlite_url, "metered")
    assert len(theirs) == len(ran)
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in theirs)


BUDGET_S = 20


@pytest.mark.usefixtures("ray_runtime")
def test_a_study_out_of_time_ends_completed_with_no_trial_left_running(
    tiny_models: dict[str, Path],
    sentiment_files: tuple[Path, Path],
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    document = tiny_study(
        "timed",
        tiny_models["bert"],
        sentiment_files,
        parameters={
            "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "num_train_epochs": 3,
        },
        sampler={"type": "random", "seed": 1},
        # Time for a first trial on a busy machine: its worker imports torch and transformers
        # first (8 s were not enough on a slow day's CI).
        limits={"trials": 50, "time_budget_s": BUDGET_S},
    )
    status, store = run(document, sqlite_url, tmp_path)
    assert status == StudyStatus.COMPLETED
    ran = store.trials("timed")
    assert 1 <= len(ran) < 50
    first = min(t.started_at for t in ran)  # no trial started after the budget (and Ray's tick)
    assert all((t.started_at - first).total_seconds() < BUDGET_S + 2 for t in ran), ran
    assert all(t.state != TrialState.RUNNING for t in ran)
    cut = [t for t in ran if t.state == TrialState.FAILED]
    # Cut off at the deadline: by Ray ("out of time") or, still running, by the driver
    # ("limits.time_budget_s reached").
    assert all(t.error and "time" in t.error for t in cut), cut
    assert all(
        t.state != optuna.trial.TrialState.RUNNING for t in optuna_trials(sqlite_url, "timed")
    )
