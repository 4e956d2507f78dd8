"""Ray Tune callbacks on the driver: record trials in the service's tables, stop on failures."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ray.tune import Callback, Stopper

from hpo_service.core.budget import over_budget, spent
from hpo_service.core.definition import KNOBS, StudyDefinition
from hpo_service.core.records import StudyStatus, TrialState
from hpo_service.db.store import Store
from hpo_service.driver.searcher import RESUME_KEY, UNEVALUATED, StudySearcher, trial_outcome
from hpo_service.training.engine import REPLAYED_KEY


def trial_error_message(trial: Any) -> str:
    """The last line of a failed trial's traceback: the exception, by its class's name
    (``TrainingDiverged``, not ``hpo_service.training.engine.TrainingDiverged``), and its
    message."""
    # The driver's copy of the error file: the copy in storage is synced later.
    path = Path(trial.error_file) if trial.error_file else None
    text = path.read_text() if path is not None and path.is_file() else ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return "the trial failed without an error message"
    return _MODULE_OF_EXCEPTION.sub("", lines[-1])


_MODULE_OF_EXCEPTION = re.compile(r"^(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_]\w*: )")


class TrialRecorder(Callback):
    """Writes each trial, each epoch's evaluation and each outcome to the ``Store``."""

    def __init__(self, store: Store, study: str, searcher: StudySearcher) -> None:
        self.store = store
        self.study = study
        self.searcher = searcher
        self._numbers: dict[str, int] = {}
        self._epochs: dict[str, int] = {}  # the last epoch recorded of each trial

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        if trial.trial_id in self._numbers:  # started again (PBT: from another trial's state)
            return
        number = self.searcher.trial_number(trial.trial_id)
        self._numbers[trial.trial_id] = number
        # Optuna's values of the searched knobs: a PBT member run again after a crash goes on
        # with the values it had reached (its schedule), but it started with these.
        given = {**trial.config, **self.searcher.params_of(trial.trial_id)}
        params = {k: v for k, v in given.items() if k in KNOBS and v is not None}
        confirms = self.searcher.confirms(trial.trial_id)
        self.store.start_trial(self.study, number, params, confirms=confirms)
        resume = trial.config.get(RESUME_KEY)
        if resume and resume["checkpoint"]:  # it goes on from the epochs that trial finished
            self.store.copy_epochs(self.study, int(resume["trial"]), number, resume.get("epoch"))

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        if "epoch" not in result or trial.trial_id not in self._numbers:
            return
        epoch, last = int(result["epoch"]), self._epochs.get(trial.trial_id, 0)
        if result.get(REPLAYED_KEY) and epoch <= last:
            return  # PBT: another trial's epoch it goes on from; its own one stays recorded
        self._epochs[trial.trial_id] = max(epoch, last)
        self.store.record_epoch(self.study, self._numbers[trial.trial_id], result)

    def on_checkpoint(
        self, iteration: int, trials: list[Any], trial: Any, checkpoint: Any, **info: Any
    ) -> None:
        epoch = trial.last_result.get("epoch")  # the result it came with
        self.searcher.remember_checkpoint(trial.trial_id, checkpoint.path, epoch)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        number = self._numbers.pop(trial.trial_id, None)
        if number is None:  # never started: the study ended first
            return
        outcome = trial_outcome(trial.last_result)
        error = None
        if outcome == TrialState.FAILED:
            error = UNEVALUATED
        self.store.finish_trial(self.study, number, outcome, error)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        error = trial_error_message(trial)
        self.searcher.fail(trial.trial_id, error)
        number = self._numbers.pop(trial.trial_id, None)
        if number is not None:
            self.store.finish_trial(self.study, number, TrialState.FAILED, error)


class FailedTrialLimit(Callback, Stopper):
    """Stops the whole study once ``limit`` trials have failed (no limit when ``None``)."""

    def __init__(self, limit: int | None, already_failed: int = 0) -> None:
        self.limit = limit
        self.failed = already_failed

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.failed += 1

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.limit is not None and self.failed >= self.limit

    @property
    def reached(self) -> bool:
        return self.stop_all()

    @property
    def reason(self) -> str | None:
        return "limits.max_failed_trials reached" if self.reached else None


class CancelWatch(Stopper):
    """Stops the whole study once it is cancelled in the database (checked every few seconds)."""

    def __init__(self, store: Store, study: str, interval_s: float = 2.0) -> None:
        self.store = store
        self.study = study
        self.interval_s = interval_s
        self._checked_at = 0.0
        self._cancelled = False

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        now = time.monotonic()
        if not self._cancelled and now - self._checked_at >= self.interval_s:
            self._checked_at = now
            self._cancelled = self.store.get_study(self.study).status == StudyStatus.CANCELLED
        return self._cancelled

    @property
    def reason(self) -> str | None:
        return "the study was cancelled" if self._cancelled else None


class BudgetWatch(Callback, Stopper):
    """Stops the whole study once its trials used up ``limits.cpu_hours`` or
    ``limits.gpu_hours`` (checked every few seconds); ``reason`` then says which."""

    def __init__(
        self,
        store: Store,
        definition: StudyDefinition,
        interval_s: float = 2.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.definition = definition
        self.interval_s = interval_s
        self.clock = clock
        self.reason: str | None = None
        self._checked_at = -float("inf")

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        if time.monotonic() - self._checked_at >= self.interval_s:
            self.used_up()
        return self.reason is not None

    def used_up(self) -> bool:
        """Whether the budget is used up, checked now."""
        limits = self.definition.limits
        self._checked_at = time.monotonic()
        if self.reason is None and (limits.cpu_hours or limits.gpu_hours):
            times = self.store.run_times(self.definition.name)
            self.reason = over_budget(spent(times, self.definition, self.clock()), self.definition)
        return self.reason is not None
