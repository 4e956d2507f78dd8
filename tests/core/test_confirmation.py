"""The confirmation stage's choices: which configurations run again, and which wins by mean."""

from __future__ import annotations

import pytest
from records import trial_record

from hpo_service.core.confirmation import candidates, confirmation_seeds, rank
from hpo_service.core.definition import Confirm
from hpo_service.core.records import TrialRecord, TrialState


def trial(
    number: int,
    objective: float | None,
    lr: float,
    seed: int = 42,
    state: TrialState = TrialState.COMPLETE,
    confirms: int | None = None,
) -> TrialRecord:
    return trial_record(
        number,
        objective,
        state=state,
        params={"learning_rate": lr, "seed": seed},
        accuracy=objective,
        eval_loss=None if objective is None else 1 - objective,
        confirms=confirms,
    )


def test_candidates_are_the_best_distinct_configurations_of_the_search() -> None:
    trials = [
        trial(0, 0.70, 1e-3),
        trial(1, 0.90, 2e-3),
        trial(2, 0.90, 2e-3, seed=7),  # the same configuration as trial 1, another seed
        trial(3, 0.95, 3e-3, state=TrialState.EARLY_STOPPED),  # never ran its budget
        trial(4, 0.80, 4e-3),
        trial(5, None, 5e-3, state=TrialState.FAILED),
        trial(6, 0.99, 1e-3, confirms=0),  # a confirmation run is not a candidate
    ]
    assert candidates(trials, Confirm(top_k=2), "maximize") == [1, 4]
    assert candidates(trials, Confirm(top_k=5), "maximize") == [1, 4, 0]
    assert candidates(trials, Confirm(top_k=1), "minimize") == [0]


def test_every_candidate_gets_the_same_fresh_seeds() -> None:
    assert confirmation_seeds(Confirm(seeds=3)) == [10_000, 10_001, 10_002]


def test_the_best_mean_over_fresh_seeds_wins_not_the_lucky_search_run() -> None:
    trials = [
        trial(0, 0.95, 1e-3),  # a lucky seed: its configuration averages 0.80
        trial(1, 0.90, 2e-3),  # steady: 0.88 on average
        *(trial(2 + i, v, 1e-3, 10_000 + i, confirms=0) for i, v in enumerate([0.75, 0.85])),
        *(trial(4 + i, v, 2e-3, 10_000 + i, confirms=1) for i, v in enumerate([0.87, 0.89])),
        trial(6, None, 2e-3, 10_002, state=TrialState.RUNNING, confirms=1),  # not yet counted
    ]
    best, second = rank(trials, "maximize")
    assert best.trial.number == 1
    assert best.objective.mean == pytest.approx(0.88)
    assert best.objective.std == pytest.approx(0.0141421, rel=1e-4)
    assert best.objective.worst == pytest.approx(0.87)
    assert second.trial.number == 0 and second.objective.worst == pytest.approx(0.75)
    document = best.as_dict()
    assert document["search_value"] == 0.90
    assert [r["seed"] for r in document["runs"]] == [10_000, 10_001]
    # Per metric, in its own direction: the lowest loss is the best, the highest the worst.
    assert document["metrics"]["eval_loss"]["worst"] == pytest.approx(0.13)
    assert "f1" not in document["metrics"]  # no run measured it
    assert document["failed_runs"] == []


def test_a_configuration_that_failed_a_fresh_seed_ranks_after_those_that_did_not() -> None:
    """Diverging on one seed of three makes the others' mean a lucky draw, however high."""
    diverged = "training diverged at epoch 1: train_loss nan, eval_loss nan"
    trials = [
        trial(0, 0.95, 3e-3),  # high, but unstable: fails one fresh seed of three
        trial(1, 0.90, 2e-3),  # steady: every fresh seed completes, lower mean
        trial(2, 0.85, 1e-3),  # fails two of three
        *(trial(3 + i, v, 3e-3, 10_000 + i, confirms=0) for i, v in enumerate([0.93, 0.94])),
        trial(5, None, 3e-3, 10_002, state=TrialState.FAILED, confirms=0).model_copy(
            update={"error": diverged}
        ),
        *(trial(6 + i, v, 2e-3, 10_000 + i, confirms=1) for i, v in enumerate([0.88, 0.89, 0.87])),
        trial(9, 0.99, 1e-3, 10_000, confirms=2),
        *(trial(10 + i, None, 1e-3, 10_001 + i, TrialState.FAILED, confirms=2) for i in range(2)),
    ]
    steady, unstable, worst = rank(trials, "maximize")
    assert [c.trial.number for c in (steady, unstable, worst)] == [1, 0, 2]
    assert steady.objective.mean == pytest.approx(0.88) and steady.as_dict()["failed_runs"] == []
    assert unstable.objective.mean == pytest.approx(0.935)  # the complete runs' mean, as shown
    assert unstable.as_dict()["failed_runs"] == [{"trial": 5, "seed": 10_002, "error": diverged}]
    assert [r["seed"] for r in worst.as_dict()["failed_runs"]] == [10_001, 10_002]


def test_a_run_cut_off_by_the_study_stopping_counts_neither_way() -> None:
    """Out of budget, the study cuts off the runs still going: which candidate's they were says
    nothing about its configuration."""
    cut = "cut off when the study stopped: limits.gpu_hours reached"
    trials = [
        trial(0, 0.95, 3e-3),
        trial(1, 0.90, 2e-3),
        *(trial(2 + i, v, 3e-3, 10_000 + i, confirms=0) for i, v in enumerate([0.93, 0.94])),
        trial(4, None, 3e-3, 10_002, state=TrialState.FAILED, confirms=0).model_copy(
            update={"error": cut}
        ),
        *(trial(5 + i, v, 2e-3, 10_000 + i, confirms=1) for i, v in enumerate([0.88, 0.89, 0.87])),
    ]
    best, second = rank(trials, "maximize")
    assert (best.trial.number, second.trial.number) == (0, 1)
    assert best.objective.mean == pytest.approx(0.935)
    assert best.as_dict()["failed_runs"] == [] and len(best.runs) == 2


def test_nothing_is_confirmed_before_a_confirmation_run_completes() -> None:
    running = trial(1, None, 1e-3, 10_000, state=TrialState.RUNNING, confirms=0)
    assert rank([trial(0, 0.9, 1e-3), running], "maximize") == []
