"""A driver killed mid-trial: on resume the trial it cut off runs again from its last finished
epoch, and ends exactly as it would have without the crash."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import optuna_trials, run, tiny_study
from optuna.trial import TrialState as OptunaState

from hpo_service.core.presets import merge
from hpo_service.core.records import EpochRecord, StudyStatus, TrialState
from hpo_service.core.settings import Settings
from hpo_service.db.reconcile import INTERRUPTED_ATTR, RESUMES_ATTR
from hpo_service.db.store import Store
from hpo_service.driver.population import CHECKPOINTS_ATTR, SCHEDULE_ATTR
from hpo_service.driver.runner import resume_study

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_runtime")]

# A driver that dies, as if SIGKILLed, right after its trial saved the state of epoch 2.
CRASHING_DRIVER = """
import json, os, sys
from ray import tune
from hpo_service.core.presets import resolve_definition
from hpo_service.core.settings import Settings
from hpo_service.driver.runner import run_study

class CrashAfterEpoch2(tune.Callback):
    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        if trial.last_result.get("epoch") == 2:
            os._exit(3)

document = json.loads(sys.argv[1])
settings = Settings(database_url=sys.argv[2], work_dir=sys.argv[3], ray_num_cpus=1)
run_study(document, resolve_definition(document), settings, callbacks=[CrashAfterEpoch2()])
"""


def study(name: str, model: Path, files: tuple[Path, Path]) -> dict:
    return tiny_study(
        name,
        model,
        files,
        parameters={
            "learning_rate": {"type": "categorical", "choices": [3e-3]},
            "dropout": 0.1,
            "num_train_epochs": 3,
        },
    )


def crash_midway(document: dict, database_url: str, work_dir: Path) -> Store:
    """Run ``document`` until the driver dies after a trial's epoch 2; the store it left."""
    driver = subprocess.Popen(
        [sys.executable, "-c", CRASHING_DRIVER, json.dumps(document), database_url, work_dir],
        start_new_session=True,
    )
    try:
        assert driver.wait(300) == 3
    finally:  # what the crash left of its local Ray goes too
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
    return Store.open(Settings(database_url=database_url).database_url)


def resume(store: Store, name: str, database_url: str, work_dir: Path) -> StudyStatus:
    store.set_status(name, StudyStatus.QUEUED)  # what the service does after a crash
    return resume_study(name, Settings(database_url=database_url, work_dir=work_dir)).status


def test_a_cut_off_trial_resumes_from_its_last_epoch_and_ends_as_without_the_crash(
    tiny_models: dict[str, Path],
    sentiment_files: tuple[Path, Path],
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    document = study("crashy", tiny_models["bert"], sentiment_files)
    store = crash_midway(document, sqlite_url, tmp_path / "work")
    [cut] = store.trials("crashy", with_curves=True)
    assert cut.state == TrialState.RUNNING and cut.epochs == 2

    assert resume(store, "crashy", sqlite_url, tmp_path / "work") == StudyStatus.COMPLETED
    interrupted, rerun = store.trials("crashy", with_curves=True)
    assert interrupted.state == TrialState.INTERRUPTED
    assert rerun.state == TrialState.COMPLETE and rerun.params == interrupted.params
    assert [e.epoch for e in rerun.learning_curve] == [1, 2, 3]
    assert rerun.learning_curve[:2] == interrupted.learning_curve[:2]
    theirs = optuna_trials(sqlite_url, "crashy")
    assert theirs[0].state == OptunaState.FAIL and theirs[0].user_attrs[INTERRUPTED_ATTR]
    assert theirs[1].state == OptunaState.COMPLETE
    assert sorted(theirs[1].intermediate_values) == [1, 2, 3]
    assert not list((tmp_path / "work").rglob("checkpoint_*"))  # removed once the study ended

    # The same trial without a crash: the resumed run continued exactly (random state too).
    status, other = run(study("calm", tiny_models["bert"], sentiment_files), sqlite_url, tmp_path)
    assert status == StudyStatus.COMPLETED
    [calm] = other.trials("calm", with_curves=True)
    assert calm.learning_curve[2].eval_loss == pytest.approx(
        rerun.learning_curve[2].eval_loss, rel=1e-5
    )


def fused_study(name: str, model: Path, files: tuple[Path, Path]) -> dict:
    """``study``'s trial and a second learning rate, trained as one fused group of two."""
    return merge(
        study(name, model, files),
        {
            "parameters": {"learning_rate": {"type": "categorical", "choices": [3e-3, 1e-3]}},
            "sampler": {"type": "grid"},
            "limits": {"trials": 2, "concurrent_trials": 2},
            "execution": {"fuse_trials": 2},
        },
    )


def scores(curve: list[EpochRecord]) -> list[tuple[int, float, float, float | None]]:
    return [(e.epoch, e.objective, e.eval_loss, e.train_loss) for e in curve]


def test_cut_off_fused_trials_rejoin_a_group_from_their_last_epochs(
    tiny_models: dict[str, Path],
    sentiment_files: tuple[Path, Path],
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    document = fused_study("crashy-fused", tiny_models["bert"], sentiment_files)
    store = crash_midway(document, sqlite_url, tmp_path / "work")
    cut = store.trials("crashy-fused", with_curves=True)
    assert {t.state for t in cut} == {TrialState.RUNNING} and max(t.epochs for t in cut) == 2

    assert resume(store, "crashy-fused", sqlite_url, tmp_path / "work") == StudyStatus.COMPLETED
    assert not list((tmp_path / "work").rglob("checkpoint_*"))  # removed once the study ended

    trials = store.trials("crashy-fused", with_curves=True)
    interrupted = {
        t.params["learning_rate"]: t for t in trials if t.state == TrialState.INTERRUPTED
    }
    reruns = {t.params["learning_rate"]: t for t in trials if t.state == TrialState.COMPLETE}
    assert sorted(interrupted) == sorted(reruns) == [1e-3, 3e-3]
    for rate, rerun in reruns.items():
        assert [e.epoch for e in rerun.learning_curve] == [1, 2, 3]
        kept = interrupted[rate].learning_curve
        # Its first epoch is the cut-off trial's, wall time too: restored, not trained again.
        # A later one the crash caught before its checkpoint was recorded trains again, to the
        # same scores (a CPU group interleaves: bit for bit).
        assert kept and rerun.learning_curve[0] == kept[0]
        assert scores(rerun.learning_curve[: len(kept)]) == scores(kept)

    # The same study without a crash: each member went on exactly (CPU groups interleave).
    status, calm = run(
        fused_study("calm-fused", tiny_models["bert"], sentiment_files), sqlite_url, tmp_path
    )
    assert status == StudyStatus.COMPLETED
    for trial in calm.trials("calm-fused", with_curves=True):
        rerun = reruns[trial.params["learning_rate"]]
        assert trial.learning_curve[2].eval_loss == pytest.approx(
            rerun.learning_curve[2].eval_loss, rel=1e-5
        )


def population_study(name: str, model: Path, files: tuple[Path, Path]) -> dict:
    """Two PBT members compared at every epoch: the worse goes on from the better's state."""
    return merge(
        study(name, model, files),
        {
            "parameters": {
                "learning_rate": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
                "num_train_epochs": 4,
            },
            "sampler": {"type": "random", "seed": 3},
            "early_stopping": {"type": "pbt", "quantile_fraction": 0.5, "synch": True},
            "limits": {"trials": 2, "concurrent_trials": 2},
        },
    )


def test_a_cut_off_population_goes_on_in_step_from_its_members_checkpoints(
    tiny_models: dict[str, Path],
    sentiment_files: tuple[Path, Path],
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    """A synchronous population's members go on together from the last epoch all of them had
    saved, each from its own checkpoint, with the values it had reached by then."""
    document = population_study("crashy-pbt", tiny_models["bert"], sentiment_files)
    store = crash_midway(document, sqlite_url, tmp_path / "work")
    cut = store.trials("crashy-pbt", with_curves=True)
    assert {t.state for t in cut} == {TrialState.RUNNING} and max(t.epochs for t in cut) == 2
    # Both members finished epoch 1 in step; the crash came after one's epoch 2 checkpoint.
    saved = [set(t.user_attrs[CHECKPOINTS_ATTR]) for t in optuna_trials(sqlite_url, "crashy-pbt")]
    assert sorted(saved, key=len) == [{"1"}, {"1", "2"}]
    in_step = 1

    assert resume(store, "crashy-pbt", sqlite_url, tmp_path / "work") == StudyStatus.COMPLETED
    assert not list((tmp_path / "work").rglob("checkpoint_*"))  # removed once the study ended

    trials = store.trials("crashy-pbt", with_curves=True)
    interrupted = {t.number: t for t in trials if t.state == TrialState.INTERRUPTED}
    reruns = [t for t in trials if t.number not in interrupted]
    assert sorted(interrupted) == [0, 1] and [t.state for t in reruns] == [TrialState.COMPLETE] * 2
    theirs = {t.number: t for t in optuna_trials(sqlite_url, "crashy-pbt")}
    for rerun in reruns:
        cut_off = interrupted[theirs[rerun.number].user_attrs[RESUMES_ATTR]]
        assert [e.epoch for e in rerun.learning_curve] == [1, 2, 3, 4]
        # Epoch 1 is the cut-off member's, wall time too: restored, not trained again.
        assert rerun.learning_curve[:in_step] == cut_off.learning_curve[:in_step]
        # It started with the same values, and went on with those it had reached by then.
        assert rerun.params == cut_off.params
        assert theirs[rerun.number].params == theirs[cut_off.number].params
        so_far = [c for c in cut_off.schedule or [] if c["epoch"] <= in_step]
        assert so_far and rerun.schedule[: len(so_far)] == so_far  # type: ignore[index]
        assert theirs[rerun.number].user_attrs[SCHEDULE_ATTR] == rerun.schedule
        curve = {e.epoch: e.objective for e in rerun.learning_curve}
        assert theirs[rerun.number].intermediate_values == curve
