"""A study's spend in CPU- and GPU-hours and its forecast. Pure: it works on trials' run times.

Spend is each trial's ``resources_per_trial`` times its run time (a running trial's so far), for
every trial that ran: finished, cut off by a crash, or running. Trials fused into one worker
each count their own resources, an upper bound of what their shared worker holds. The forecast
assumes the trials still to run take as long as the finished ones did on average and run
``limits.concurrent_trials`` at a time.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import datetime

from hpo_service.core.definition import StudyDefinition
from hpo_service.core.records import TrialState

HOUR_S = 3600.0
TrialTimes = tuple[TrialState, datetime, datetime | None]  # state, started, finished


@dataclass(frozen=True)
class Spend:
    cpu_hours: float
    gpu_hours: float


@dataclass(frozen=True)
class Forecast:
    """The study's spend so far and, once a trial has finished, what finishing it takes."""

    spent: Spend
    remaining_trials: int
    seconds_to_finish: float | None
    at_end: Spend | None


def _spend(seconds: float, definition: StudyDefinition) -> Spend:
    resources = definition.resources_per_trial
    return Spend(seconds * resources.cpus / HOUR_S, seconds * resources.gpus / HOUR_S)


def spent(trials: list[TrialTimes], definition: StudyDefinition, now: datetime) -> Spend:
    seconds = sum(((end or now) - start).total_seconds() for _, start, end in trials)
    return _spend(seconds, definition)


def forecast(trials: list[TrialTimes], definition: StudyDefinition, now: datetime) -> Forecast:
    so_far = spent(trials, definition, now)
    durations = [
        (end - start).total_seconds() for state, start, end in trials if state.is_finished and end
    ]
    remaining = max(definition.planned_trials - len(durations), 0)
    if not durations:
        return Forecast(so_far, remaining, None, None)
    mean = statistics.fmean(durations)
    still = _spend(remaining * mean, definition)
    at_end = Spend(so_far.cpu_hours + still.cpu_hours, so_far.gpu_hours + still.gpu_hours)
    seconds = remaining * mean / definition.limits.concurrent_trials
    return Forecast(so_far, remaining, seconds, at_end)


def over_budget(so_far: Spend, definition: StudyDefinition) -> str | None:
    """Why the study must stop (a budget of ``limits`` is used up), or ``None``."""
    limits = definition.limits
    for name, used, limit in (
        ("cpu_hours", so_far.cpu_hours, limits.cpu_hours),
        ("gpu_hours", so_far.gpu_hours, limits.gpu_hours),
    ):
        if limit is not None and used >= limit:
            return f"stopped at its budget: {used:.4g} of limits.{name} {limit:g} used"
    return None
