"""The searcher tells Optuna what really happened to each trial, epoch by epoch."""

from __future__ import annotations

import itertools
import math
import pickle
import warnings
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState as OptunaState
from ray.tune.search import Searcher

from hpo_service.core.presets import resolve_definition
from hpo_service.core.records import TrialState
from hpo_service.db.reconcile import (
    CHECKPOINT_ATTR,
    CHECKPOINT_EPOCH_ATTR,
    ERROR_ATTR,
    RESUMES_ATTR,
)
from hpo_service.driver.search_space import (
    FiniteSpace,
    configuration_key,
    configurations,
    optuna_sampler,
)
from hpo_service.driver.searcher import (
    DRAWN_ATTR,
    ENQUEUED_ATTR,
    REPEATS_ATTR,
    RESUME_KEY,
    UNEVALUATED,
    StudySearcher,
    trial_outcome,
)

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
    for trial_id in ("done", "stopped", "broken", "unevaluated"):
        assert set(searcher.suggest(trial_id)) == {"learning_rate"}
    for trial_id in ("done", "stopped"):
        searcher.on_trial_result(trial_id, epoch(1, 0.6))
        searcher.on_trial_result(trial_id, epoch(2, 0.7))
    searcher.on_trial_complete("unevaluated", {})  # the study stopped before its first epoch
    searcher.on_trial_result("done", epoch(3, 0.8))
    searcher.on_trial_complete("done", epoch(3, 0.8))
    searcher.on_trial_complete("stopped", epoch(2, 0.7))  # ASHA stopped it after epoch 2
    searcher.on_trial_complete("broken", None, error=True)  # as Ray does, before saying why
    assert optuna_trial(storage, 2).state == OptunaState.RUNNING
    searcher.fail("broken", "RuntimeError: training diverged at epoch 1")  # the recorder, next

    done, stopped, broken = (optuna_trial(storage, n) for n in range(3))
    assert (done.state, done.value) == (OptunaState.COMPLETE, 0.8)
    assert done.intermediate_values == {1: 0.6, 2: 0.7, 3: 0.8}
    assert stopped.state == OptunaState.PRUNED  # Optuna keeps its last value, never ranks it
    assert stopped.intermediate_values == {1: 0.6, 2: 0.7}  # the curve stays whole
    assert broken.state == OptunaState.FAIL
    assert broken.user_attrs[ERROR_ATTR] == "RuntimeError: training diverged at epoch 1"
    unevaluated = optuna_trial(storage, 3)
    assert (unevaluated.state, unevaluated.user_attrs[ERROR_ATTR]) == (
        OptunaState.FAIL,
        UNEVALUATED,
    )
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
    # Cut off after epoch 2's report, before its checkpoint: the last one saved is epoch 1's.
    attrs = {RESUMES_ATTR: 0, CHECKPOINT_ATTR: "/ckpt/0", CHECKPOINT_EPOCH_ATTR: 1}
    study.enqueue_trial(params, user_attrs=attrs)

    config = searcher.suggest("rerun")

    assert config[RESUME_KEY] == {"trial": 0, "checkpoint": "/ckpt/0", "epoch": 1}
    assert config["learning_rate"] == params["learning_rate"]
    # The rerun reports epoch 1 again, then trains 2 and 3, as Ray's iterations 1 to 3.
    searcher.on_trial_result("rerun", epoch(1, 0.6, iteration=1))
    searcher.on_trial_result("rerun", epoch(2, 0.66, iteration=2))
    searcher.on_trial_result("rerun", epoch(3, 0.7, iteration=3))
    searcher.on_trial_complete("rerun", epoch(3, 0.7, iteration=3))
    rerun = optuna_trial(storage, 1)
    assert rerun.intermediate_values == {1: 0.6, 2: 0.66, 3: 0.7}
    assert (rerun.state, rerun.value) == (OptunaState.COMPLETE, 0.7)


def test_a_rerun_without_a_checkpoint_starts_over(storage: optuna.storages.BaseStorage) -> None:
    searcher = searcher_on(storage)
    searcher.suggest("cut")
    searcher.on_trial_result("cut", epoch(1, 0.6))
    study = optuna.load_study(study_name="study", storage=storage)
    study.enqueue_trial(optuna_trial(storage, 0).params, user_attrs={RESUMES_ATTR: 0})
    config = searcher.suggest("rerun")
    assert config[RESUME_KEY] == {"trial": 0, "checkpoint": None, "epoch": None}
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
    searcher.fail("broken", "RuntimeError: out of memory")

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


# --- Proposals of configurations the study already tried -----------------------------------------

CHOICES = {"batch_size": CategoricalDistribution([16, 32, 64])}


def always_16(storage: optuna.storages.BaseStorage, repeats: bool = False) -> StudySearcher:
    """A searcher whose sampler proposes batch size 16 every time (as TPE may, sure of it)."""
    with warnings.catch_warnings():  # PartialFixedSampler is experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.PartialFixedSampler(
            {"batch_size": 16}, optuna.samplers.RandomSampler(seed=0)
        )
    return StudySearcher(
        space=CHOICES,
        metric="objective",
        mode="max",
        sampler=sampler,
        study_name="study",
        storage=storage,
        repeats=repeats,
        draw_seed=0,
    )


def test_a_trained_configuration_proposed_again_is_not_run_and_untried_ones_run_instead(
    storage: optuna.storages.BaseStorage,
) -> None:
    searcher = always_16(storage)
    assert searcher.suggest("first") == {"batch_size": 16}
    searcher.on_trial_complete("first", epoch(3, 0.8))

    second = searcher.suggest("second")
    searcher.on_trial_complete("second", epoch(3, 0.7))
    third = searcher.suggest("third")
    searcher.on_trial_complete("third", epoch(3, 0.6))

    # The nearest untried configuration runs instead: 32 is one step from 16, 64 two.
    assert [second["batch_size"], third["batch_size"]] == [32, 64]
    trials = optuna.load_study(study_name="study", storage=storage).trials
    repeats = [t for t in trials if REPEATS_ATTR in t.user_attrs]
    # Each repeated proposal stays in Optuna, told the trial it repeats' score, never run.
    assert [(t.params, t.user_attrs[REPEATS_ATTR], t.value) for t in repeats] == [
        ({"batch_size": 16}, 0, 0.8),
        ({"batch_size": 16}, 0, 0.8),
    ]
    ran = [searcher.trial_number(t) for t in ("first", "second", "third")]
    assert [trials[n].user_attrs.get(DRAWN_ATTR) for n in ran] == [None, ran[1] - 1, ran[2] - 1]
    # Every configuration was tried: the search ends, and says why.
    assert searcher.suggest("fourth") == Searcher.FINISHED
    assert searcher.ended is not None and "all 3 configurations" in searcher.ended


def test_a_proposal_of_a_running_or_stopped_configuration_is_not_run_either(
    storage: optuna.storages.BaseStorage,
) -> None:
    searcher = always_16(storage)
    searcher.suggest("running")
    searcher.on_trial_result("running", epoch(1, 0.6))
    instead = searcher.suggest("while-it-runs")
    assert instead["batch_size"] != 16
    searcher.on_trial_complete("running", epoch(1, 0.6))  # stopped early after epoch 1
    searcher.on_trial_complete("while-it-runs", epoch(3, 0.7))
    searcher.suggest("after-it-stopped")

    study = optuna.load_study(study_name="study", storage=storage)
    while_running, after_stopped = (t for t in study.trials if REPEATS_ATTR in t.user_attrs)
    # While it ran there was no score to copy: failed, which samplers skip (a pruned trial
    # with no value would rank below every other in TPE, for good); once stopped, its curve.
    assert (while_running.state, while_running.value) == (OptunaState.FAIL, None)
    assert after_stopped.state == OptunaState.PRUNED
    assert after_stopped.intermediate_values == {1: 0.6}


def test_without_skipping_and_for_enqueued_configurations_every_proposal_runs(
    storage: optuna.storages.BaseStorage,
) -> None:
    searcher = always_16(storage, repeats=True)  # population-based training's members
    assert searcher.suggest("a") == searcher.suggest("b") == {"batch_size": 16}

    other = optuna.storages.InMemoryStorage()
    searcher = always_16(other)
    searcher.seed(None, [], [{"batch_size": 16}, {"batch_size": 16}])  # the user asked twice
    assert searcher.suggest("a") == searcher.suggest("b") == {"batch_size": 16}
    trials = optuna.load_study(study_name="study", storage=other).trials
    assert all(t.user_attrs == {ENQUEUED_ATTR: True} for t in trials)


def test_configurations_of_a_space_match_the_values_a_sampler_computes() -> None:
    space = {
        "dropout": FloatDistribution(0.0, 0.3, step=0.1),
        "epochs": IntDistribution(2, 6, step=2),
        "batch_size": CategoricalDistribution([16, 32]),
    }
    points = configurations(space)
    assert points is not None and len(points) == 4 * 3 * 2
    keys = {configuration_key(space, point) for point in points}
    assert len(keys) == len(points)
    # 0.1 * 3 computed another way is still the same configuration.
    sampled = {"dropout": 0.30000000000000004, "epochs": 4, "batch_size": 32}
    assert configuration_key(space, sampled) in keys
    assert configurations({**space, "learning_rate": SPACE["learning_rate"]}) is None
    assert configurations({"seed": IntDistribution(0, 10**9)}) is None  # too many to list


def test_the_nearest_untried_configurations_change_fewest_parameters_then_fewest_steps() -> None:
    space = {
        "learning_rate": CategoricalDistribution([5e-5, 3e-5, 2e-5]),  # ordered by value
        "batch_size": CategoricalDistribution([16, 32]),
        "epochs": IntDistribution(2, 4),
        "scheduler": CategoricalDistribution(["linear", "cosine", "constant"]),  # unordered
    }
    finite = FiniteSpace.of(space)
    assert finite is not None and len(finite) == 3 * 2 * 3 * 3
    wanted = {"learning_rate": 5e-5, "batch_size": 16, "epochs": 3, "scheduler": "linear"}
    tried = {configuration_key(space, wanted)}

    def changes(point: dict[str, Any]) -> dict[str, Any]:
        return {name: value for name, value in point.items() if wanted[name] != value}

    one_step = finite.nearest_untried(wanted, tried)
    assert sorted(map(str, map(changes, one_step))) == sorted(
        map(
            str,
            [
                {"learning_rate": 3e-5},
                {"batch_size": 32},
                {"epochs": 2},
                {"epochs": 4},
                {"scheduler": "cosine"},
                {"scheduler": "constant"},
            ],
        )
    )
    tried |= {configuration_key(space, point) for point in one_step}
    # One parameter two steps away (5e-5 to 2e-5) comes before two parameters changed.
    two_steps = finite.nearest_untried(wanted, tried)
    assert [changes(point) for point in two_steps] == [{"learning_rate": 2e-5}]
    tried |= {configuration_key(space, two_steps[0])}
    assert all(len(changes(point)) == 2 for point in finite.nearest_untried(wanted, tried))
    everything = {configuration_key(space, point) for point in configurations(space) or []}
    assert finite.nearest_untried(wanted, everything) == []
    assert FiniteSpace.of(SPACE) is None  # a continuous parameter: nothing to list


def closest_pair_of_proposals_while_others_run(sampler: dict[str, Any]) -> float:
    """How close, in decades of learning rate, the nearest two of four trials proposed at once
    lie, after 20 finished trials of a study whose best learning rate is 1e-4."""
    definition = resolve_definition(
        {
            "name": "study",
            "dataset": {"train": "train.csv"},
            "parameters": {
                "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True}
            },
            "sampler": {"type": "tpe", "n_startup_trials": 5, **sampler},
        }
    )
    searcher = StudySearcher(
        space=SPACE,
        metric="objective",
        mode="max",
        sampler=optuna_sampler(definition),
        study_name="study",
        storage=optuna.storages.InMemoryStorage(),
    )
    for number in range(20):
        config = searcher.suggest(f"done-{number}")
        score = -((math.log10(config["learning_rate"]) + 4) ** 2)
        searcher.on_trial_complete(f"done-{number}", epoch(3, score))
    running = [math.log10(searcher.suggest(f"running-{n}")["learning_rate"]) for n in range(4)]
    return min(abs(a - b) for a, b in itertools.combinations(running, 2))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tpe_spreads_trials_proposed_while_others_run(seed: int) -> None:
    # By default a running trial counts as the worst score so far (TPE's constant liar), so
    # trials proposed at once keep apart; without it they crowd onto TPE's favourite.
    spread = closest_pair_of_proposals_while_others_run({"seed": seed})
    crowded = closest_pair_of_proposals_while_others_run({"seed": seed, "constant_liar": False})
    assert spread > 5 * crowded
