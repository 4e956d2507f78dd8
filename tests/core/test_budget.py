"""Spend, forecast and the budget rule on trials' run times, on a fixed clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hpo_service.core.budget import RunTimes, Spend, forecast, over_budget, spent
from hpo_service.core.definition import StudyDefinition
from hpo_service.core.records import TrialState

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def definition(**limits: float) -> StudyDefinition:
    return StudyDefinition.model_validate(
        {
            "name": "s",
            "dataset": {"train": "train.csv", "eval": "dev.csv"},
            "parameters": {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3}},
            "resources_per_trial": {"cpus": 2, "gpus": 0.5},
            "limits": {"trials": 6, "concurrent_trials": 2, **limits},
            "confirm": {"top_k": 1, "seeds": 2},
        }
    )


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


TRIALS = [  # two finished trials of 30 minutes, one cut off by a crash after 6, one running
    (TrialState.COMPLETE, at(0), at(30)),
    (TrialState.EARLY_STOPPED, at(0), at(30)),
    (TrialState.INTERRUPTED, at(30), at(36)),
    (TrialState.RUNNING, at(36), None),
]
TIMES = RunTimes.of(TRIALS)


def test_spend_counts_each_trials_resources_over_its_run_time_running_ones_so_far() -> None:
    used = spent(TIMES, definition(), now=at(60))  # 30 + 30 + 6 + 24 minutes = 1.5 hours
    assert used == Spend(cpu_hours=pytest.approx(3.0), gpu_hours=pytest.approx(0.75))


def test_the_forecast_runs_the_rest_at_the_finished_trials_mean_two_at_a_time() -> None:
    outlook = forecast(TIMES, definition(), now=at(60))
    assert outlook.remaining_trials == 6 + 2 - 2  # the search and the confirmation runs
    assert outlook.seconds_to_finish == pytest.approx(6 * 30 * 60 / 2)
    assert outlook.at_end == Spend(pytest.approx(3.0 + 6 * 1.0), pytest.approx(0.75 + 6 * 0.25))
    before = forecast(RunTimes.of(TRIALS[2:]), definition(), now=at(60))
    assert before.seconds_to_finish is None and before.at_end is None  # nothing finished yet


def test_a_study_stops_once_either_budget_is_used_up() -> None:
    assert over_budget(Spend(3.0, 0.75), definition(cpu_hours=4)) is None
    reason = over_budget(Spend(3.0, 0.75), definition(cpu_hours=4, gpu_hours=0.75))
    assert reason == "stopped at its budget: 0.75 of limits.gpu_hours 0.75 used"
    assert "limits.cpu_hours 3 used" in (over_budget(Spend(3.0, 0), definition(cpu_hours=3)) or "")
