"""The service's vocabulary: study and trial states, token scopes, and the frozen records that
the store returns and the API, CLI and client show. Pure: no database, Ray or HTTP code."""

from __future__ import annotations

import enum
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hpo_service.core.definition import METRICS, Objective, Pick, StudyDefinition
from hpo_service.core.errors import DefinitionError


class StudyStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_active(self) -> bool:
        """Queued or running: the study may still run trials, and may be cancelled."""
        return self in ACTIVE_STATUSES

    @property
    def is_finished(self) -> bool:
        return not self.is_active


ACTIVE_STATUSES = frozenset({StudyStatus.QUEUED, StudyStatus.RUNNING})


class Scope(enum.StrEnum):
    """What an API token may do; each scope includes the ones before it."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"

    def allows(self, needed: Scope) -> bool:
        order = list(Scope)
        return order.index(self) >= order.index(needed)


# How the error of a trial still running when its study stopped (cancelled, out of budget, too
# many failures) begins: it failed for its study's sake, not by its own training.
CUT_OFF = "cut off when the study stopped"


class TrialState(enum.StrEnum):
    RUNNING = "running"
    COMPLETE = "complete"
    EARLY_STOPPED = "early_stopped"
    FAILED = "failed"
    # Cut off by a crash (of the service, the driver or a worker): run again, not counted.
    INTERRUPTED = "interrupted"

    @property
    def is_finished(self) -> bool:
        """Whether the trial counts towards the study's ``limits.trials``."""
        return self in (TrialState.COMPLETE, TrialState.EARLY_STOPPED, TrialState.FAILED)


class EpochRecord(BaseModel):
    model_config = ConfigDict(frozen=True, from_attributes=True)

    epoch: int
    objective: float
    # One field per entry of METRICS, as the tables' columns (tests/db/test_store.py checks).
    accuracy: float | None
    f1: float | None
    matthews_corrcoef: float | None
    eval_loss: float | None
    train_seconds: float | None = None  # None in a trial recorded before revision 0004
    train_loss: float | None


class TrialRecord(BaseModel):
    model_config = ConfigDict(frozen=True, from_attributes=True)

    number: int
    state: TrialState
    params: dict[str, Any]
    objective: float | None
    # One field per entry of METRICS, as the tables' columns (tests/db/test_store.py checks).
    accuracy: float | None
    f1: float | None
    matthews_corrcoef: float | None
    eval_loss: float | None
    train_seconds: float | None = None  # None in a trial recorded before revision 0004
    epochs: int
    started_at: datetime
    finished_at: datetime | None
    error: str | None
    # A confirmation run (see `confirm`): the search trial whose configuration it runs again.
    confirms: int | None = None
    # Out of device memory at its batch size, the micro-batch it trained at instead.
    micro_batch_size: int | None = None
    # Population-based training: from which epoch on it trained with which mutated values.
    schedule: list[dict[str, Any]] | None = None
    learning_curve: list[EpochRecord] = Field(default_factory=list)

    @property
    def duration_s(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    @property
    def metrics(self) -> dict[str, float | None]:
        return {m: getattr(self, m) for m in METRICS}

    @property
    def cut_off(self) -> bool:
        """Failed only because its study stopped while it ran (see ``CUT_OFF``)."""
        return self.state == TrialState.FAILED and (self.error or "").startswith(CUT_OFF)


class RunEnvironment(BaseModel):
    """What a study's trials ran with: the model's type, the data's fingerprint, versions."""

    model_config = ConfigDict(frozen=True, from_attributes=True)

    model_type: str
    dataset_fingerprint: str
    torch_version: str
    transformers_version: str
    optuna_version: str
    ray_version: str


class StudyRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    status: StudyStatus
    objective_metric: str
    direction: str
    n_trials: int
    definition: dict[str, Any]
    resolved_definition: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    trial_counts: dict[TrialState, int]
    run_environment: RunEnvironment | None

    @property
    def goals(self) -> list[Objective]:
        """Every objective, the primary first (one unless the study has ``objectives``)."""
        return goals_of(self.resolved_definition)

    @property
    def picking(self) -> Pick:
        """The rule that picks the best point of several objectives' Pareto front."""
        return picking_of(self.resolved_definition)


def goals_of(resolved_definition: dict[str, Any]) -> list[Objective]:
    """The objectives of a stored (resolved) definition, directions spelled out, without
    validating the whole of it."""
    several = resolved_definition.get("objectives")
    raw = several or [resolved_definition.get("objective") or {}]
    return [Objective.model_validate(o).resolved() for o in raw]


def picking_of(resolved_definition: dict[str, Any]) -> Pick:
    return Pick.model_validate(resolved_definition.get("pick") or {})


def check_warm_start(
    definition: StudyDefinition, find_study: Callable[[str], StudyRecord | None]
) -> None:
    """Refuse a warm start from a study that is not there or that optimises something else;
    ``find_study`` looks a stored study up by name."""
    if definition.warm_start is None:
        return
    name = definition.warm_start.study
    source = find_study(name)
    if source is None:
        raise DefinitionError("warm_start.study", f"there is no study named {name!r}")
    if name == definition.name:
        raise DefinitionError("warm_start.study", "a study cannot warm-start from itself")
    if source.goals != definition.goals:
        raise DefinitionError(
            "warm_start.study",
            f"study {name!r} optimises {_shown(source.goals)}, this one {_shown(definition.goals)}",
        )


def _shown(goals: list[Objective]) -> str:
    return ", ".join(f"{goal.metric} ({goal.mode})" for goal in goals)


class TokenRecord(BaseModel):
    model_config = ConfigDict(frozen=True, from_attributes=True)

    name: str
    prefix: str
    scope: Scope
    created_at: datetime
    revoked_at: datetime | None
