"""A definition's parameters and sampler as Optuna distributions and an Optuna sampler."""

from __future__ import annotations

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from hpo_service.definition import (
    Categorical,
    FloatRange,
    GridSampler,
    IntRange,
    RandomSampler,
    StudyDefinition,
    TpeSampler,
)


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
        return optuna.samplers.GridSampler(definition.parameters.grid(), seed=sampler.seed)
    if isinstance(sampler, RandomSampler):
        return optuna.samplers.RandomSampler(seed=sampler.seed)
    raise TypeError(f"unknown sampler {sampler!r}")
