"""A live progress bar of a running study, for the terminal (a Ray Tune callback)."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from ray.tune import Callback
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hpo_service.core.definition import StudyDefinition
from hpo_service.core.records import TrialState
from hpo_service.driver.searcher import trial_outcome

_LABELS = {
    TrialState.COMPLETE: "complete",
    TrialState.EARLY_STOPPED: "early-stopped",
    TrialState.FAILED: "failed",
}


class StudyProgress(Callback):
    """Trials finished out of planned, how they ended, and the best objective so far."""

    def __init__(self, definition: StudyDefinition, console: Console) -> None:
        self.metric = definition.objective.metric
        self.maximize = definition.objective.mode == "maximize"
        self.best: float | None = None
        self.counts = {"complete": 0, "early-stopped": 0, "failed": 0}
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[summary]}"),
            console=console,
        )
        self._task = self._progress.add_task(
            definition.name, total=definition.planned_trials, summary="starting Ray"
        )

    def __enter__(self) -> StudyProgress:
        self._progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def __getstate__(self) -> dict[str, Any]:
        # Ray pickles the callbacks with the experiment state; the live display stays here.
        return {k: v for k, v in self.__dict__.items() if k != "_progress"}

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._update(f"trial {len(trials)} started")

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        if "epoch" in result:
            self._update(f"epoch {result['epoch']}: {self.metric} {result['objective']:.4f}")

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        outcome = trial_outcome(trial.last_result)
        self.counts[_LABELS[outcome]] += 1
        if outcome == TrialState.COMPLETE:
            value = float(trial.last_result["objective"])
            if self.best is None or (value > self.best) == self.maximize:
                self.best = value
        self._progress.advance(self._task)
        self._update("")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.counts["failed"] += 1
        self._progress.advance(self._task)
        self._update("")

    def _update(self, latest: str) -> None:
        parts = [f"{n} {state}" for state, n in self.counts.items() if n]
        if self.best is not None:
            parts.append(f"best {self.metric} {self.best:.4f}")
        if latest:
            parts.append(latest)
        self._progress.update(self._task, summary=" · ".join(parts))
