"""The recorder writes each trial, each epoch and each outcome to our tables; the failure limit
and the cancel watch stop a study. Ray's trials are stand-ins here (a narrow unit test)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution

from hpo_service.core.definition import StudyDefinition
from hpo_service.core.records import StudyStatus, TrialState
from hpo_service.db.reconcile import CHECKPOINT_ATTR, CHECKPOINT_EPOCH_ATTR, RESUMES_ATTR
from hpo_service.db.store import Store
from hpo_service.driver.recorder import CancelWatch, FailedTrialLimit, TrialRecorder
from hpo_service.driver.searcher import RESUME_KEY, StudySearcher

SPACE = {"learning_rate": FloatDistribution(1e-5, 1e-2, log=True)}


def epoch(number: int, value: float, planned: int = 2) -> dict[str, Any]:
    return {
        "objective": value,
        "accuracy": value,
        "eval_loss": 1 - value,
        "epoch": number,
        "epochs_planned": planned,
        "training_iteration": number,
        "train_loss": 0.5,
    }


@pytest.fixture
def store(sqlite_url: str) -> Store:
    store = Store.open(sqlite_url)
    definition = StudyDefinition.model_validate(
        {
            "name": "study",
            "dataset": {"train": "train.csv", "eval": "dev.csv"},
            "parameters": {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2}},
        }
    )
    store.create_study({"name": "study"}, definition)
    return store


@pytest.fixture
def searcher() -> StudySearcher:
    return StudySearcher(
        space=SPACE,
        metric="objective",
        mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0),
        study_name="study",
        storage=optuna.storages.InMemoryStorage(),
    )


def ray_trial(searcher: StudySearcher, trial_id: str, **fields: Any) -> SimpleNamespace:
    config = {**searcher.suggest(trial_id), "batch_size": 16, "dropout": None}
    defaults = {"last_result": {}, "error_file": None, "checkpoint": None}
    return SimpleNamespace(trial_id=trial_id, config=config, **{**defaults, **fields})


def test_trials_epochs_and_outcomes_are_recorded(store: Store, searcher: StudySearcher) -> None:
    recorder = TrialRecorder(store, "study", searcher)
    done, stopped, unevaluated = (ray_trial(searcher, t) for t in ("a", "b", "c"))
    for trial in (done, stopped, unevaluated):
        recorder.on_trial_start(0, [], trial)
    for trial, results in ((done, [epoch(1, 0.6), epoch(2, 0.8)]), (stopped, [epoch(1, 0.4)])):
        for result in results:
            recorder.on_trial_result(0, [], trial, result)
        trial.last_result = results[-1]
        recorder.on_trial_complete(0, [], trial)
    recorder.on_trial_complete(0, [], unevaluated)  # cancelled before its first evaluation

    trials = store.trials("study", with_curves=True)
    assert [t.state for t in trials] == [
        TrialState.COMPLETE,
        TrialState.EARLY_STOPPED,
        TrialState.FAILED,
    ]
    assert trials[0].params == {"learning_rate": done.config["learning_rate"], "batch_size": 16}
    assert [(e.epoch, e.objective) for e in trials[0].learning_curve] == [(1, 0.6), (2, 0.8)]
    assert (trials[0].objective, trials[0].eval_loss, trials[0].epochs) == (0.8, 1 - 0.8, 2)
    assert "before its first evaluation" in (trials[2].error or "")
    assert trials[2].cut_off  # the study's stop, not the trial's training


@pytest.mark.parametrize(
    ("last_line", "recorded_error"),
    [
        ("ValueError: lr too low", "ValueError: lr too low"),
        (
            "hpo_service.training.engine.TrainingDiverged: training diverged at epoch 1: a.b nan",
            "TrainingDiverged: training diverged at epoch 1: a.b nan",
        ),
        ("torch.OutOfMemoryError: CUDA out of memory.", "OutOfMemoryError: CUDA out of memory."),
    ],
)
def test_an_error_is_recorded_with_the_exception_line(
    store: Store, searcher: StudySearcher, tmp_path: Path, last_line: str, recorded_error: str
) -> None:
    error_file = tmp_path / "error.txt"
    error_file.write_text(f"Traceback (most recent call last):\n  ...\n{last_line}\n")
    trial = ray_trial(searcher, "a", error_file=str(error_file))
    recorder = TrialRecorder(store, "study", searcher)
    recorder.on_trial_start(0, [], trial)
    recorder.on_trial_error(0, [], trial)
    [recorded] = store.trials("study")
    assert (recorded.state, recorded.error) == (TrialState.FAILED, recorded_error)


def test_a_rerun_from_a_checkpoint_carries_its_curve_and_checkpoints_reach_optuna(
    store: Store, searcher: StudySearcher
) -> None:
    recorder = TrialRecorder(store, "study", searcher)
    cut = ray_trial(searcher, "cut")
    recorder.on_trial_start(0, [], cut)
    cut.last_result = epoch(1, 0.6)  # the result its checkpoint came with
    recorder.on_trial_result(0, [], cut, cut.last_result)
    recorder.on_checkpoint(0, [], cut, SimpleNamespace(path="/ckpt/cut/checkpoint_000000"))
    attrs = searcher._ot_study.trials[0].user_attrs
    assert attrs[CHECKPOINT_ATTR] == "/ckpt/cut/checkpoint_000000"
    assert attrs[CHECKPOINT_EPOCH_ATTR] == 1
    recorder.on_trial_result(0, [], cut, epoch(2, 0.7))  # cut off before its checkpoint

    carried = {k: attrs[k] for k in (CHECKPOINT_ATTR, CHECKPOINT_EPOCH_ATTR)}
    searcher._ot_study.enqueue_trial(
        searcher._ot_study.trials[0].params, user_attrs={RESUMES_ATTR: 0, **carried}
    )
    rerun = ray_trial(searcher, "rerun")
    assert rerun.config[RESUME_KEY]["trial"] == 0
    recorder.on_trial_start(0, [], rerun)
    [_, recorded] = store.trials("study", with_curves=True)
    assert RESUME_KEY not in recorded.params  # not a knob
    assert [(e.epoch, e.objective) for e in recorded.learning_curve] == [(1, 0.6)]  # its state's


def test_the_failure_limit_stops_the_study_at_its_limit() -> None:
    limit = FailedTrialLimit(limit=2, already_failed=1)
    assert not limit.stop_all()
    limit.on_trial_error(0, [], SimpleNamespace())
    assert limit.stop_all() and limit.reached
    assert not FailedTrialLimit(limit=None, already_failed=99).stop_all()


def test_the_cancel_watch_sees_a_cancelled_study(store: Store) -> None:
    watch = CancelWatch(store, "study", interval_s=0)
    assert not watch.stop_all()
    store.set_status("study", StudyStatus.CANCELLED)
    assert watch.stop_all()
