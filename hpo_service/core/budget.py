"""A study's spend in CPU- and GPU-hours and its forecast. Pure: it works on a summary of its
trials' run times (``RunTimes``, which the store sums in SQL).

Spend is each trial's ``resources_per_trial`` times its run time (a running trial's so far), for
every trial that ran: finished, cut off by a crash, or running. Trials fused into one worker
each count their own resources, an upper bound of what their shared worker holds. The forecast
assumes the trials still to run take as long as the finished ones did on average and run
``limits.concurrent_trials`` at a time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from hpo_service.core.definition import StudyDefinition
from hpo_service.core.records import TrialState

HOUR_S = 3600.0
TrialTimes = tuple[TrialState, datetime, datetime | None]  # state, started, finished
TimesGroup = tuple[TrialState, bool, int, float]  # see RunTimes.of_groups


@dataclass(frozen=True)
class RunTimes:
    """A study's trials' run times, summed: all a spend and a forecast need."""

    ended_s: float  # the run seconds of every trial that ended (finished or cut off)
    finished: int  # trials that count (complete, early-stopped, failed) and ended
    finished_s: float  # their run seconds
    running: int  # trials still running
    running_since_s: float  # the sum of their start times, in seconds since the epoch

    @classmethod
    def of(cls, trials: Iterable[TrialTimes]) -> RunTimes:
        """The sums over each trial's (state, start, end)."""
        return cls.of_groups(
            (state, True, 1, (end - start).total_seconds())
            if end is not None
            else (state, False, 1, start.timestamp())
            for state, start, end in trials
        )

    @classmethod
    def of_groups(cls, groups: Iterable[TimesGroup]) -> RunTimes:
        """The sums over groups of trials: (state, ended, count, the run seconds of the ended
        ones or the start times of the running ones, summed), as the store's query gives them."""
        ended_s = finished_s = since_s = 0.0
        finished = running = 0
        for state, ended, count, total in groups:
            if not ended:
                running += count
                since_s += total
                continue
            ended_s += total
            if state.is_finished:
                finished += count
                finished_s += total
        return cls(ended_s, finished, finished_s, running, since_s)

    def seconds(self, now: datetime) -> float:
        """Every trial's run time, a running one's until ``now``."""
        return self.ended_s + self.running * now.timestamp() - self.running_since_s


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


def spent(times: RunTimes, definition: StudyDefinition, now: datetime) -> Spend:
    return _spend(times.seconds(now), definition)


def forecast(times: RunTimes, definition: StudyDefinition, now: datetime) -> Forecast:
    so_far = spent(times, definition, now)
    remaining = max(definition.planned_trials - times.finished, 0)
    if not times.finished:
        return Forecast(so_far, remaining, None, None)
    mean = times.finished_s / times.finished
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
