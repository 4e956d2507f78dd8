"""After a crash: make hpo-service's tables and Optuna's agree, and queue interrupted trials again.

A driver can die at any point between Optuna's ``ask``, our ``start_trial``, each epoch, our
``finish_trial`` and Optuna's ``tell``. Our tables are the authority for a trial they finished;
Optuna's for one it finished that ours still shows running. Every other trial left running in
either is interrupted: FAIL in Optuna (user attribute ``hpo:interrupted``), ``interrupted`` in
ours (a row is added for a trial only Optuna knew), and its configuration is enqueued in Optuna
so the sampler runs it again first, from its last checkpoint where one was saved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial
from optuna.trial import TrialState as OptunaState

from hpo_service.core.records import CUT_OFF, TrialRecord, TrialState
from hpo_service.db.store import Store

INTERRUPTED = "interrupted: the study's driver stopped before this trial finished"
CHECKPOINT_ATTR = "hpo:checkpoint"
CHECKPOINT_EPOCH_ATTR = "hpo:checkpoint_epoch"  # the epoch whose state it holds
RESUMES_ATTR = "hpo:resumes_trial"
INTERRUPTED_ATTR = "hpo:interrupted"
# A confirmation run: the search trial whose configuration it repeats, and its seed.
CONFIRMS_ATTR = "hpo:confirms"
SEED_ATTR = "hpo:seed"
ERROR_ATTR = "hpo:error"  # a failed trial's error, for the dashboard

_OURS_FROM_OPTUNA = {
    OptunaState.COMPLETE: TrialState.COMPLETE,
    OptunaState.PRUNED: TrialState.EARLY_STOPPED,
    OptunaState.FAIL: TrialState.FAILED,
}
_OPTUNA_FROM_OURS = {v: k for k, v in _OURS_FROM_OPTUNA.items()}


@dataclass(frozen=True)
class Reconciliation:
    """What one reconciliation changed: trial numbers per kind of repair."""

    interrupted: list[int]
    adopted_from_optuna: list[int]
    told_to_optuna: list[int]


def reconcile(store: Store, storage: optuna.storages.BaseStorage, study: str) -> Reconciliation:
    """Repair both stores of ``study`` after its driver died; see the module's docstring."""
    ours = {trial.number: trial for trial in store.trials(study)}
    try:
        optuna_study = optuna.load_study(study_name=study, storage=storage)
    except KeyError:  # the driver died before Optuna heard of the study
        numbers = store.interrupt_running_trials(study, INTERRUPTED)
        return Reconciliation(interrupted=numbers, adopted_from_optuna=[], told_to_optuna=[])
    goals = store.get_study(study).goals
    interrupted, adopted, told = [], [], []
    for theirs in optuna_study.get_trials(deepcopy=False):
        mine = ours.get(theirs.number)
        if theirs.state.is_finished():
            if mine is not None and mine.state == TrialState.RUNNING:
                _adopt(store, study, mine, theirs)
                adopted.append(theirs.number)
        elif theirs.state == OptunaState.RUNNING:
            if mine is not None and mine.state.is_finished:
                _tell(storage, theirs, mine, [goal.metric for goal in goals])
                told.append(theirs.number)
            else:
                _interrupt(store, storage, optuna_study, study, theirs, mine)
                interrupted.append(theirs.number)
    # Trials ours shows running that Optuna never asked for: nothing to run again.
    interrupted += store.interrupt_running_trials(study, INTERRUPTED)
    return Reconciliation(sorted(interrupted), adopted, told)


def _adopt(store: Store, study: str, mine: TrialRecord, theirs: FrozenTrial) -> None:
    """Optuna heard how the trial ended, ours did not: record Optuna's outcome."""
    if theirs.user_attrs.get(INTERRUPTED_ATTR):
        store.finish_trial(study, mine.number, TrialState.INTERRUPTED, INTERRUPTED)
        return
    error = None
    if theirs.state == OptunaState.FAIL:
        error = theirs.user_attrs.get(ERROR_ATTR, "failed (recorded by Optuna only)")
    store.finish_trial(study, mine.number, _OURS_FROM_OPTUNA[theirs.state], error)


def _tell(
    storage: optuna.storages.BaseStorage,
    theirs: FrozenTrial,
    mine: TrialRecord,
    metrics: list[str],
) -> None:
    """Ours recorded how the trial ended, Optuna did not: tell it (every objective's value
    when the study has several ``metrics``)."""
    state = _OPTUNA_FROM_OURS[mine.state]
    values = None
    if state == OptunaState.COMPLETE:
        several = [mine.metrics[m] for m in metrics] if len(metrics) > 1 else None
        values = several or [mine.objective]
    if state == OptunaState.FAIL and mine.error:
        storage.set_trial_user_attr(theirs._trial_id, ERROR_ATTR, mine.error)
    storage.set_trial_state_values(theirs._trial_id, state, values)


def _interrupt(
    store: Store,
    storage: optuna.storages.BaseStorage,
    optuna_study: optuna.Study,
    study: str,
    theirs: FrozenTrial,
    mine: TrialRecord | None,
) -> None:
    # In this order, a crash part-way through runs the trial twice at worst, never zero times.
    attrs: dict[str, Any] = {RESUMES_ATTR: theirs.number}
    # A confirmation run stays one; a rerun cut off before it saved a checkpoint goes on from
    # this one.
    for carried in (CHECKPOINT_ATTR, CHECKPOINT_EPOCH_ATTR, CONFIRMS_ATTR, SEED_ATTR):
        if carried in theirs.user_attrs:
            attrs[carried] = theirs.user_attrs[carried]
    optuna_study.enqueue_trial(dict(theirs.params), user_attrs=attrs, skip_if_exists=False)
    storage.set_trial_user_attr(theirs._trial_id, INTERRUPTED_ATTR, True)
    storage.set_trial_state_values(theirs._trial_id, OptunaState.FAIL)
    if mine is None:  # asked, but cut off before our tables recorded it
        confirms = theirs.user_attrs.get(CONFIRMS_ATTR)
        store.start_trial(study, theirs.number, dict(theirs.params), confirms=confirms)
    store.finish_trial(study, theirs.number, TrialState.INTERRUPTED, INTERRUPTED)


def fail_cut_off_trials(
    store: Store, storage: optuna.storages.BaseStorage, study: str, why: str
) -> None:
    """A stopped study's trials still running end as failed, in both stores: cut off (the error
    ``CUT_OFF``, then ``why`` the study stopped)."""
    error = f"{CUT_OFF}: {why}"
    for trial in store.trials(study):
        if trial.state == TrialState.RUNNING:
            store.finish_trial(study, trial.number, TrialState.FAILED, error)
    try:
        optuna_study = optuna.load_study(study_name=study, storage=storage)
    except KeyError:
        return
    for theirs in optuna_study.get_trials(deepcopy=False, states=(OptunaState.RUNNING,)):
        storage.set_trial_user_attr(theirs._trial_id, ERROR_ATTR, error)
        storage.set_trial_state_values(theirs._trial_id, OptunaState.FAIL)
