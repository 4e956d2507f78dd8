"""Ray Tune's ``OptunaSearch``, telling Optuna what really happened to each trial.

Ray's searcher tells a trial that ASHA stopped early as COMPLETE with its partial score, a trial
that failed after reporting as COMPLETE too, and drops the last intermediate value of a stopped
trial. Here an early-stopped trial is PRUNED (with its whole learning curve), a failed one FAIL,
so Optuna's best trial, its samplers and the dashboard all see the truth.
"""

from __future__ import annotations

from typing import Any

from optuna.trial import TrialState as OptunaTrialState
from ray.tune.search.optuna import OptunaSearch


def is_early_stopped(result: dict[str, Any] | None) -> bool:
    """Whether a trial's last result is short of the epochs it planned."""
    if not result or "epoch" not in result:
        return False
    return int(result["epoch"]) < int(result["epochs_planned"])


class StudySearcher(OptunaSearch):
    """``OptunaSearch`` with honest trial states; also maps Ray trial ids to Optuna numbers."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._reported_steps: dict[str, set[int]] = {}

    def trial_number(self, trial_id: str) -> int:
        return self._ot_trials[trial_id].number

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        super().on_trial_result(trial_id, result)
        self._reported_steps.setdefault(trial_id, set()).add(int(result["training_iteration"]))

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        has_score = bool(result) and self.metric in result  # type: ignore[operator]
        if error or not has_score:
            state, value = OptunaTrialState.FAIL, None
        elif is_early_stopped(result):
            step = int(result["training_iteration"])  # type: ignore[index]
            if step not in self._reported_steps.get(trial_id, set()):
                ot_trial.report(result[self.metric], step)  # type: ignore[index]
            state, value = OptunaTrialState.PRUNED, None
        else:
            state, value = OptunaTrialState.COMPLETE, result[self.metric]  # type: ignore[index]
        self._ot_study.tell(ot_trial, value, state=state)
        self._completed_trials.add(trial_id)
        self._reported_steps.pop(trial_id, None)
