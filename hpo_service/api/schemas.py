"""What the REST API sends back. Database rows never reach a client: these are built from the
store's frozen records."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Self

from pydantic import BaseModel, Field, create_model

from hpo_service.core.budget import Forecast, Spend
from hpo_service.core.definition import METRICS, StudyDefinition
from hpo_service.core.records import EpochRecord, StudyRecord, StudyStatus, TrialRecord, TrialState


class Objective(BaseModel):
    metric: str
    direction: str


def objectives_of(study: StudyRecord) -> list[Objective]:
    return [Objective(metric=goal.metric, direction=goal.mode) for goal in study.goals]


class Progress(BaseModel):
    finished: int = Field(description="Trials complete, early-stopped or failed.")
    total: int = Field(
        description="Trials the study runs: `limits.trials`, plus the confirmation runs."
    )
    fraction: float


class BestSoFar(BaseModel):
    trial: int
    objective: float
    params: dict[str, Any]


class StudySummary(BaseModel):
    name: str
    status: StudyStatus
    objective: Objective = Field(description="The primary objective.")
    objectives: list[Objective] = Field(
        description="Every objective, the primary first: one unless the study has `objectives`."
    )
    trial_counts: dict[TrialState, int]
    progress: Progress
    best: BestSoFar | None = Field(
        description="The best trial that ran its full budget; with several objectives, the "
        "point of the Pareto front that the study's `pick` rule picks."
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None

    @classmethod
    def of(cls, study: StudyRecord, best: TrialRecord | None) -> StudySummary:
        finished = sum(n for s, n in study.trial_counts.items() if s.is_finished)
        return cls(
            name=study.name,
            status=study.status,
            objective=Objective(metric=study.objective_metric, direction=study.direction),
            objectives=objectives_of(study),
            trial_counts=study.trial_counts,
            progress=Progress(
                finished=finished,
                total=study.n_trials,
                fraction=round(finished / study.n_trials, 4) if study.n_trials else 0.0,
            ),
            best=None
            if best is None or best.objective is None
            else BestSoFar(trial=best.number, objective=best.objective, params=best.params),
            created_at=study.created_at,
            started_at=study.started_at,
            finished_at=study.finished_at,
            error=study.error,
        )


class Hours(BaseModel):
    cpu_hours: float | None
    gpu_hours: float | None


class Budget(BaseModel):
    """What the study spent, its budget, and what finishing it would take."""

    spent: Hours = Field(description="Each trial's resources times its run time, so far.")
    limits: Hours = Field(description="`limits.cpu_hours` and `limits.gpu_hours` (null: none).")
    remaining_trials: int
    seconds_to_finish: float | None = Field(
        description="At the finished trials' mean run time; null before one has finished."
    )
    at_end: Hours | None = Field(description="The spend forecast once the study finishes.")

    @classmethod
    def of(cls, forecast: Forecast, definition: StudyDefinition, active: bool) -> Budget:
        def hours(spend: Spend) -> Hours:
            return Hours(cpu_hours=spend.cpu_hours, gpu_hours=spend.gpu_hours)

        if not active:  # it ended: nothing more to run or spend
            forecast = Forecast(forecast.spent, 0, 0.0, forecast.spent)
        limits = definition.limits
        return cls(
            spent=hours(forecast.spent),
            limits=Hours(cpu_hours=limits.cpu_hours, gpu_hours=limits.gpu_hours),
            remaining_trials=forecast.remaining_trials,
            seconds_to_finish=forecast.seconds_to_finish,
            at_end=None if forecast.at_end is None else hours(forecast.at_end),
        )


class StudyDetail(StudySummary):
    definition: dict[str, Any] = Field(description="The definition as submitted.")
    resolved_definition: dict[str, Any] = Field(description="After its preset was merged in.")
    budget: Budget


class StudyPage(BaseModel):
    items: list[StudySummary]
    total: int
    offset: int
    limit: int


# A trial's scores: one field per metric trials report.
Metrics = create_model("Metrics", **{metric: (float | None, ...) for metric in METRICS})


class TrialSummary(BaseModel):
    number: int
    state: TrialState
    params: dict[str, Any]
    objective: float | None
    metrics: Metrics
    epochs: int
    started_at: datetime
    finished_at: datetime | None
    duration_s: float | None
    error: str | None
    micro_batch_size: int | None = Field(
        default=None,
        description="Out of device memory at its batch size, the micro-batch it trained at "
        "(with more gradient accumulation: the same effective batch).",
    )
    confirms: int | None = Field(
        default=None,
        description="A confirmation run: the search trial whose configuration it runs again "
        "with a fresh seed.",
    )
    schedule: list[dict[str, Any]] | None = Field(
        default=None,
        description="Population-based training: the mutated values it trained with from each "
        "`epoch` on (`params` are its starting values).",
    )

    @classmethod
    def of(cls, trial: TrialRecord) -> Self:
        """The trial's fields as the API shows them (its ``metrics`` and ``duration_s`` too),
        in one validation."""
        return cls.model_validate(trial, from_attributes=True)


class TrialDetail(TrialSummary):
    learning_curve: list[EpochRecord] = Field(description="One evaluation per epoch.")


class TrialPage(BaseModel):
    items: list[TrialSummary]
    total: int
    offset: int
    limit: int


class Pick(BaseModel):
    rule: str
    tolerance: float | None
    description: str = Field(description="The rule in words.")
    trial: int | None = Field(description="The trial it picks; null before one is complete.")


class ParetoFront(BaseModel):
    """The complete search trials no other complete trial beats on every objective."""

    objectives: list[Objective]
    pick: Pick
    items: list[TrialSummary] = Field(
        description="Best first on the primary objective (ties by the next)."
    )


class Preset(BaseModel):
    name: str
    source: str
    document: dict[str, Any]


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str


class ValidationErrors(BaseModel):
    detail: list[ErrorItem]


class Message(BaseModel):
    detail: str


class Readiness(BaseModel):
    database: str
    ray: str
