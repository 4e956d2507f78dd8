"""The CI gate on a study's best configuration: pass or fail, with one line saying why.

A document with a confirmation stage holds each metric's spread over fresh seeds; the gate can
judge its mean, its mean one standard deviation towards worse, or its worst seed, and it compares
with a baseline's mean allowing for both documents' spread, so noise alone fails no pipeline.
A document without one (a single run, or a v1 document) has no spread: every statistic is its
value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hpo_service.core.definition import LOWER_IS_BETTER

FLOAT_SLACK = 1e-9  # 0.92 - 0.90 is 0.0200000000000000018 in floats: still within 0.02
Statistic = Literal["mean", "mean-std", "worst"]
STATISTICS: tuple[Statistic, ...] = ("mean", "mean-std", "worst")


class _Numbers(BaseModel):
    model_config = ConfigDict(strict=True)  # a number, not text that reads as one


class SeedSpread(_Numbers):
    """A metric over a confirmation stage's fresh seeds."""

    mean: float
    std: float
    worst: float
    scores: list[float]


class FailedRun(_Numbers):
    trial: int
    seed: int | None = None
    error: str | None = None


class ConfirmationSection(_Numbers):
    metrics: dict[str, SeedSpread] = Field(default_factory=dict)
    failed_runs: list[FailedRun] = Field(default_factory=list)


class BestConfig(_Numbers):
    """What the gate reads of a best-config document of any schema version (the rest is not its
    business): every metric, and each one's spread after a confirmation stage."""

    metrics: dict[str, float | None]
    confirmation: ConfirmationSection | None = None


@dataclass(frozen=True)
class Verdict:
    passed: bool
    message: str


@dataclass(frozen=True)
class Measured:
    """A metric of a best-config document: its mean, spread and worst seed."""

    mean: float
    std: float
    worst: float
    seeds: int  # 1 without a confirmation stage
    failed: int = 0  # confirmation runs that failed (no score: left out of the others)

    @classmethod
    def read(cls, document: dict[str, Any], name: str) -> Measured | None:
        confirmation = document.get("confirmation") or {}
        confirmed = confirmation.get("metrics", {}).get(name)
        if confirmed is not None:
            n, failed = len(confirmed["scores"]), len(confirmation.get("failed_runs") or [])
            mean, std = float(confirmed["mean"]), float(confirmed["std"])
            return cls(mean, std, confirmed["worst"], n, failed)
        value = document.get("metrics", {}).get(name)
        return None if value is None else cls(float(value), 0.0, float(value), 1)

    def statistic(self, which: Statistic, lower_is_better: bool) -> float:
        if which == "worst":
            return self.worst
        if which == "mean-std":
            return self.mean + self.std if lower_is_better else self.mean - self.std
        return self.mean

    @property
    def is_finite(self) -> bool:
        """False for a NaN (no comparison with it is true, so it would pass) or an infinity."""
        return all(math.isfinite(x) for x in (self.mean, self.std, self.worst))

    def shown(self) -> str:
        if self.seeds == 1:
            return f"{self.mean:.4f}"
        return f"{self.mean:.4f} ± {self.std:.4f} over {self.seeds} seeds (worst {self.worst:.4f})"


def judge(
    study: str,
    status: str,
    best: dict[str, Any] | None,
    metric: str | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    baseline: dict[str, Any] | None = None,
    max_drop: float = 0.0,
    statistic: Statistic = "mean",
) -> Verdict:
    """Whether ``study`` (its ``status`` and best-config document) passes the thresholds on
    ``statistic`` of ``metric``, and does not regress from ``baseline`` by more than
    ``max_drop`` plus the noise both documents show."""
    if status != "completed":
        return Verdict(False, f"study {study} is {status}, not completed")
    if best is None:
        return Verdict(False, f"study {study} has no trial that finished its full budget")
    name = metric or best["objective"]["metric"]
    measured = Measured.read(best, name)
    if measured is None:
        return Verdict(False, f"study {study} has no metric {name!r}")
    lower_is_better = name in LOWER_IS_BETTER
    value = measured.statistic(statistic, lower_is_better)
    label = name if measured.seeds == 1 or statistic == "mean" else f"{name} ({statistic})"
    shown = f"study {study} trial {best['trial']}: {name} {measured.shown()}"
    judged = f"{shown}: {label} {value:.4f}" if measured.seeds > 1 else shown
    if not measured.is_finite:
        return Verdict(False, f"{shown} is not a finite number")
    if statistic == "worst" and measured.failed:
        return Verdict(
            False,
            f"{shown}: {measured.failed} more confirmation run(s) failed, so its worst seed "
            "has no score",
        )
    if minimum is not None and value < minimum:
        return Verdict(False, f"{judged} is below the minimum {minimum}")
    if maximum is not None and value > maximum:
        return Verdict(False, f"{judged} is above the maximum {maximum}")
    checks = [
        f"{label} >= {minimum}" if minimum is not None else "",
        f"{label} <= {maximum}" if maximum is not None else "",
    ]
    if baseline is not None:
        before = Measured.read(baseline, name)
        if before is None:
            return Verdict(False, f"the baseline has no metric {name!r}")
        if not before.is_finite:
            return Verdict(False, f"the baseline's {name} {before.shown()} is not a finite number")
        drop = (measured.mean - before.mean) if lower_is_better else (before.mean - measured.mean)
        noise = math.hypot(measured.std, before.std)
        allowed = max_drop + noise
        if drop > allowed + FLOAT_SLACK:
            return Verdict(
                False,
                f"{shown} regressed from the baseline's {before.shown()} (by {drop:.4f}, more "
                f"than --max-drop {max_drop}" + (f" + noise {noise:.4f})" if noise else ")"),
            )
        slack = f"{max_drop}" + (f" + noise {noise:.4f}" if noise else "")
        checks.append(f"within {slack} of the baseline's {before.shown()}")
    passed = ", ".join(c for c in checks if c)
    return Verdict(True, f"{shown} passes" + (f" ({passed})" if passed else ""))
