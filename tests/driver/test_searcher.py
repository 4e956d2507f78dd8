"""The searcher tells Optuna what really happened to each trial, epoch by epoch."""

from __future__ import annotations

import pickle
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState as OptunaState

from hpo_service.core.records import TrialState
from hpo_service.db.reconcile import CHECKPOINT_ATTR, RESUMES_ATTR
from hpo_service.driver.searcher import RESUME_KEY, StudySearcher, trial_outcome

SPACE = {"learning_rate": FloatDistribution(1e-5, 1e-2, log=True)}


def epoch(number: int, value: float, planned: int = 3, iteration: int | None = None) -> dict:
    return {
        "objective": value,
        "epoch": number,
        "epochs_planned": planned,
        "training_iteration": iteration or number,
    }


@pytest.fixture
def storage() -> optuna.storages.BaseStorage:
    return optuna.storages.InMemoryStorage()


def searcher_on(storage: optuna.storages.BaseStorage) -> StudySearcher:
    return StudySearcher(
        space=SPACE,
        metric="objective",
        mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0),
        study_name="study",
        storage=storage,
    )


def optuna_trial(storage: optuna.storages.BaseStorage, number: int) -> Any:
    return optuna.load_study(study_name="study", storage=storage).trials[number]


@pytest.mark.parametrize(
    ("last", "error", "expected"),
    [
        (epoch(3, 0.8), False, TrialState.COMPLETE),
        (epoch(2, 0.7), False, TrialState.EARLY_STOPPED),
        (epoch(3, 0.8), True, TrialState.FAILED),
        ({"training_iteration": 1}, False, TrialState.FAILED),
        (None, False, TrialState.FAILED),
    ],
    ids=["complete", "early-stopped", "error", "no-score", "no-result"],
)
def test_each_outcome_is_classified_once(
    last: dict | None, error: bool, expected: TrialState
) -> None:
    assert trial_outcome(last, error) == expected


def test_complete_pruned_and_failed_trials_reach_optuna_as_such(
    storage: optuna.storages.BaseStorage,
) -> None:
    searcher = searcher_on(storage)
    for trial_id in ("done", "stopped", "broken"):
        assert set(searcher.suggest(trial_id)) == {"learning_rate"}
    for trial_id in ("done", "stopped"):
        searcher.on_trial_result(trial_id, epoch(1, 0.6))
        searcher.on_trial_result(trial_id, epoch(2, 0.7))
    searcher.on_trial_result("done", epoch(3, 0.8))
    searcher.on_trial_complete("done", epoch(3, 0.8))
    searcher.on_trial_complete("stopped", epoch(2, 0.7))  # ASHA stopped it after epoch 2
    searcher.on_trial_complete("broken", None, error=True)

    done, stopped, broken = (optuna_trial(storage, n) for n in range(3))
    assert (done.state, done.value) == (OptunaState.COMPLETE, 0.8)
    assert done.intermediate_values == {1: 0.6, 2: 0.7, 3: 0.8}
    assert stopped.state == OptunaState.PRUNED  # Optuna keeps its last value, never ranks it
    assert stopped.intermediate_values == {1: 0.6, 2: 0.7}  # the curve stays whole
    assert broken.state == OptunaState.FAIL
    assert [searcher.trial_number(t) for t in ("done", "stopped", "broken")] == [0, 1, 2]


def test_a_rerun_resumes_its_trial_with_its_curve_and_counts_steps_in_epochs(
    storage: optuna.storages.BaseStorage,
) -> None:
    searcher = searcher_on(storage)
    searcher.suggest("cut")
    searcher.on_trial_result("cut", epoch(1, 0.6))
    searcher.on_trial_result("cut", epoch(2, 0.65))
    study = optuna.load_study(study_name="study", storage=storage)
    params = optuna_trial(storage, 0).params
    study.enqueue_trial(params, user_attrs={RESUMES_ATTR: 0, CHECKPOINT_ATTR: "/ckpt/0"})

    config = searcher.suggest("rerun")

    assert config[RESUME_KEY] == {"trial": 0, "checkpoint": "/ckpt/0"}
    assert config["learning_rate"] == params["learning_rate"]
    # The rerun reports epoch 2 again, then 3, as Ray's iterations 1 and 2.
    searcher.on_trial_result("rerun", epoch(2, 0.65, iteration=1))
    searcher.on_trial_result("rerun", epoch(3, 0.7, iteration=2))
    searcher.on_trial_complete("rerun", epoch(3, 0.7, iteration=2))
    rerun = optuna_trial(storage, 1)
    assert rerun.intermediate_values == {1: 0.6, 2: 0.65, 3: 0.7}
    assert (rerun.state, rerun.value) == (OptunaState.COMPLETE, 0.7)


def test_a_rerun_without_a_checkpoint_starts_over(storage: optuna.storages.BaseStorage) -> None:
    searcher = searcher_on(storage)
    searcher.suggest("cut")
    searcher.on_trial_result("cut", epoch(1, 0.6))
    study = optuna.load_study(study_name="study", storage=storage)
    study.enqueue_trial(optuna_trial(storage, 0).params, user_attrs={RESUMES_ATTR: 0})
    config = searcher.suggest("rerun")
    assert config[RESUME_KEY] == {"trial": 0, "checkpoint": None}
    assert optuna_trial(storage, 1).intermediate_values == {}


def test_pickling_leaves_the_storage_out(storage: optuna.storages.BaseStorage) -> None:
    searcher = searcher_on(storage)
    searcher.suggest("t")
    state = pickle.loads(pickle.dumps(searcher)).__dict__
    assert "_storage" not in state and "_ot_study" not in state


def test_with_several_objectives_optuna_is_told_each_value_and_no_learning_curve(
    storage: optuna.storages.BaseStorage,
) -> None:
    searcher = StudySearcher(
        space=SPACE,
        metric=["accuracy", "train_seconds"],
        mode=["max", "min"],
        sampler=optuna.samplers.RandomSampler(seed=0),
        study_name="study",
        storage=storage,
    )
    for trial_id in ("done", "stopped", "broken"):
        searcher.suggest(trial_id)

    def result(number: int, accuracy: float, seconds: float) -> dict:
        return {**epoch(number, accuracy), "accuracy": accuracy, "train_seconds": seconds}

    for trial_id in ("done", "stopped"):
        searcher.on_trial_result(trial_id, result(1, 0.6, 2.0))
        searcher.on_trial_result(trial_id, result(2, 0.7, 4.0))
    searcher.on_trial_result("done", result(3, 0.8, 6.0))
    searcher.on_trial_complete("done", result(3, 0.8, 6.0))
    searcher.on_trial_complete("stopped", result(2, 0.7, 4.0))  # stopped early on the primary
    searcher.on_trial_complete("broken", None, error=True)

    study = optuna.load_study(study_name="study", storage=storage)
    assert study.directions == [
        optuna.study.StudyDirection.MAXIMIZE,
        optuna.study.StudyDirection.MINIMIZE,
    ]
    done, stopped, broken = study.trials
    assert (done.state, done.values) == (OptunaState.COMPLETE, [0.8, 6.0])
    assert (stopped.state, stopped.values) == (OptunaState.PRUNED, None)
    assert (broken.state, broken.values) == (OptunaState.FAIL, None)
    assert all(t.intermediate_values == {} for t in study.trials)
