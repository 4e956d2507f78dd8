"""Population-based training: members train at once, the worse go on from a better member's
state with perturbed values, and each member stays one trial with its schedule of values."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
from helpers import optuna_trials, run, tiny_study
from optuna.distributions import FloatDistribution

from hpo_service.core.definition import StudyDefinition
from hpo_service.core.records import StudyStatus, TrialState
from hpo_service.db.reconcile import CHECKPOINT_ATTR, CHECKPOINT_EPOCH_ATTR, RESUMES_ATTR
from hpo_service.driver.population import CHECKPOINTS_ATTR, SCHEDULE_ATTR, PopulationSearch
from hpo_service.driver.searcher import RESUME_KEY, StudySearcher
from hpo_service.service.best import best_config

LOW, HIGH = 1e-4, 3e-2
DOCUMENT = {
    "name": "pbt",
    "dataset": {"train": "train.csv", "eval": "dev.csv"},
    "parameters": {"learning_rate": {"type": "float", "low": LOW, "high": HIGH}},
    "early_stopping": {"type": "pbt", "mutate": ["learning_rate"], "synch": True},
    "limits": {"trials": 2, "concurrent_trials": 2},
}


@pytest.mark.slow
@pytest.mark.usefixtures("ray_runtime")
def test_a_population_trains_with_schedules_of_mutated_values(
    tiny_models: dict[str, Path],
    sentiment_files: tuple[Path, Path],
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    document = tiny_study(
        "pbt",
        tiny_models["bert"],
        sentiment_files,
        parameters={
            "learning_rate": {"type": "float", "low": LOW, "high": HIGH, "log": True},
            "weight_decay": {"type": "categorical", "choices": [0.0, 0.01, 0.1]},
            "num_train_epochs": 4,
        },
        sampler={"type": "random", "seed": 3},
        early_stopping={
            "type": "pbt",
            "mutate": ["learning_rate", "weight_decay"],
            "quantile_fraction": 0.5,
            "synch": True,  # both members compared at every epoch: an exploit every time
        },
        limits={"trials": 2, "concurrent_trials": 2},
    )
    status, store = run(document, sqlite_url, tmp_path)
    assert status == StudyStatus.COMPLETED, store.get_study("pbt").error
    trials = store.trials("pbt", with_curves=True)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    theirs = {t.number: t for t in optuna_trials(sqlite_url, "pbt")}
    for trial in trials:
        assert [e.epoch for e in trial.learning_curve] == [1, 2, 3, 4]
        schedule = trial.schedule
        assert schedule is not None and schedule[0]["epoch"] == 1
        # It starts with the values Optuna proposed, and every value stays in the space.
        first = {k: schedule[0][k] for k in ("learning_rate", "weight_decay")}
        assert first == {k: trial.params[k] for k in first}
        searched = theirs[trial.number].params
        assert searched == {k: trial.params[k] for k in ("learning_rate", "weight_decay")}
        assert theirs[trial.number].user_attrs[SCHEDULE_ATTR] == schedule
        assert theirs[trial.number].value == trial.objective
        # Both stores keep the member's own curve, also at the epoch it went on from another's.
        curve = {e.epoch: e.objective for e in trial.learning_curve}
        assert theirs[trial.number].intermediate_values == curve
        for change in schedule:
            assert LOW <= change["learning_rate"] <= HIGH
            assert change["weight_decay"] in (0.0, 0.01, 0.1)
        assert [c["epoch"] for c in schedule] == sorted({c["epoch"] for c in schedule})
        # No change after its last epoch: a member that finished is not restarted from
        # another's state (it would end with that member's score as its own).
        assert schedule[-1]["epoch"] <= 4, schedule
    changes = [c for t in trials for c in t.schedule[1:]]  # type: ignore[index]
    assert changes, "PBT never exploited a member in 3 perturbations"
    best = best_config(store, "pbt")  # the schedule a pipeline retrains with
    winner = store.trial("pbt", best["trial"])
    assert best["schedule"] == winner.schedule
    assert best["parameters"]["learning_rate"] == winner.schedule[0]["learning_rate"]  # type: ignore[index]


def test_members_end_at_their_last_epoch_and_a_synchronous_population_losing_one_stops() -> None:
    """Ray's synchronous PBT waits for every member at each perturbation: one that failed
    would keep the rest paused forever, so the study's stopper ends the population."""
    members = PopulationSearch(None, None, "pbt", StudyDefinition.model_validate(DOCUMENT))  # type: ignore[arg-type]
    assert not members.stop_all()
    # Each member ends at its last planned epoch, before PBT could restart it from another's.
    assert not members("t", {"epoch": 1, "epochs_planned": 2})
    assert members("t", {"epoch": 2, "epochs_planned": 2})
    members.on_trial_error(0, [], SimpleNamespace(trial_id="not-started"))
    assert members.stop_all() and "a member failed" in str(members.reason)


# Two members cut off by a crash: one after its epoch 2 checkpoint, one after its epoch 1's.
CUT_OFF = [
    {"learning_rates": [1e-3, 2e-3], "scores": [0.5, 0.6], "checkpoints": ["/a/1", "/a/2"]},
    {"learning_rates": [1e-4], "scores": [0.4], "checkpoints": ["/b/1"]},
]


def population_after_a_crash(cut_off: list[dict[str, Any]], synch: bool) -> PopulationSearch:
    """A population whose members ``cut_off`` (their values, scores and checkpoints from
    epoch 1 on) were interrupted and enqueued again, as the service does; asked for."""
    space = {"learning_rate": FloatDistribution(LOW, HIGH, log=True)}
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name="pbt", storage=storage, direction="maximize")
    for member in cut_off:
        rates = member["learning_rates"]
        study.enqueue_trial({"learning_rate": rates[0]})
        trial = study.ask(space)
        schedule = [{"epoch": 1 + i, "learning_rate": rate} for i, rate in enumerate(rates)]
        trial.set_user_attr(SCHEDULE_ATTR, schedule)
        trial.set_user_attr(CHECKPOINTS_ATTR, dict(enumerate(member["checkpoints"], 1)))
        for epoch, score in enumerate(member["scores"], 1):
            trial.report(score, epoch)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    for number, member in enumerate(cut_off):  # run again, first
        attrs: dict[str, Any] = {RESUMES_ATTR: number}
        if member["checkpoints"]:
            attrs[CHECKPOINT_ATTR] = member["checkpoints"][-1]
            attrs[CHECKPOINT_EPOCH_ATTR] = len(member["checkpoints"])
        study.enqueue_trial(study.trials[number].params, user_attrs=attrs)
    searcher = StudySearcher(
        repeats=True,
        space=space,
        metric="objective",
        mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0),
        study_name="pbt",
        storage=storage,
    )
    document = {**DOCUMENT, "early_stopping": {**DOCUMENT["early_stopping"], "synch": synch}}
    definition = StudyDefinition.model_validate(document)
    members = PopulationSearch(searcher, None, "pbt", definition)  # type: ignore[arg-type]
    members.search(len(cut_off), len(cut_off))
    return members


@pytest.mark.parametrize(
    ("synch", "epochs", "rates"), [(True, [1, 1], [1e-3, 1e-4]), (False, [2, 1], [2e-3, 1e-4])]
)
def test_reruns_go_on_from_checkpoints_and_a_synchronous_population_in_step(
    synch: bool, epochs: list[int], rates: list[float]
) -> None:
    members = population_after_a_crash(CUT_OFF, synch)
    for (asked, config), member, epoch, rate in zip(
        members.asked.items(), CUT_OFF, epochs, rates, strict=True
    ):
        path = member["checkpoints"][epoch - 1]
        assert config[RESUME_KEY]["checkpoint"] == path and config[RESUME_KEY]["epoch"] == epoch
        # It trains on with the values it had reached at that epoch; its schedule so far goes
        # with it, and Optuna's curve up to that epoch.
        assert config["learning_rate"] == rate
        assert [c["epoch"] for c in members.carried[asked]] == list(range(1, epoch + 1))
        carried = members.searcher.study_trial(members.searcher.trial_number(asked))
        assert list(carried.intermediate_values) == list(range(1, epoch + 1))


def test_a_synchronous_population_starts_again_when_a_member_saved_no_checkpoint() -> None:
    unsaved = {"learning_rates": [3e-4], "scores": [], "checkpoints": []}
    members = population_after_a_crash([CUT_OFF[0], unsaved], synch=True)
    for config in members.asked.values():
        assert config[RESUME_KEY]["checkpoint"] is None
