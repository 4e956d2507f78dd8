"""Ray Tune's ``OptunaSearch``, telling Optuna what really happened to each trial.

Ray's searcher tells a trial that ASHA stopped early as COMPLETE with its partial score, a trial
that failed after reporting as COMPLETE too, and drops the last intermediate value of a stopped
trial. Here an early-stopped trial is PRUNED (with its whole learning curve), a failed one FAIL,
so Optuna's best trial, its samplers and the dashboard all see the truth. A failed trial carries
its error (user attribute ``hpo:error``): Ray tells the searcher that a trial failed before it
tells the callbacks why, so the FAIL waits for ``fail``, which the trial recorder calls with the
error.

With several objectives (``metric`` and ``mode`` lists) a complete trial is told every
objective's value; Optuna keeps no learning curves for such studies (``Trial.report`` is
single-objective), so none are reported: our tables keep them.

A sampler may propose a configuration the study has trained already (TPE often does in a small
space of choices); with the same seed it would train to the same scores. Such a proposal is
not run: it stays in Optuna as a trial that repeats the earlier one (user attribute
``hpo:repeats``; told the earlier trial's outcome, or FAIL while the earlier one still runs:
samplers skip failed trials, whereas TPE would rank a pruned one with no value below every
other trial, for good, and steer away from the configuration it favoured), and the untried
configuration nearest to it runs in its place (``hpo:drawn_instead_of``): the sampler wanted
that region, so the fewest parameters changed, then the fewest steps along numbers, ties drawn
at random. Once every configuration has been tried the search ends. Spaces with a continuous
parameter, or more than ``MAX_GRID_POINTS`` configurations, are searched as the sampler
proposes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, create_trial
from optuna.trial import TrialState as OptunaTrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from hpo_service.core.definition import StudyDefinition
from hpo_service.core.errors import DefinitionError
from hpo_service.core.records import CUT_OFF, TrialState
from hpo_service.db.reconcile import (
    CHECKPOINT_ATTR,
    CHECKPOINT_EPOCH_ATTR,
    CONFIRMS_ATTR,
    ERROR_ATTR,
    RESUMES_ATTR,
    SEED_ATTR,
)
from hpo_service.driver.search_space import FiniteSpace, configuration_key

_OPTUNA_STATES = {
    TrialState.COMPLETE: OptunaTrialState.COMPLETE,
    TrialState.EARLY_STOPPED: OptunaTrialState.PRUNED,
    TrialState.FAILED: OptunaTrialState.FAIL,
}
# The error of a trial that Ray ended before its first evaluation: only the study's stop does.
UNEVALUATED = f"{CUT_OFF}, before its first evaluation (cancelled or out of time)"
# The key of a rerun trial's config that says what it resumes (not a knob).
RESUME_KEY = "resume"
# User attributes in Optuna: a trial copied from another study ("study#number"), and a trial
# whose configuration the definition's `enqueue` gave.
WARM_START_ATTR = "hpo:warm_start_from"
ENQUEUED_ATTR = "hpo:enqueued"
MICRO_BATCH_ATTR = "hpo:micro_batch_size"
# A proposal of a configuration the study already trained or is training (that trial's number),
# and the untried configuration run in its place (the number of the proposal it replaces).
REPEATS_ATTR = "hpo:repeats"
DRAWN_ATTR = "hpo:drawn_instead_of"
# Trials whose configuration the sampler did not choose, or that ran with another seed: each
# runs as asked.
_NOT_PROPOSED = (ENQUEUED_ATTR, RESUMES_ATTR, CONFIRMS_ATTR, SEED_ATTR, DRAWN_ATTR)
# Trials that are not this study's training of their configuration with its seed.
_NOT_TRAINED_HERE = (WARM_START_ATTR, CONFIRMS_ATTR, REPEATS_ATTR)


def warm_start_trials(
    definition: StudyDefinition, storage: optuna.storages.BaseStorage
) -> list[FrozenTrial]:
    """The complete trials of the study named by ``warm_start`` whose parameters lie in this
    study's space (none when it has no warm start).

    Raises ``DefinitionError`` on ``warm_start.study`` when that study is gone (deleted after
    this one was submitted): the sampler would start cold, which the definition said it must not.
    """
    if definition.warm_start is None:
        return []
    name = definition.warm_start.study
    try:
        source = optuna.load_study(study_name=name, storage=storage)
    except KeyError as error:
        raise DefinitionError(
            "warm_start.study",
            f"study {name!r} to warm-start from no longer exists (deleted after this study was "
            "submitted); submit this study again without `warm_start`, or with another study",
        ) from error
    finished = source.get_trials(deepcopy=False, states=(OptunaTrialState.COMPLETE,))
    return [trial for trial in finished if definition.parameters.holds(trial.params)]


def is_early_stopped(result: dict[str, Any] | None) -> bool:
    """Whether a trial's last result is short of the epochs it planned."""
    if not result or "epoch" not in result:
        return False
    return int(result["epoch"]) < int(result["epochs_planned"])


def trial_outcome(result: dict[str, Any] | None, error: bool = False) -> TrialState:
    """How a trial that Ray ended came out: the one place that classifies it."""
    if error or not result or "objective" not in result:
        return TrialState.FAILED
    return TrialState.EARLY_STOPPED if is_early_stopped(result) else TrialState.COMPLETE


def _step(result: dict[str, Any]) -> int:
    return int(result.get("epoch", result["training_iteration"]))


class StudySearcher(OptunaSearch):
    """``OptunaSearch`` with honest trial states that runs no configuration twice (see the
    module's docstring); also maps Ray trial ids to Optuna numbers.

    ``repeats=True`` runs every proposal as it comes (population-based training, whose
    members' scores depend on the population's schedule, not only on their configuration);
    ``draw_seed`` seeds the draws among equally near untried configurations.
    """

    def __init__(self, *, repeats: bool = False, draw_seed: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self._reported_steps: dict[str, set[int]] = {}
        self._configurations = None if repeats else FiniteSpace.of(self._space)
        self._draws = np.random.default_rng(draw_seed)
        # Why the search ended short of its trials, if it did.
        self.ended: str | None = None

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        """Nothing: a study resumes from the database, and the Optuna study this searcher holds
        would write the database URL, password included, into Ray's files."""

    def __getstate__(self) -> dict[str, Any]:
        # Ray pickles the searcher into tuner.pkl; the storage (and its URL) stays out.
        return {k: v for k, v in self.__dict__.items() if k not in ("_storage", "_ot_study")}

    @property
    def seeded(self) -> bool:
        """Whether the study ran before (Optuna holds its trials): seeded the first time."""
        return bool(self._ot_study.get_trials(deepcopy=False))

    def seed(self, source: str | None, trials: list[FrozenTrial], enqueue: list[dict]) -> None:
        """On the study's first run only (Optuna holds none of its trials yet): ``trials`` of
        study ``source`` as finished trials the sampler learns from (they never run and never
        count), then the ``enqueue`` configurations, which run first, in order."""
        for trial in trials:
            self._ot_study.add_trial(
                create_trial(
                    params={name: trial.params[name] for name in self._space},
                    distributions=self._space,
                    values=trial.values,
                    user_attrs={WARM_START_ATTR: f"{source}#{trial.number}"},
                )
            )
        for point in enqueue:
            self._ot_study.enqueue_trial(point, user_attrs={ENQUEUED_ATTR: True})

    @property
    def several(self) -> bool:
        """Whether the study has several objectives (Optuna's ``directions``)."""
        return isinstance(self.metric, list)

    def _values(self, result: dict[str, Any]) -> float | list[float]:
        if isinstance(self.metric, list):
            return [result[metric] for metric in self.metric]
        return result[self.metric]

    def adopt(self, trial_id: str, asked_as: str) -> None:
        """Run the Optuna trial asked for as ``asked_as`` as Ray's trial ``trial_id``
        (population-based training asks for its members before Ray makes their trials)."""
        self._ot_trials[trial_id] = self._ot_trials.pop(asked_as)
        if asked_as in self._reported_steps:  # a resumed member's epochs, copied when asked
            self._reported_steps[trial_id] = self._reported_steps.pop(asked_as)

    def unclaimed(self, prefix: str) -> list[str]:
        """The names of asked trials that no Ray trial has adopted yet, in the order asked."""
        return [name for name in self._ot_trials if name.startswith(prefix)]

    def params_of(self, trial_id: str) -> dict[str, Any]:
        return dict(self._ot_trials[trial_id].params)

    def study_trial(self, number: int) -> FrozenTrial:
        """The study's trial ``number`` as Optuna holds it."""
        return self._ot_study.get_trials(deepcopy=False)[number]

    def set_user_attr(self, trial_id: str, key: str, value: Any) -> None:
        self._ot_trials[trial_id].set_user_attr(key, value)

    def trial_number(self, trial_id: str) -> int:
        return self._ot_trials[trial_id].number

    def confirms(self, trial_id: str) -> int | None:
        """The search trial a confirmation run repeats; ``None`` for a search trial."""
        return self._ot_trials[trial_id].user_attrs.get(CONFIRMS_ATTR)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        """The next configuration (``Searcher.FINISHED`` once every one was tried); a
        confirmation run gets its seed; a trial run again after a crash also gets ``resume``:
        the number of the trial it replaces and that trial's last checkpoint and its epoch, if it
        saved one."""
        asking = trial_id not in self._ot_trials
        config = super().suggest(trial_id)
        if asking and config is not None and self._configurations is not None:
            config = self._untried(trial_id, config)
        if not isinstance(config, dict):
            return config
        attrs = self._ot_trials[trial_id].user_attrs if trial_id in self._ot_trials else {}
        if SEED_ATTR in attrs:  # a confirmation run's fresh seed
            config = {**config, "seed": attrs[SEED_ATTR]}
        if RESUMES_ATTR in attrs:
            resume = {
                "trial": attrs[RESUMES_ATTR],
                "checkpoint": attrs.get(CHECKPOINT_ATTR),
                "epoch": attrs.get(CHECKPOINT_EPOCH_ATTR),
            }
            config = {**config, RESUME_KEY: resume}
            # It goes on from those epochs (a population, which repeats proposals, decides where
            # its members go on from).
            if resume["checkpoint"] and self._configurations is not None:
                self.carry_curve(trial_id, int(resume["trial"]), resume["epoch"])
        return config

    def _untried(self, trial_id: str, config: dict[str, Any]) -> dict[str, Any] | str | None:
        """``config`` when the sampler proposed it anew, else the untried configuration
        nearest to it (``Searcher.FINISHED`` when none is left)."""
        asked = self._ot_trials[trial_id]
        if any(attr in asked.user_attrs for attr in _NOT_PROPOSED):
            return config
        tried = {
            configuration_key(self._space, trial.params): trial
            for trial in self._ot_study.get_trials(deepcopy=False)
            if trial.number != asked.number
            and trial.state
            in (OptunaTrialState.COMPLETE, OptunaTrialState.PRUNED, OptunaTrialState.RUNNING)
            and not any(attr in trial.user_attrs for attr in _NOT_TRAINED_HERE)
        }
        earlier = tried.get(configuration_key(self._space, asked.params))
        if earlier is None:
            return config
        self._tell_repeat(asked, earlier)
        del self._ot_trials[trial_id]
        assert self._configurations is not None
        nearest = self._configurations.nearest_untried(asked.params, tried)
        if not nearest:
            self.ended = (
                f"all {len(self._configurations)} configurations of the search space were "
                "tried (the sampler proposed trained ones again)"
            )
            return Searcher.FINISHED
        point = nearest[int(self._draws.integers(len(nearest)))]
        self._ot_study.enqueue_trial(point, user_attrs={DRAWN_ATTR: asked.number})
        return super().suggest(trial_id)

    def _tell_repeat(self, asked: optuna.Trial, earlier: FrozenTrial) -> None:
        """Tell Optuna that ``asked`` repeats ``earlier``: its outcome, or failed (which
        samplers skip) while ``earlier`` still runs."""
        asked.set_user_attr(REPEATS_ATTR, earlier.number)
        if earlier.state == OptunaTrialState.COMPLETE:
            self._ot_study.tell(asked, earlier.values)
            return
        if earlier.state == OptunaTrialState.RUNNING:
            self._ot_study.tell(asked, state=OptunaTrialState.FAIL)
            return
        if not self.several:
            for step, value in sorted(earlier.intermediate_values.items()):
                asked.report(value, step)
        self._ot_study.tell(asked, state=OptunaTrialState.PRUNED)

    def carry_curve(self, trial_id: str, number: int, last_epoch: int | None) -> None:
        """Give the trial the intermediate values of trial ``number``, which it goes on from,
        up to ``last_epoch`` (all, if ``None``); nothing with several objectives."""
        if self.several:
            return
        earlier = self.study_trial(number)
        for step, value in sorted(earlier.intermediate_values.items()):
            if last_epoch is not None and step > last_epoch:
                break
            self._ot_trials[trial_id].report(value, step)
            self._reported_steps.setdefault(trial_id, set()).add(step)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        # Steps are epochs (not Ray's iterations): a resumed trial starts past epoch 1.
        if trial_id in self._completed_trials or "objective" not in result:
            return
        step = _step(result)
        if "micro_batch_size" in result:  # out of memory at its batch size: shown in the dashboard
            self._ot_trials[trial_id].set_user_attr(MICRO_BATCH_ATTR, result["micro_batch_size"])
        reported = self._reported_steps.setdefault(trial_id, set())
        if self.several or step in reported:  # an epoch reported again after a restore
            return
        self._ot_trials[trial_id].report(result[self.metric], step)
        reported.add(step)

    def remember_checkpoint(self, trial_id: str, path: str, epoch: int | None) -> None:
        """Where the trial's latest checkpoint is, and its epoch, for a rerun after a crash."""
        if trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr(CHECKPOINT_EPOCH_ATTR, epoch)
            self._ot_trials[trial_id].set_user_attr(CHECKPOINT_ATTR, path)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if error or trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return  # a failure is told by `fail`, with its error
        ot_trial = self._ot_trials[trial_id]
        outcome = trial_outcome(result)
        state, value = _OPTUNA_STATES[outcome], None
        if outcome == TrialState.COMPLETE:
            value = self._values(result)  # type: ignore[arg-type]
        elif outcome == TrialState.EARLY_STOPPED and not self.several:
            step = _step(result)  # type: ignore[arg-type]
            if step not in self._reported_steps.get(trial_id, set()):
                ot_trial.report(result[self.metric], step)  # type: ignore[index]
        elif outcome == TrialState.FAILED:
            ot_trial.set_user_attr(ERROR_ATTR, UNEVALUATED)
        self._tell(trial_id, value, state)

    def fail(self, trial_id: str, error: str) -> None:
        """Tell Optuna the trial failed, with ``error`` for the dashboard to show."""
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        self._ot_trials[trial_id].set_user_attr(ERROR_ATTR, error)
        self._tell(trial_id, None, OptunaTrialState.FAIL)

    def _tell(self, trial_id: str, value: Any, state: OptunaTrialState) -> None:
        self._ot_study.tell(self._ot_trials[trial_id], value, state=state)
        self._completed_trials.add(trial_id)
        self._reported_steps.pop(trial_id, None)
