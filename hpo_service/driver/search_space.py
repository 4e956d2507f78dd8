"""A definition's parameters and sampler as Optuna distributions and an Optuna sampler."""

from __future__ import annotations

import itertools
import math
from collections.abc import Container, Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from hpo_service.core.definition import (
    MAX_GRID_POINTS,
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
            constant_liar=sampler.constant_liar,
        )
    if isinstance(sampler, GridSampler):
        return RayGridSampler(definition.parameters.grid(), seed=sampler.seed)
    if isinstance(sampler, RandomSampler):
        return optuna.samplers.RandomSampler(seed=sampler.seed)
    raise TypeError(f"unknown sampler {sampler!r}")


def configurations(space: Mapping[str, BaseDistribution]) -> list[dict[str, Any]] | None:
    """Every configuration of ``space``; ``None`` for a space with a continuous parameter or
    more than ``MAX_GRID_POINTS`` configurations."""
    counts = [_count(distribution) for distribution in space.values()]
    if None in counts or math.prod(counts) > MAX_GRID_POINTS:  # type: ignore[arg-type]
        return None
    values = [_values(distribution) for distribution in space.values()]
    return [dict(zip(space, point, strict=True)) for point in itertools.product(*values)]


class FiniteSpace:
    """Every configuration of a finite search space, to find the untried ones nearest to a
    configuration a sampler wanted."""

    def __init__(self, space: Mapping[str, BaseDistribution], points: list[dict[str, Any]]):
        self._space = space
        self._points = points
        self._keys = [configuration_key(space, point) for point in points]
        self._ranks = _ranks(space, np.array(self._keys, dtype=float))
        self._unordered = np.array([not _ordered(d) for d in space.values()], dtype=bool)

    @classmethod
    def of(cls, space: Mapping[str, BaseDistribution]) -> FiniteSpace | None:
        """``None`` for a space with a continuous parameter or too many configurations."""
        points = configurations(space)
        return None if points is None else cls(space, points)

    def __len__(self) -> int:
        return len(self._points)

    def nearest_untried(
        self, wanted: Mapping[str, Any], tried: Container[tuple[float, ...]]
    ) -> list[dict[str, Any]]:
        """The configurations not in ``tried`` (keys) closest to ``wanted``: the fewest
        parameters changed, then the fewest steps along ordered ones (numbers in increasing
        order; unordered choices are one step apart). Empty once every one was tried."""
        untried = np.array([key not in tried for key in self._keys], dtype=bool)
        if not untried.any():
            return []
        wanted_ranks = _ranks(self._space, np.array([configuration_key(self._space, wanted)]))
        steps = np.abs(self._ranks - wanted_ranks)
        steps[:, self._unordered] = np.minimum(steps[:, self._unordered], 1)
        changed = (steps > 0).sum(axis=1)
        total = steps.sum(axis=1)
        fewest = changed[untried].min()
        closest = untried & (changed == fewest)
        closest &= total == total[closest].min()
        return [self._points[i] for i in np.flatnonzero(closest)]


def configuration_key(
    space: Mapping[str, BaseDistribution], params: Mapping[str, Any]
) -> tuple[float, ...]:
    """What tells two configurations of ``space`` apart: each parameter's choice index or
    step number (so floats computed two ways still match), a continuous one's value."""
    return tuple(_position(space[name], params[name]) for name in space)


def _ordered(distribution: BaseDistribution) -> bool:
    """Whether a parameter's values lie along a line: numbers, not other choices."""
    if isinstance(distribution, CategoricalDistribution):
        return all(
            isinstance(choice, int | float) and not isinstance(choice, bool)
            for choice in distribution.choices
        )
    return True


def _ranks(space: Mapping[str, BaseDistribution], positions: np.ndarray) -> np.ndarray:
    """Configurations' places along each parameter (rows of ``configuration_key``s): a number
    choice's rank among the choices, else the position (a step number, an unordered choice's
    index)."""
    ranks = positions.copy()
    for column, distribution in enumerate(space.values()):
        if isinstance(distribution, CategoricalDistribution) and _ordered(distribution):
            rank_of_index = np.argsort(np.argsort(distribution.choices, kind="stable"))
            ranks[:, column] = rank_of_index[positions[:, column].astype(int)]
    return ranks


def _count(distribution: BaseDistribution) -> int | None:
    if isinstance(distribution, CategoricalDistribution):
        return len(distribution.choices)
    if isinstance(distribution, IntDistribution):
        return (distribution.high - distribution.low) // distribution.step + 1
    if isinstance(distribution, FloatDistribution) and distribution.step is not None:
        return math.floor((distribution.high - distribution.low) / distribution.step + 1e-9) + 1
    return None


def _values(distribution: BaseDistribution) -> list[Any]:
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    if isinstance(distribution, IntDistribution):
        return list(range(distribution.low, distribution.high + 1, distribution.step))
    assert isinstance(distribution, FloatDistribution) and distribution.step is not None
    count = _count(distribution) or 0
    return [distribution.low + i * distribution.step for i in range(count)]


def _position(distribution: BaseDistribution, value: Any) -> float:
    if isinstance(distribution, CategoricalDistribution):
        return distribution.to_internal_repr(value)
    if isinstance(distribution, FloatDistribution) and distribution.step is not None:
        return round((value - distribution.low) / distribution.step)
    return float(value)
