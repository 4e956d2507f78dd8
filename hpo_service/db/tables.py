"""SQLAlchemy models of hpo-service's tables (prefix ``hpo_``); Optuna keeps its own beside."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from hpo_service.core.records import Scope, StudyStatus, TrialState

TABLE_PREFIX = "hpo_"


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp, also on SQLite (which drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: Any, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def _enum(kind: type[enum.StrEnum]) -> Enum:
    """Stored as its string value (no database enum type, so new values need no migration)."""
    return Enum(kind, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e])


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class StudyRow(Base):
    __tablename__ = f"{TABLE_PREFIX}studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    status: Mapped[StudyStatus] = mapped_column(_enum(StudyStatus), index=True)
    # The document as submitted (before its preset was merged in) and what actually ran.
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    resolved_definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    objective_metric: Mapped[str] = mapped_column(String(32))
    direction: Mapped[str] = mapped_column(String(8))
    n_trials: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    error: Mapped[str | None] = mapped_column(Text)
    # What the study's driver ran with, recorded when its trials start (revision 0002).
    model_type: Mapped[str | None] = mapped_column(String(64))
    dataset_fingerprint: Mapped[str | None] = mapped_column(String(80))
    torch_version: Mapped[str | None] = mapped_column(String(32))
    transformers_version: Mapped[str | None] = mapped_column(String(32))
    optuna_version: Mapped[str | None] = mapped_column(String(32))
    ray_version: Mapped[str | None] = mapped_column(String(32))
    # Increased by every write to the study or its trials: what the API's kept answers are
    # checked against (revision 0005).
    revision: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))

    trials: Mapped[list[TrialRow]] = relationship(
        back_populates="study", cascade="all, delete-orphan", order_by="TrialRow.number"
    )


class TrialRow(Base):
    __tablename__ = f"{TABLE_PREFIX}trials"
    __table_args__ = (UniqueConstraint("study_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(
        ForeignKey(f"{TABLE_PREFIX}studies.id", ondelete="CASCADE"), index=True
    )
    number: Mapped[int] = mapped_column(Integer)  # Optuna's trial number in the same study
    state: Mapped[TrialState] = mapped_column(_enum(TrialState))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    objective: Mapped[float | None] = mapped_column(Float)
    accuracy: Mapped[float | None] = mapped_column(Float)
    f1: Mapped[float | None] = mapped_column(Float)
    matthews_corrcoef: Mapped[float | None] = mapped_column(Float)
    eval_loss: Mapped[float | None] = mapped_column(Float)
    train_seconds: Mapped[float | None] = mapped_column(Float)  # revision 0004
    epochs: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    error: Mapped[str | None] = mapped_column(Text)
    # A confirmation run: the number of the search trial whose configuration it runs again.
    confirms: Mapped[int | None] = mapped_column(Integer)
    # Out of memory at its batch size, it trained at this micro-batch (more accumulation).
    micro_batch_size: Mapped[int | None] = mapped_column(Integer)
    # Population-based training: the mutated values it trained with from each epoch on (0004).
    schedule: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)

    study: Mapped[StudyRow] = relationship(back_populates="trials")
    epoch_results: Mapped[list[EpochRow]] = relationship(
        back_populates="trial", cascade="all, delete-orphan", order_by="EpochRow.epoch"
    )


class EpochRow(Base):
    """One evaluation after one epoch of one trial: the learning curve."""

    __tablename__ = f"{TABLE_PREFIX}trial_epochs"

    trial_id: Mapped[int] = mapped_column(
        ForeignKey(f"{TABLE_PREFIX}trials.id", ondelete="CASCADE"), primary_key=True
    )
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    objective: Mapped[float] = mapped_column(Float)
    accuracy: Mapped[float | None] = mapped_column(Float)
    f1: Mapped[float | None] = mapped_column(Float)
    matthews_corrcoef: Mapped[float | None] = mapped_column(Float)
    eval_loss: Mapped[float | None] = mapped_column(Float)
    train_seconds: Mapped[float | None] = mapped_column(Float)  # revision 0004
    train_loss: Mapped[float | None] = mapped_column(Float)
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)

    trial: Mapped[TrialRow] = relationship(back_populates="epoch_results")


class ApiTokenRow(Base):
    """An API token, stored only as the SHA-256 of its secret (revision 0002)."""

    __tablename__ = f"{TABLE_PREFIX}api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The secret's first characters: find the row, and tell tokens apart in listings.
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    scope: Mapped[Scope] = mapped_column(_enum(Scope))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
