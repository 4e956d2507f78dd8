"""Population-based training: Ray Tune's PBT scheduler over a population the study's Optuna
sampler proposes.

Ray runs PBT without a search algorithm, so the population is asked of Optuna up front (the
enqueued configurations first) and run by Ray's basic variant generator; ``PopulationSearch``
gives each Ray trial the Optuna trial asked for it, passes its results on (as Ray's search
algorithm would), and records the values PBT switches it to.

The decision for Optuna, whose trial parameters are fixed once asked: each member is one Optuna
trial whose parameters are its starting values, told its final score; the values it trained with
from each epoch on are its schedule, in our tables (``schedule``) and in the user attribute
``hpo:pbt_schedule``. A member that PBT restarts from a better member's state takes that
member's values of every searched knob (as PBT does), with the mutated ones perturbed, and goes
on with that state: its learning curve from then on is the one it trained.

A member cut off by a crash runs again as a new member of the next population (the study's
rerun of it), from its last checkpoint with the values it trained that epoch with: its schedule
up to that epoch carries over, and PBT goes on from there.
"""

from __future__ import annotations

from typing import Any

from ray import tune
from ray.tune.schedulers import PopulationBasedTraining
from ray.tune.search.basic_variant import BasicVariantGenerator

from hpo_service.core.definition import (
    Categorical,
    FloatRange,
    PopulationBased,
    StudyDefinition,
)
from hpo_service.db.store import Store
from hpo_service.driver.searcher import RESUME_KEY, StudySearcher
from hpo_service.training.engine import REPLAYED_KEY

SCHEDULE_ATTR = "hpo:pbt_schedule"
# A member's checkpoints, by epoch: where a synchronous population goes on from after a crash.
CHECKPOINTS_ATTR = "hpo:pbt_checkpoints"
_ASKED = "population-member-"  # how a member is known before Ray makes its trial
# Every member's config has the key (Ray's variant generator takes only keys of the space).
_NOT_RESUMED = {"trial": None, "checkpoint": None, "epoch": None}


def is_population_based(definition: StudyDefinition) -> bool:
    return isinstance(definition.early_stopping, PopulationBased)


def _mutations(definition: StudyDefinition) -> dict[str, Any]:
    """Each mutated knob's space as PBT resamples it: a range's distribution, or the choices
    (which PBT shifts along)."""
    rule = definition.early_stopping
    assert isinstance(rule, PopulationBased)
    spaces: dict[str, Any] = {}
    for knob in rule.mutate:
        spec = definition.parameters.searched()[knob]
        if isinstance(spec, Categorical):
            spaces[knob] = list(spec.choices)
        else:
            assert isinstance(spec, FloatRange)
            draw = tune.loguniform if spec.log else tune.uniform
            spaces[knob] = draw(spec.low, spec.high)
    return spaces


def pbt_scheduler(definition: StudyDefinition, mode: str) -> PopulationBasedTraining:
    """Ray's PBT on the primary objective, epochs as time; perturbed values are kept inside
    the searched range."""
    rule = definition.early_stopping
    assert isinstance(rule, PopulationBased)
    ranges = {
        knob: spec
        for knob in rule.mutate
        if isinstance(spec := definition.parameters.searched()[knob], FloatRange)
    }

    def keep_in_range(config: dict[str, Any]) -> dict[str, Any]:
        for knob, spec in ranges.items():
            config[knob] = min(max(float(config[knob]), spec.low), spec.high)
        return config

    return PopulationBasedTraining(
        time_attr="epoch",
        metric="objective",
        mode=mode,
        perturbation_interval=rule.perturbation_interval,
        hyperparam_mutations=_mutations(definition),
        quantile_fraction=rule.quantile_fraction,
        resample_probability=rule.resample_probability,
        custom_explore_fn=keep_in_range,
        synch=rule.synch,
        log_config=False,
    )


class PopulationSearch(tune.Callback, tune.Stopper):
    """Runs each Ray trial as the Optuna trial asked for its configuration, tells the searcher
    its results, and records its schedule: its values of the searched knobs from each epoch
    on. As a stopper, it ends each member at its last planned epoch, and a synchronous
    population that lost a member: Ray's synchronous PBT would wait for that member forever."""

    def __init__(
        self, searcher: StudySearcher, store: Store, study: str, definition: StudyDefinition
    ) -> None:
        self.searcher = searcher
        self.store = store
        self.study = study
        self.searched = list(definition.parameters.searched())
        self.asked: dict[str, dict[str, Any]] = {}  # each member's config, by the name asked as
        self.carried: dict[str, list[dict[str, Any]]] = {}  # a rerun's schedule so far
        self.schedules: dict[str, list[dict[str, Any]]] = {}
        self._unrecorded: set[str] = set()  # Ray trials whose carried schedule is not stored yet
        self.checkpoints: dict[str, dict[str, str]] = {}  # each member's, by epoch (as text)
        self.synch = isinstance(definition.early_stopping, PopulationBased) and bool(
            definition.early_stopping.synch
        )
        self.reason: str | None = None

    def search(self, members: int, concurrent: int) -> BasicVariantGenerator:
        """Ask the sampler for ``members`` configurations (Optuna trials, the enqueued and the
        reruns of members cut off by a crash first), and the generator that runs them,
        ``concurrent`` at a time.

        A rerun goes on from its last checkpoint; in a synchronous population every member
        goes on from the last epoch all of them had saved (Ray's synchronous PBT compares
        members at one epoch), and all start again when one had saved none."""
        configs: dict[str, dict[str, Any]] = {}
        for i in range(members):
            config = self.searcher.suggest(f"{_ASKED}{i}")
            assert isinstance(config, dict)
            configs[f"{_ASKED}{i}"] = config
        saved = {asked: self._saved(config) for asked, config in configs.items()}
        in_step = set.intersection(*(set(epochs) for epochs in saved.values())) if saved else set()
        for asked, config in configs.items():
            epoch = max(in_step if self.synch else saved[asked], default=None)
            self.asked[asked], self.carried[asked] = self._going_on(
                asked, config, epoch, saved[asked]
            )
        points = list(self.asked.values())
        return BasicVariantGenerator(points_to_evaluate=points, max_concurrent=concurrent)

    def keys(self) -> dict[str, Any]:
        """The keys of a member's config that the search gives, for Ray's variant generator
        (which takes a given value only for a key of its space)."""
        return {**dict.fromkeys(self.searched), RESUME_KEY: _NOT_RESUMED}

    def _saved(self, config: dict[str, Any]) -> dict[int, str]:
        """A rerun's checkpoints, by epoch: those the member it reruns saved, and the one that
        member went on from (if it was cut off before it saved one)."""
        resume = config.get(RESUME_KEY)
        if not resume or not resume["checkpoint"] or resume["epoch"] is None:
            return {}
        cut = self.searcher.study_trial(int(resume["trial"]))
        saved = cut.user_attrs.get(CHECKPOINTS_ATTR, {})
        return {int(resume["epoch"]): resume["checkpoint"], **{int(e): p for e, p in saved.items()}}

    def _going_on(
        self, asked: str, config: dict[str, Any], epoch: int | None, saved: dict[int, str]
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The config a member starts with and its schedule so far: a rerun going on from
        ``epoch`` restores its checkpoint of that epoch and trains with the values it had
        reached by then; else the member starts from its first epoch."""
        if epoch is None:
            return {**config, RESUME_KEY: _NOT_RESUMED}, []
        number = int(config[RESUME_KEY]["trial"])
        resume = {"trial": number, "checkpoint": saved[epoch], "epoch": epoch}
        self.searcher.carry_curve(asked, number, epoch)
        cut = self.searcher.study_trial(number)
        schedule = [c for c in cut.user_attrs.get(SCHEDULE_ATTR, []) if c["epoch"] <= epoch]
        values = {knob: schedule[-1][knob] for knob in self.searched} if schedule else {}
        return {**config, **values, RESUME_KEY: resume}, schedule

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        if trial.trial_id in self.schedules:  # PBT restarted it from another member's state
            return
        asked = self._asked_for(trial.config)
        self.searcher.adopt(trial.trial_id, asked)
        schedule = self.schedules[trial.trial_id] = self.carried.pop(asked)
        if schedule:  # a rerun's so far: in our tables with its first result (they lack it yet)
            self.searcher.set_user_attr(trial.trial_id, SCHEDULE_ATTR, schedule)
            self._unrecorded.add(trial.trial_id)

    def _asked_for(self, config: dict[str, Any]) -> str:
        """The unclaimed member whose configuration Ray's trial starts with."""
        for asked in self.searcher.unclaimed(_ASKED):
            given = self.asked[asked]
            if all(given[key] == config.get(key) for key in (*self.searched, RESUME_KEY)):
                return asked
        raise LookupError(f"no population member was asked for the configuration {config}")

    def on_checkpoint(
        self, iteration: int, trials: list[Any], trial: Any, checkpoint: Any, **info: Any
    ) -> None:
        saved = self.checkpoints.setdefault(trial.trial_id, {})
        saved[str(trial.last_result["epoch"])] = checkpoint.path
        self.searcher.set_user_attr(trial.trial_id, CHECKPOINTS_ATTR, saved)

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        schedule = self.schedules.get(trial.trial_id)
        if schedule is None or "epoch" not in result:
            return
        # The values of the run that reported: a result sent before PBT changed them has the
        # old ones.
        config = result.get("config") or trial.config
        values = {knob: config[knob] for knob in self.searched}
        changed = not schedule or {k: schedule[-1][k] for k in self.searched} != values
        if changed:
            # A replayed epoch is the state it goes on from: the new values train the next one.
            start = int(result["epoch"]) + (1 if result.get(REPLAYED_KEY) else 0)
            if schedule and schedule[-1]["epoch"] >= start:  # changed again before training
                schedule.pop()
            schedule.append({"epoch": start, **values})
        if changed or trial.trial_id in self._unrecorded:
            self._unrecorded.discard(trial.trial_id)
            self.searcher.set_user_attr(trial.trial_id, SCHEDULE_ATTR, schedule)
            number = self.searcher.trial_number(trial.trial_id)
            self.store.record_schedule(self.study, number, schedule)
        self.searcher.on_trial_result(trial.trial_id, result)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        if trial.trial_id in self.schedules:
            self.searcher.on_trial_complete(trial.trial_id, trial.last_result)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        # The trial recorder tells the searcher, with the error.
        if self.synch:
            self.reason = "a member failed, and a synchronous population waits for every member"

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        """A member's last planned epoch ends it here, before PBT sees the result: PBT would
        otherwise restart a member that finished from another member's state, where it trains
        nothing more and would end with that member's score, and would keep a finished member
        as a member to copy."""
        return "epoch" in result and int(result["epoch"]) >= int(result["epochs_planned"])

    def stop_all(self) -> bool:
        return self.reason is not None
