"""Helpers that tests in several folders share: a quick study, CLI failure checks, polling."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import optuna
import psutil
from click.testing import Result
from servers import Service

from hpo_service.core.presets import merge, resolve_definition
from hpo_service.core.records import StudyStatus
from hpo_service.core.settings import Settings
from hpo_service.db.store import Store
from hpo_service.driver.runner import run_study


def tiny_study(name: str, model: Path, files: tuple[Path, Path], **overrides: Any) -> dict:
    """A quick study on the example sentiment data: 1 trial of 1 epoch unless overridden."""
    train, dev = files
    document = {
        "name": name,
        "model": {"name": str(model)},
        "dataset": {
            "train": str(train),
            "eval": str(dev),
            "max_train_samples": 96,
            "max_eval_samples": 48,
            "max_seq_length": 32,
        },
        "parameters": {
            "learning_rate": {"type": "categorical", "choices": [1e-3]},
            "batch_size": 16,
            "num_train_epochs": 1,
        },
        "limits": {"trials": 1},
    }
    return merge(document, overrides)


def assert_clear_failure(result: Result, *shown: str) -> None:
    """Exit code 2, no traceback, and one line that shows every text in ``shown``."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.splitlines()
    assert any(all(text in line for text in shown) for line in lines), result.output


def wait_until_midway(service: Service, name: str, finished: int, timeout: float = 300) -> dict:
    """Poll until ``finished`` trials are done and another is running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        study = service.client.get(f"/v1/studies/{name}").json()
        if study["progress"]["finished"] >= finished and study["trial_counts"]["running"] >= 1:
            return study
        assert study["status"] in ("queued", "running"), study
        time.sleep(0.2)
    raise TimeoutError(f"{name} never got midway")


def run(document: dict, database_url: str, tmp_path: Path) -> tuple[StudyStatus, Store]:
    settings = Settings(database_url=database_url, work_dir=tmp_path / "work")
    record = run_study(document, resolve_definition(document), settings)
    return record.status, Store.open(settings.database_url)


def optuna_study(database_url: str, name: str) -> optuna.Study:
    url = Settings(database_url=database_url).database_url
    return optuna.load_study(study_name=name, storage=url)


def optuna_trials(database_url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna_study(database_url, name).trials


def without_time(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Epoch reports less ``train_seconds`` (wall time: never the same twice)."""
    return [{k: v for k, v in r.items() if k != "train_seconds"} for r in reports]


def processes_of(work_dir: Path) -> dict[psutil.Process, list[str]]:
    """The live processes, with their command lines, of the service whose work folder is
    ``work_dir``: they inherit its HPO_WORK_DIR (its drivers, its Ray head's daemons and
    workers), so those of a test running beside this one, in another pytest worker, are left
    out."""
    found = {}
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.status() != psutil.STATUS_ZOMBIE and process.environ().get(
                "HPO_WORK_DIR"
            ) == str(work_dir):
                found[process] = process.cmdline()
    return found


def drivers_of(study: str, work_dir: Path) -> list[psutil.Process]:
    """The driver processes running ``study`` (python -m hpo_service.driver STUDY) for the
    service whose work folder is ``work_dir``."""
    return [
        process
        for process, cmdline in processes_of(work_dir).items()
        if "hpo_service.driver" in cmdline and cmdline[-1] == study
    ]
