"""The confirmation stage: which configurations of a search run again with fresh seeds, and which
one wins by its mean over those seeds. Pure: it works on the store's trial records.

Only the fresh runs count towards a configuration's mean: the search picked its best runs for
being high, so their own scores are biased upwards (the winner's curse). Every candidate runs the
same fresh seeds, so candidates are compared on equal draws. A configuration that failed on a
fresh seed (its training diverged, say) is not one a pipeline can trust: it ranks after every
candidate that failed on fewer, whatever the mean of its other seeds. A run cut off because the
study stopped (out of budget, cancelled) says nothing of its configuration: it counts neither way.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hpo_service.core.definition import METRICS, Confirm, Direction, Objective
from hpo_service.core.records import TrialRecord, TrialState

FIRST_SEED = 10_000  # fresh seeds are 10000, 10001, …: the same for every candidate
RULE = "mean over the confirmation seeds"


def confirmation_seeds(confirm: Confirm) -> list[int]:
    return [FIRST_SEED + i for i in range(confirm.seeds)]


def configuration(params: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A trial's configuration without its seed: what a confirmation run repeats."""
    return tuple(sorted((k, v) for k, v in params.items() if k != "seed"))


def _best_first(values: Iterable[float], direction: Direction) -> list[float]:
    return sorted(values, reverse=direction == "maximize")


def candidates(trials: list[TrialRecord], confirm: Confirm, direction: Direction) -> list[int]:
    """The numbers of the search's best ``top_k`` complete trials of distinct configurations,
    best first (the lowest number among equals)."""
    complete = [
        t
        for t in trials
        if t.confirms is None and t.state == TrialState.COMPLETE and t.objective is not None
    ]
    sign = -1 if direction == "maximize" else 1
    complete.sort(key=lambda t: (sign * t.objective, t.number))  # type: ignore[operator]
    chosen: dict[tuple[tuple[str, Any], ...], int] = {}
    for trial in complete:
        chosen.setdefault(configuration(trial.params), trial.number)
    return list(chosen.values())[: confirm.top_k]


@dataclass(frozen=True)
class Spread:
    """A metric over a configuration's confirmation runs."""

    mean: float
    std: float  # the sample standard deviation; 0 with one run
    worst: float
    scores: list[float]

    @classmethod
    def of(cls, scores: list[float], direction: Direction) -> Spread:
        std = statistics.stdev(scores) if len(scores) > 1 else 0.0
        return cls(statistics.fmean(scores), std, _best_first(scores, direction)[-1], scores)

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "worst": self.worst, "scores": self.scores}


@dataclass(frozen=True)
class Confirmed:
    """One candidate configuration, its complete confirmation runs and its failed ones."""

    trial: TrialRecord  # the search trial whose configuration it is
    runs: list[TrialRecord]
    direction: Direction
    failed: list[TrialRecord] = field(default_factory=list)

    @property
    def objective(self) -> Spread:
        return Spread.of([r.objective for r in self.runs], self.direction)  # type: ignore[misc]

    def metric(self, name: str) -> Spread | None:
        scores = [r.metrics[name] for r in self.runs]
        if any(score is None for score in scores):
            return None
        return Spread.of(scores, Objective(metric=name).mode)  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, Any]:
        metrics = {name: self.metric(name) for name in METRICS}
        return {
            "trial": self.trial.number,
            "search_value": self.trial.objective,
            "objective": self.objective.as_dict(),
            "metrics": {k: v.as_dict() for k, v in metrics.items() if v is not None},
            "runs": [
                {"trial": r.number, "seed": r.params.get("seed"), "value": r.objective}
                for r in self.runs
            ],
            "failed_runs": [
                {"trial": r.number, "seed": r.params.get("seed"), "error": r.error}
                for r in self.failed
            ],
        }


def rank(trials: list[TrialRecord], direction: Direction) -> list[Confirmed]:
    """The confirmed configurations: fewest failed confirmation runs first (runs cut off by the
    study's stop not counted), then best mean (ties: the better search trial first); a candidate
    with no complete run is left out."""
    by_number = {t.number: t for t in trials}
    runs: dict[int, list[TrialRecord]] = {}
    failed: dict[int, list[TrialRecord]] = {}
    for trial in trials:
        if trial.confirms is not None and trial.state == TrialState.COMPLETE:
            runs.setdefault(trial.confirms, []).append(trial)
        elif trial.confirms is not None and trial.state == TrialState.FAILED and not trial.cut_off:
            failed.setdefault(trial.confirms, []).append(trial)
    confirmed = [
        Confirmed(by_number[n], r, direction, failed.get(n, []))
        for n, r in runs.items()
        if n in by_number
    ]
    sign = -1 if direction == "maximize" else 1
    confirmed.sort(
        key=lambda c: (len(c.failed), sign * c.objective.mean, sign * c.trial.objective)  # type: ignore[operator]
    )
    return confirmed
