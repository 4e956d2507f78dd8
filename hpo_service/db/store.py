"""Reading and writing studies and trials. ORM rows stay here; callers get frozen records."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Engine, create_engine, event, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from hpo_service.db.migrate import ensure_schema
from hpo_service.db.tables import (
    ApiTokenRow,
    EpochRow,
    Scope,
    StudyRow,
    StudyStatus,
    TrialRow,
    TrialState,
    utcnow,
)
from hpo_service.definition import StudyDefinition
from hpo_service.errors import AlreadyExistsError, NotFoundError

METRIC_COLUMNS = ("accuracy", "f1", "matthews_corrcoef", "eval_loss")


class EpochRecord(BaseModel):
    model_config = ConfigDict(frozen=True, from_attributes=True)

    epoch: int
    objective: float
    accuracy: float | None
    f1: float | None
    matthews_corrcoef: float | None
    eval_loss: float | None
    train_loss: float | None


class TrialRecord(BaseModel):
    model_config = ConfigDict(frozen=True, from_attributes=True)

    number: int
    state: TrialState
    params: dict[str, Any]
    objective: float | None
    accuracy: float | None
    f1: float | None
    matthews_corrcoef: float | None
    eval_loss: float | None
    epochs: int
    started_at: datetime
    finished_at: datetime | None
    error: str | None
    learning_curve: list[EpochRecord] = []

    @property
    def duration_s(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    @property
    def metrics(self) -> dict[str, float | None]:
        return {m: getattr(self, m) for m in METRIC_COLUMNS}


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


class TokenRecord(BaseModel):
    model_config = ConfigDict(frozen=True, from_attributes=True)

    name: str
    prefix: str
    scope: Scope
    created_at: datetime
    revoked_at: datetime | None


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and enforced foreign keys."""
    engine = create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    return engine


class Store:
    """Studies, trials and learning curves in hpo-service's own tables."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def from_url(cls, url: str) -> Store:
        return cls(make_engine(url))

    @classmethod
    def open(cls, url: str) -> Store:
        """The store at ``url``, its tables created if the database has none yet.

        Raises ``SchemaOutdatedError`` if they are on an older schema.
        """
        engine = make_engine(url)
        ensure_schema(engine)
        return cls(engine)

    def __reduce__(self) -> tuple[Any, ...]:
        # Ray pickles the experiment's callbacks; an engine travels as its URL.
        return (Store.from_url, (self.engine.url.render_as_string(hide_password=False),))

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    # --- studies ---------------------------------------------------------------------------------

    def create_study(
        self,
        document: dict[str, Any],
        definition: StudyDefinition,
        status: StudyStatus = StudyStatus.QUEUED,
    ) -> StudyRecord:
        """Store a new study; raises ``AlreadyExistsError`` if the name is taken."""
        row = StudyRow(
            name=definition.name,
            status=status,
            definition=document,
            resolved_definition=definition.model_dump(mode="json"),
            objective_metric=definition.objective.metric,
            direction=definition.objective.mode,
            n_trials=definition.n_trials,
        )
        try:
            with self._session() as session:
                session.add(row)
        except IntegrityError as error:
            raise AlreadyExistsError(f"study {definition.name!r} already exists") from error
        return self.get_study(definition.name)

    def set_status(
        self,
        name: str,
        status: StudyStatus,
        error: str | None = None,
        only_from: set[StudyStatus] | None = None,
    ) -> bool:
        """Move a study to ``status``, stamping when it started or finished.

        With ``only_from``, only a study in one of those states moves; returns whether it did.
        """
        with self._session() as session:
            row = self._study_row(session, name, for_update=True)
            if only_from is not None and row.status not in only_from:
                return False
            row.status = status
            if status == StudyStatus.RUNNING and row.started_at is None:
                row.started_at = utcnow()
            if status.is_finished:
                row.finished_at = utcnow()
            row.error = error
            return True

    def get_study(self, name: str) -> StudyRecord:
        """The study called ``name``; raises ``NotFoundError``."""
        with self._session() as session:
            row = self._study_row(session, name)
            counts = dict(
                session.execute(
                    select(TrialRow.state, func.count())
                    .where(TrialRow.study_id == row.id)
                    .group_by(TrialRow.state)
                ).all()
            )
            return StudyRecord(
                name=row.name,
                status=row.status,
                objective_metric=row.objective_metric,
                direction=row.direction,
                n_trials=row.n_trials,
                definition=row.definition,
                resolved_definition=row.resolved_definition,
                created_at=row.created_at,
                started_at=row.started_at,
                finished_at=row.finished_at,
                error=row.error,
                trial_counts={state: counts.get(state, 0) for state in TrialState},
                run_environment=None
                if row.model_type is None
                else RunEnvironment.model_validate(row),
            )

    def record_run_environment(self, name: str, environment: RunEnvironment) -> None:
        with self._session() as session:
            row = self._study_row(session, name)
            for field, value in environment.model_dump().items():
                setattr(row, field, value)

    def study_names(self, status: StudyStatus | None = None) -> list[str]:
        """Names of the studies (with ``status``), oldest first."""
        query = select(StudyRow.name).order_by(StudyRow.id)
        if status is not None:
            query = query.where(StudyRow.status == status)
        with self._session() as session:
            return list(session.scalars(query))

    def study_counts(self) -> dict[StudyStatus, int]:
        with self._session() as session:
            rows = session.execute(
                select(StudyRow.status, func.count()).group_by(StudyRow.status)
            ).all()
        counts = dict(rows)
        return {status: counts.get(status, 0) for status in StudyStatus}

    def trial_state_counts(self) -> dict[TrialState, int]:
        """Trials by state, over every study."""
        with self._session() as session:
            rows = session.execute(select(TrialRow.state, func.count()).group_by(TrialRow.state))
            counts = dict(rows.all())
        return {state: counts.get(state, 0) for state in TrialState}

    def finished_trial_durations(self) -> list[float]:
        """Seconds each finished trial took, over every study."""
        with self._session() as session:
            rows = session.execute(
                select(TrialRow.started_at, TrialRow.finished_at).where(
                    TrialRow.finished_at.is_not(None)
                )
            ).all()
        return [(end - start).total_seconds() for start, end in rows]

    def delete_study(self, name: str) -> None:
        with self._session() as session:
            session.delete(self._study_row(session, name))

    # --- trials ----------------------------------------------------------------------------------

    def start_trial(self, study: str, number: int, params: dict[str, Any]) -> None:
        with self._session() as session:
            study_row = self._study_row(session, study)
            session.add(
                TrialRow(
                    study_id=study_row.id, number=number, state=TrialState.RUNNING, params=params
                )
            )

    def record_epoch(self, study: str, number: int, result: dict[str, Any]) -> None:
        """Store one epoch's evaluation; the trial's metrics become this epoch's."""
        with self._session() as session:
            trial = self._trial_row(session, study, number)
            scores = {m: result.get(m) for m in METRIC_COLUMNS}
            session.merge(
                EpochRow(
                    trial_id=trial.id,
                    epoch=int(result["epoch"]),
                    objective=float(result["objective"]),
                    train_loss=result.get("train_loss"),
                    **scores,
                )
            )
            trial.objective = float(result["objective"])
            trial.epochs = int(result["epoch"])
            for metric, value in scores.items():
                setattr(trial, metric, value)

    def finish_trial(
        self, study: str, number: int, state: TrialState, error: str | None = None
    ) -> None:
        with self._session() as session:
            trial = self._trial_row(session, study, number)
            trial.state = state
            trial.finished_at = utcnow()
            trial.error = error

    def fail_running_trials(self, study: str, error: str) -> int:
        """Record every trial still running as failed (its driver died); returns how many."""
        with self._session() as session:
            study_row = self._study_row(session, study)
            rows = session.scalars(
                select(TrialRow).where(
                    TrialRow.study_id == study_row.id, TrialRow.state == TrialState.RUNNING
                )
            ).all()
            for row in rows:
                row.state, row.error, row.finished_at = TrialState.FAILED, error, utcnow()
            return len(rows)

    def finished_trial_count(self, study: str) -> int:
        """Trials that are complete, early-stopped or failed."""
        counts = self.get_study(study).trial_counts
        return sum(n for state, n in counts.items() if state != TrialState.RUNNING)

    def trials(self, study: str, with_curves: bool = False) -> list[TrialRecord]:
        """The study's trials by number, with their learning curves if asked."""
        with self._session() as session:
            study_row = self._study_row(session, study)
            query = select(TrialRow).where(TrialRow.study_id == study_row.id)
            if with_curves:
                query = query.options(selectinload(TrialRow.epoch_results))
            rows = session.scalars(query.order_by(TrialRow.number)).all()
            return [_trial_record(row, with_curves) for row in rows]

    def best_trial(self, study: str) -> TrialRecord | None:
        """The best trial that ran its whole budget; early-stopped trials never rank."""
        with self._session() as session:
            row = self._study_row(session, study)
            order = TrialRow.objective.desc() if row.direction == "maximize" else TrialRow.objective
            best = session.scalars(
                select(TrialRow)
                .where(
                    TrialRow.study_id == row.id,
                    TrialRow.state == TrialState.COMPLETE,
                    TrialRow.objective.is_not(None),
                )
                .order_by(order, TrialRow.number)
                .limit(1)
                .options(selectinload(TrialRow.epoch_results))
            ).first()
            return _trial_record(best, with_curve=True) if best is not None else None

    # --- API tokens ----------------------------------------------------------------------------

    def add_token(self, name: str, token_hash: str, prefix: str, scope: Scope) -> TokenRecord:
        """Store a token's hash; raises ``AlreadyExistsError`` if the name is taken."""
        row = ApiTokenRow(name=name, token_hash=token_hash, prefix=prefix, scope=scope)
        try:
            with self._session() as session:
                session.add(row)
        except IntegrityError as error:
            raise AlreadyExistsError(f"a token named {name!r} already exists") from error
        return TokenRecord.model_validate(row)

    def tokens(self) -> list[TokenRecord]:
        with self._session() as session:
            rows = session.scalars(select(ApiTokenRow).order_by(ApiTokenRow.id)).all()
            return [TokenRecord.model_validate(row) for row in rows]

    def revoke_token(self, name: str) -> None:
        """Revoke a token for good; raises ``NotFoundError``."""
        with self._session() as session:
            row = session.scalars(select(ApiTokenRow).where(ApiTokenRow.name == name)).first()
            if row is None:
                raise NotFoundError(f"no token named {name!r}")
            row.revoked_at = row.revoked_at or utcnow()

    def live_token_hashes(self, prefix: str) -> list[tuple[str, Scope]]:
        """(hash, scope) of the unrevoked tokens whose secret starts with ``prefix``."""
        with self._session() as session:
            rows = session.execute(
                select(ApiTokenRow.token_hash, ApiTokenRow.scope).where(
                    ApiTokenRow.prefix == prefix, ApiTokenRow.revoked_at.is_(None)
                )
            ).all()
            return [(token_hash, scope) for token_hash, scope in rows]

    # --- rows --------------------------------------------------------------------------------

    @staticmethod
    def _study_row(session: Session, name: str, for_update: bool = False) -> StudyRow:
        query = select(StudyRow).where(StudyRow.name == name)
        row = session.scalars(query.with_for_update() if for_update else query).first()
        if row is None:
            raise NotFoundError(f"no study named {name!r}")
        return row

    def _trial_row(self, session: Session, study: str, number: int) -> TrialRow:
        study_row = self._study_row(session, study)
        row = session.scalars(
            select(TrialRow).where(TrialRow.study_id == study_row.id, TrialRow.number == number)
        ).first()
        if row is None:
            raise NotFoundError(f"study {study!r} has no trial {number}")
        return row


def _trial_record(row: TrialRow, with_curve: bool) -> TrialRecord:
    curve = [EpochRecord.model_validate(e) for e in row.epoch_results] if with_curve else []
    return TrialRecord.model_validate(row).model_copy(update={"learning_curve": curve})
