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

from hpo_service.core.records import StudyStatus, TrialState
from hpo_service.core.settings import Settings
from hpo_service.db.reconcile import INTERRUPTED_ATTR
from hpo_service.db.store import Store
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


def crash_midway(document: dict, database_url: str, work_dir: Path) -> None:
    driver = subprocess.Popen(
        [sys.executable, "-c", CRASHING_DRIVER, json.dumps(document), database_url, work_dir],
        start_new_session=True,
    )
    try:
        assert driver.wait(300) == 3
    finally:  # what the crash left of its local Ray goes too
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)


def test_a_cut_off_trial_resumes_from_its_last_epoch_and_ends_as_without_the_crash(
    tiny_models: dict[str, Path],
    sentiment_files: tuple[Path, Path],
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    document = study("crashy", tiny_models["bert"], sentiment_files)
    crash_midway(document, sqlite_url, tmp_path / "work")
    store = Store.open(Settings(database_url=sqlite_url).database_url)
    [cut] = store.trials("crashy", with_curves=True)
    assert cut.state == TrialState.RUNNING and cut.epochs == 2

    store.set_status("crashy", StudyStatus.QUEUED)  # what the service does after a crash
    record = resume_study("crashy", Settings(database_url=sqlite_url, work_dir=tmp_path / "work"))

    assert record.status == StudyStatus.COMPLETED
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
