"""After a crash, one reconciliation makes our tables and Optuna's agree and queues the
interrupted trials again, on SQLite and PostgreSQL."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState as OptunaState

from hpo_service.core.definition import StudyDefinition
from hpo_service.core.records import TrialState
from hpo_service.core.settings import normalize_database_url
from hpo_service.db.optuna_storage import optuna_storage
from hpo_service.db.reconcile import (
    CHECKPOINT_ATTR,
    CONFIRMS_ATTR,
    ERROR_ATTR,
    INTERRUPTED_ATTR,
    RESUMES_ATTR,
    SEED_ATTR,
    fail_cut_off_trials,
    reconcile,
)
from hpo_service.db.store import Store

SPACE = {"learning_rate": FloatDistribution(1e-5, 1e-2, log=True)}
AGREES = {
    TrialState.COMPLETE: OptunaState.COMPLETE,
    TrialState.EARLY_STOPPED: OptunaState.PRUNED,
    TrialState.FAILED: OptunaState.FAIL,
    TrialState.INTERRUPTED: OptunaState.FAIL,
}


@pytest.fixture
def stores(database_url: str) -> tuple[Store, optuna.storages.RDBStorage, optuna.Study]:
    url = normalize_database_url(database_url)
    store = Store.open(url)
    definition = StudyDefinition.model_validate(
        {
            "name": "crashed",
            "dataset": {"train": "train.csv", "eval": "dev.csv"},
            "parameters": {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2}},
        }
    )
    store.create_study({"name": "crashed"}, definition)
    storage = optuna_storage(url)
    study = optuna.create_study(study_name="crashed", storage=storage, direction="maximize")
    return store, storage, study


def asked(study: optuna.Study, store: Store | None, rate: float) -> optuna.Trial:
    """An Optuna trial as the driver asks it; ``store``: recorded in ours too."""
    study.enqueue_trial({"learning_rate": rate})
    trial = study.ask(SPACE)
    if store is not None:
        store.start_trial("crashed", trial.number, {"learning_rate": rate})
        store.record_epoch("crashed", trial.number, {"epoch": 1, "objective": 0.5})
    return trial


def test_every_way_a_crash_leaves_the_stores_is_repaired(
    stores: tuple[Store, optuna.storages.RDBStorage, optuna.Study],
) -> None:
    store, storage, study = stores
    done = asked(study, store, 1e-4)  # finished in both
    store.finish_trial("crashed", done.number, TrialState.COMPLETE)
    study.tell(done, 0.5)
    cut = asked(study, store, 2e-4)  # running in both: the driver died mid-trial
    ghost = asked(study, None, 3e-4)  # Optuna asked, ours never recorded it
    ours_only = asked(study, store, 4e-4)  # ours finished it, Optuna was never told
    store.finish_trial("crashed", ours_only.number, TrialState.COMPLETE)
    theirs_only = asked(study, store, 5e-4)  # Optuna pruned it, ours was never told
    theirs_only.report(0.5, 1)
    study.tell(theirs_only, state=OptunaState.PRUNED)
    saved = asked(study, store, 6e-4)  # cut off after saving a checkpoint
    saved.set_user_attr(CHECKPOINT_ATTR, "/checkpoints/trial-5")
    ours_failed = asked(study, store, 7e-4)  # ours recorded its error, Optuna was never told
    store.finish_trial("crashed", ours_failed.number, TrialState.FAILED, "ValueError: ours")
    theirs_failed = asked(study, store, 8e-4)  # Optuna was told it failed, and why; ours not
    theirs_failed.set_user_attr(ERROR_ATTR, "ValueError: theirs")
    study.tell(theirs_failed, state=OptunaState.FAIL)
    before = store.trials("crashed", with_curves=True)[done.number]

    result = reconcile(store, storage, "crashed")

    assert result.interrupted == [cut.number, ghost.number, saved.number]
    assert result.adopted_from_optuna == [theirs_only.number, theirs_failed.number]
    assert result.told_to_optuna == [ours_only.number, ours_failed.number]
    ours = {t.number: t for t in store.trials("crashed", with_curves=True)}
    theirs = {t.number: t for t in study.get_trials() if t.state != OptunaState.WAITING}
    assert sorted(ours) == sorted(theirs)  # the ghost has a row of ours now
    for number, trial in ours.items():
        assert AGREES[trial.state] == theirs[number].state, number
    assert ours[done.number] == before  # a finished trial is untouched
    assert ours[ours_only.number].state == TrialState.COMPLETE
    assert theirs[ours_only.number].value == ours[ours_only.number].objective
    assert ours[theirs_only.number].state == TrialState.EARLY_STOPPED
    # A failed trial's error ends up in both: ours' `error`, Optuna's `hpo:error`.
    assert theirs[ours_failed.number].user_attrs[ERROR_ATTR] == "ValueError: ours"
    assert ours[theirs_failed.number].error == "ValueError: theirs"
    for number in result.interrupted:
        assert ours[number].state == TrialState.INTERRUPTED
        assert theirs[number].user_attrs[INTERRUPTED_ATTR] is True

    waiting = study.get_trials(states=(OptunaState.WAITING,))
    queued = {t.user_attrs[RESUMES_ATTR]: t for t in waiting}
    assert sorted(queued) == result.interrupted  # each interrupted trial runs again...
    for number, trial in queued.items():  # ...with its own configuration
        assert trial.system_attrs["fixed_params"] == theirs[number].params
    assert queued[saved.number].user_attrs[CHECKPOINT_ATTR] == "/checkpoints/trial-5"
    assert CHECKPOINT_ATTR not in queued[cut.number].user_attrs

    again = reconcile(store, storage, "crashed")  # nothing left to repair
    assert again.interrupted == again.adopted_from_optuna == again.told_to_optuna == []
    assert len(study.get_trials(states=(OptunaState.WAITING,))) == len(waiting)


def test_a_cancelled_study_fails_its_cut_off_trials_in_both_stores(
    stores: tuple[Store, optuna.storages.RDBStorage, optuna.Study],
) -> None:
    store, storage, study = stores
    trial = asked(study, store, 1e-4)
    fail_cut_off_trials(store, storage, "crashed", "cancelled")
    [ours] = store.trials("crashed")
    assert (ours.state, ours.error) == (
        TrialState.FAILED,
        "cut off when the study stopped: cancelled",
    )
    assert ours.cut_off
    assert study.get_trials()[trial.number].user_attrs[ERROR_ATTR] == ours.error
    assert study.get_trials()[trial.number].state == OptunaState.FAIL


def test_an_interrupted_confirmation_run_runs_again_as_the_same_confirmation_run(
    stores: tuple[Store, optuna.storages.RDBStorage, optuna.Study],
) -> None:
    store, storage, study = stores
    search = asked(study, store, 1e-3)
    study.tell(search, 0.8)
    store.finish_trial("crashed", search.number, TrialState.COMPLETE)
    attrs = {CONFIRMS_ATTR: search.number, SEED_ATTR: 10_000}
    study.enqueue_trial({"learning_rate": 1e-3}, user_attrs=attrs)
    run = study.ask(SPACE)  # then the driver died: Optuna heard of it, our tables did not
    assert run.user_attrs == attrs

    reconcile(store, storage, "crashed")
    cut_off, again = study.get_trials(deepcopy=False)[1:]
    assert cut_off.state == OptunaState.FAIL and cut_off.user_attrs[INTERRUPTED_ATTR]
    assert store.trial("crashed", cut_off.number).confirms == search.number
    assert again.state == OptunaState.WAITING
    assert again.user_attrs == {RESUMES_ATTR: cut_off.number, **attrs}
    assert store.finished_trial_count("crashed") == 1  # confirmation runs are not the search's
