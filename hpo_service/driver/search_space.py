"""A definition's parameters and sampler as Optuna distributions and an Optuna sampler."""

from __future__ import annotations

from collections.abc import Sequence

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from hpo_service.core.definition import (
    Categorical,
    FloatRange,
    GridSampler,
    IntRange,
    RandomSampler,
    StudyDefinition,
    TpeSampler,
)


class RayGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler without its ``study.stop()`` once the grid is exhausted.

    That call only works inside ``study.optimize``; under Ray Tune the number of trials (the
    grid's size) ends the study instead.
    """

    def after_trial(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        state: optuna.trial.TrialState,
        values: Sequence[float] | None,
    ) -> None:
        return None


def optuna_distributions(definition: StudyDefinition) -> dict[str, BaseDistribution]:
    """The searched parameters; a grid study gets categorical ones over its grid."""
    if isinstance(definition.sampler, GridSampler):
        return {
            name: CategoricalDistribution(values)
            for name, values in definition.parameters.grid().items()
        }
    distributions: dict[str, BaseDistribution] = {}
    for name, spec in definition.parameters.searched().items():
        if isinstance(spec, FloatRange):
            distributions[name] = FloatDistribution(
                spec.low, spec.high, log=spec.log, step=spec.step
            )
        elif isinstance(spec, IntRange):
            distributions[name] = IntDistribution(
                spec.low, spec.high, log=spec.log, step=spec.step or 1
            )
        elif isinstance(spec, Categorical):
            distributions[name] = CategoricalDistribution(spec.choices)
    return distributions


def optuna_sampler(definition: StudyDefinition) -> optuna.samplers.BaseSampler:
    sampler = definition.sampler
    if isinstance(sampler, TpeSampler):
        return optuna.samplers.TPESampler(
            seed=sampler.seed,
            n_startup_trials=sampler.n_startup_trials,
            multivariate=sampler.multivariate,
        )
    if isinstance(sampler, GridSampler):
        return RayGridSampler(definition.parameters.grid(), seed=sampler.seed)
    if isinstance(sampler, RandomSampler):
        return optuna.samplers.RandomSampler(seed=sampler.seed)
    raise TypeError(f"unknown sampler {sampler!r}")
