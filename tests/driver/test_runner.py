"""Whole studies through the real runner: Ray Tune trials that fine-tune tiny models, recorded in
the service's tables and in Optuna's."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import optuna
import pytest
from helpers import optuna_trials, run, tiny_study
from optuna.trial import TrialState as OptunaState
from tiny_models import save_tiny_model

from hpo_service.core.errors import AlreadyExistsError, DefinitionError
from hpo_service.core.presets import resolve_definition
from hpo_service.core.records import StudyStatus, TrialState
from hpo_service.core.settings import Settings
from hpo_service.db.reconcile import ERROR_ATTR
from hpo_service.db.store import Store
from hpo_service.driver.runner import check_trials_fit, resume_study
from hpo_service.driver.searcher import REPEATS_ATTR

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_runtime")]


@pytest.mark.parametrize("family", ["bert", "roberta", "albert", "distilbert"])
def test_each_model_family_fine_tunes_through_the_runner(
    family: str,
    tiny_models: dict[str, Path],
    sentiment_files: tuple[Path, Path],
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    document = tiny_study(family, tiny_models[family], sentiment_files, parameters={"dropout": 0.2})
    status, store = run(document, sqlite_url, tmp_path)

    assert status == StudyStatus.COMPLETED
    [trial] = store.trials(family, with_curves=True)
    assert trial.state == TrialState.COMPLETE, trial.error
    assert trial.epochs == 1 and len(trial.learning_curve) == 1
    assert trial.objective == trial.accuracy and 0.0 <= trial.accuracy <= 1.0
    assert trial.eval_loss is not None and trial.eval_loss > 0
    assert trial.params["dropout"] == 0.2


def test_tpe_study_lands_in_both_tables(
    tiny_models: dict[str, Path],
    sentiment_files: tuple[Path, Path],
    database_url: str,
    tmp_path: Path,
) -> None:
    document = tiny_study(
        "tpe-study",
        tiny_models["bert"],
        sentiment_files,
        parameters={
            "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
            "num_train_epochs": 2,
        },
        sampler={"type": "tpe", "seed": 7, "n_startup_trials": 2},
        limits={"trials": 4, "concurrent_trials": 2},
    )
    status, store = run(document, database_url, tmp_path)

    assert status == StudyStatus.COMPLETED
    ours = store.trials("tpe-study", with_curves=True)
    theirs = {t.number: t for t in optuna_trials(database_url, "tpe-study")}
    assert sorted(t.number for t in ours) == sorted(theirs) == [0, 1, 2, 3]
    for trial in ours:
        optuna_trial = theirs[trial.number]
        assert trial.state == TrialState.COMPLETE
        assert optuna_trial.state == OptunaState.COMPLETE
        assert optuna_trial.value == pytest.approx(trial.objective)
        assert set(optuna_trial.params) == {"learning_rate", "weight_decay"}
        for name, value in optuna_trial.params.items():
            assert trial.params[name] == pytest.approx(value)
        # The learning curve: one evaluation per epoch, in both tables.
        assert [e.epoch for e in trial.learning_curve] == [1, 2]
        assert optuna_trial.intermediate_values == pytest.approx(
            {e.epoch: e.objective for e in trial.learning_curve}
        )
    assert store.get_study("tpe-study").trial_counts[TrialState.COMPLETE] == 4


def test_a_search_trains_each_configuration_once_and_ends_when_all_were_tried(
    tiny_models: dict[str, Path],
    sentiment_files: tuple[Path, Path],
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    document = tiny_study(
        "small-space",
        tiny_models["bert"],
        sentiment_files,
        parameters={"learning_rate": {"type": "categorical", "choices": [1e-4, 1e-3]}},
        sampler={"type": "tpe", "seed": 3, "n_startup_trials": 1},
        limits={"trials": 4},
    )
    status, store = run(document, sqlite_url, tmp_path)

    assert status == StudyStatus.COMPLETED
    assert "all 2 configurations" in (store.get_study("small-space").error or "")
    ours = store.trials("small-space")
    assert sorted(t.params["learning_rate"] for t in ours) == [1e-4, 1e-3]
    # Every Optuna trial that has no row of ours is a proposal of a trained configuration.
    trained = {t.number for t in ours}
    for trial in optuna_trials(sqlite_url, "small-space"):
        if trial.number not in trained:
            assert trial.user_attrs[REPEATS_ATTR] in trained


def test_grid_study_runs_every_point_exactly_once_with_concurrency(
    tiny_models: dict[str, Path],
    sentiment_files: tuple[Path, Path],
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    rates, sizes = [1e-4, 1e-3, 3e-3], [8, 16]
    document = tiny_study(
        "grid-study",
        tiny_models["bert"],
        sentiment_files,
        parameters={
            "learning_rate": {"type": "categorical", "choices": rates},
            "batch_size": {"type": "categorical", "choices": sizes},
        },
        sampler={"type": "grid", "seed": 3},
        limits={"trials": None, "concurrent_trials": 2},
    )
    status, store = run(document, sqlite_url, tmp_path)

    assert status == StudyStatus.COMPLETED
    points = [
        (t.params["learning_rate"], t.params["batch_size"]) for t in store.trials("grid-study")
    ]
    assert sorted(points) == sorted(itertools.product(rates, sizes))
    assert len(optuna_trials(sqlite_url, "grid-study")) == len(rates) * len(sizes)


@pytest.mark.parametrize(
    "early_stopping",
    [
        {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        {"type": "hyperband", "grace_period": 1, "reduction_factor": 2, "brackets": 2},
        {"type": "median", "grace_period": 1, "min_samples_required": 2},
    ],
    ids=lambda rule: rule["type"],
)
def test_early_stopping_stops_trials_and_never_ranks_them_best(
    early_stopping: dict[str, Any],
    tiny_models: dict[str, Path],
    sentiment_files: tuple[Path, Path],
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    document = tiny_study(
        "asha-study",
        tiny_models["bert"],
        sentiment_files,
        objective={"metric": "eval_loss"},
        parameters={
            "learning_rate": {"type": "float", "low": 1e-5, "high": 5e-2, "log": True},
            "num_train_epochs": 3,
        },
        sampler={"type": "random", "seed": 11},
        early_stopping=early_stopping,
        limits={"trials": 8, "concurrent_trials": 1},
    )
    status, store = run(document, sqlite_url, tmp_path)

    assert status == StudyStatus.COMPLETED
    trials = store.trials("asha-study", with_curves=True)
    stopped = [t for t in trials if t.state == TrialState.EARLY_STOPPED]
    assert stopped, [(t.state, t.epochs) for t in trials]
    assert all(t.epochs < 3 and len(t.learning_curve) == t.epochs for t in stopped)
    best = store.best_trial("asha-study")
    assert best is not None and best.state == TrialState.COMPLETE and best.epochs == 3

    theirs = {t.number: t for t in optuna_trials(sqlite_url, "asha-study")}
    for trial in stopped:  # Optuna calls them pruned, with every epoch's value
        assert theirs[trial.number].state == OptunaState.PRUNED
        assert sorted(theirs[trial.number].intermediate_values) == list(range(1, trial.epochs + 1))
    study = optuna.load_study(study_name="asha-study", storage=sqlite_url)
    assert study.best_trial.number == best.number


def test_failing_trial_is_recorded_and_the_study_goes_on(
    tiny_models: dict[str, Path],
    sentiment_files: tuple[Path, Path],
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    # A polynomial schedule decays to 1e-7: a starting rate below that is a real training error.
    document = tiny_study(
        "failing-study",
        tiny_models["bert"],
        sentiment_files,
        parameters={
            "learning_rate": {"type": "categorical", "choices": [1e-8, 1e-3]},
            "lr_scheduler": "polynomial",
        },
        sampler={"type": "grid"},
        limits={"trials": None, "max_failed_trials": 2},
    )
    status, store = run(document, sqlite_url, tmp_path)

    assert status == StudyStatus.COMPLETED
    by_rate = {t.params["learning_rate"]: t for t in store.trials("failing-study")}
    assert by_rate[1e-8].state == TrialState.FAILED
    assert "lr_end" in (by_rate[1e-8].error or "")
    assert by_rate[1e-3].state == TrialState.COMPLETE
    assert store.best_trial("failing-study").number == by_rate[1e-3].number
    states = {t.number: t.state for t in optuna_trials(sqlite_url, "failing-study")}
    assert states[by_rate[1e-8].number] == OptunaState.FAIL


@pytest.mark.parametrize("fuse", [1, 2], ids=["alone", "fused"])
def test_a_diverged_trial_fails_saying_so_and_the_study_goes_on(
    fuse: int, sentiment_files: tuple[Path, Path], sqlite_url: str, tmp_path: Path
) -> None:
    """NaN losses end the trial at that epoch (Optuna refuses a NaN objective: told as
    complete, it used to raise in the searcher and end the whole study)."""
    model = save_tiny_model("bert", tmp_path / "overflowing", overflowing=True)
    document = tiny_study(
        "diverging",
        model,
        sentiment_files,
        parameters={"learning_rate": {"type": "categorical", "choices": [1e-3, 1e-4]}},
        objective={"metric": "eval_loss"},
        sampler={"type": "grid"},
        limits={"trials": None, "max_failed_trials": None},
        execution={"fuse_trials": fuse},
    )
    status, store = run(document, sqlite_url, tmp_path)

    assert status == StudyStatus.COMPLETED
    trials = store.trials("diverging")
    assert [t.state for t in trials] == [TrialState.FAILED] * 2
    for trial in trials:
        assert "training diverged at epoch 1: train_loss nan" in (trial.error or ""), trial.error
    theirs = optuna_trials(sqlite_url, "diverging")
    assert [t.state for t in theirs] == [OptunaState.FAIL] * 2
    # The dashboard shows why: each failed trial's error, as recorded in our table.
    assert [t.user_attrs[ERROR_ATTR] for t in theirs] == [t.error for t in trials]


def test_failed_trial_limit_stops_the_study(
    tiny_models: dict[str, Path],
    sentiment_files: tuple[Path, Path],
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    document = tiny_study(
        "doomed-study",
        tiny_models["bert"],
        sentiment_files,
        parameters={
            "learning_rate": {"type": "float", "low": 1e-10, "high": 1e-8, "log": True},
            "lr_scheduler": "polynomial",
        },
        limits={"trials": 6, "max_failed_trials": 2},
    )
    status, store = run(document, sqlite_url, tmp_path)

    assert status == StudyStatus.FAILED
    record = store.get_study("doomed-study")
    assert "max_failed_trials" in (record.error or "")
    assert record.trial_counts[TrialState.FAILED] == 2
    assert len(store.trials("doomed-study")) < 6


def test_bad_data_is_refused_before_anything_is_stored(
    tiny_models: dict[str, Path],
    sentiment_files: tuple[Path, Path],
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    document = tiny_study(
        "bad-data", tiny_models["bert"], sentiment_files, dataset={"label_field": "stars"}
    )
    with pytest.raises(DefinitionError) as error:
        run(document, sqlite_url, tmp_path)
    assert error.value.field == "dataset.label_field"
    assert Store.open(Settings(database_url=sqlite_url).database_url).study_names() == []


def test_a_taken_name_is_refused_and_the_first_study_kept(
    tiny_models: dict[str, Path],
    sentiment_files: tuple[Path, Path],
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    document = tiny_study("twice", tiny_models["bert"], sentiment_files)
    run(document, sqlite_url, tmp_path)
    with pytest.raises(AlreadyExistsError):
        run(document, sqlite_url, tmp_path)
    store = Store.open(Settings(database_url=sqlite_url).database_url)
    assert store.get_study("twice").status == StudyStatus.COMPLETED
    assert len(store.trials("twice")) == 1


@pytest.mark.parametrize(
    ("resources", "field"),
    [({"cpus": 3}, "resources_per_trial.cpus"), ({"gpus": 1}, "resources_per_trial.gpus")],
)
def test_a_trial_no_node_can_hold_is_refused_not_left_waiting(
    resources: dict[str, float],
    field: str,
    tiny_models: dict[str, Path],
    sentiment_files: tuple[Path, Path],
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    """The session's local Ray has 2 CPUs and no GPU, and gains no nodes: Ray would keep such a
    trial pending forever. `hpo run` stores nothing; a queued study (the service's) fails."""
    document = tiny_study(
        "too-big", tiny_models["bert"], sentiment_files, resources_per_trial=resources
    )
    with pytest.raises(DefinitionError) as error:
        run(document, sqlite_url, tmp_path)
    assert error.value.field == field and "at most 2 CPUs and 0 GPUs a node" in str(error.value)
    store = Store.open(sqlite_url)
    assert store.find_study("too-big") is None

    store.create_study(document, resolve_definition(document))
    settings = Settings(database_url=sqlite_url, work_dir=tmp_path / "work")
    with pytest.raises(DefinitionError):
        resume_study("too-big", settings)
    record = store.get_study("too-big")
    assert record.status == StudyStatus.FAILED and field in (record.error or "")
    assert store.trials("too-big") == []


def test_a_cluster_that_may_gain_nodes_is_not_checked(tiny_models: dict[str, Path]) -> None:
    document = tiny_study(
        "big", tiny_models["bert"], (Path("t.csv"), Path("d.csv")), resources_per_trial={"cpus": 64}
    )
    definition = resolve_definition(document)
    check_trials_fit(definition, Settings(ray_fixed_size=False))
    check_trials_fit(definition, Settings(ray_address="ray://head:10001"))  # may autoscale
    with pytest.raises(DefinitionError):
        check_trials_fit(definition, Settings(ray_address="ray://head:10001", ray_fixed_size=True))
