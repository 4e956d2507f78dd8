"""Reading and writing studies and trials. ORM rows stay here; callers get frozen records."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Set
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, NamedTuple

from sqlalchemy import (
    Engine,
    Select,
    case,
    create_engine,
    event,
    exists,
    func,
    make_url,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, aliased, selectinload
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import Float

from hpo_service.core.budget import RunTimes
from hpo_service.core.definition import METRICS, StudyDefinition
from hpo_service.core.errors import AlreadyExistsError, NotFoundError, StorageError
from hpo_service.core.pareto import pareto_front, pick
from hpo_service.core.records import (
    EpochRecord,
    RunEnvironment,
    Scope,
    StudyRecord,
    StudyStatus,
    TokenRecord,
    TrialRecord,
    TrialState,
    goals_of,
    picking_of,
)
from hpo_service.db.migrate import ensure_schema
from hpo_service.db.tables import ApiTokenRow, EpochRow, StudyRow, TrialRow, utcnow

# Connections kept open, and opened beyond them at busy times: as many in all as the threads
# that serve requests (anyio's 40). With SQLAlchemy's 5 and 10, 20 concurrent readers opened and
# closed connections all the time (p99 of a kept read on PostgreSQL 95 to 105 ms; 60 to 70 now).
POOL_SIZE = 20
POOL_OVERFLOW = 20


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and enforced foreign keys.

    A server's connections are tested as they are taken from the pool (one that the server
    dropped, on a restart say, is replaced); a SQLite file's cannot go stale, and are not.
    """
    parsed = make_url(url)
    sqlite = parsed.get_backend_name() == "sqlite"
    in_memory = sqlite and parsed.database in (None, "", ":memory:")  # one connection per thread
    pool = {} if in_memory else {"pool_size": POOL_SIZE, "max_overflow": POOL_OVERFLOW}
    engine = create_engine(url, pool_pre_ping=not sqlite, **pool)
    if sqlite:

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    return engine


@contextmanager
def opening_database() -> Iterator[None]:
    """A database that cannot be opened (a URL with no such driver or that does not parse, no
    such server, database or folder, a file that is not a database) becomes ``StorageError``
    in one line."""
    try:
        yield
    except SQLAlchemyError as error:
        raise StorageError(f"cannot open the database: {_one_line(error)}") from error


def _write_lock_for(engine: Engine) -> AbstractContextManager[Any]:
    """What a write transaction holds: on SQLite, one lock per database file in this process.

    SQLite lets one writer in at a time, and a writer that finds the database locked sleeps in
    growing steps (up to 100 ms) before it tries again. Queued on a lock instead, the service's
    own concurrent writes (submissions, say) go in one after another with no sleep.
    """
    if engine.dialect.name != "sqlite":
        return nullcontext()
    with _SQLITE_LOCKS_GUARD:
        return _SQLITE_LOCKS.setdefault(str(engine.url.database), threading.Lock())


_SQLITE_LOCKS: dict[str, threading.Lock] = {}
_SQLITE_LOCKS_GUARD = threading.Lock()


class StudyVersion(NamedTuple):
    """What an answer about a study is kept under: a study deleted and submitted again under
    its name has a new ``id``; every write to it or its trials increases ``revision``."""

    id: int
    revision: int


class Store:
    """Studies, trials and learning curves in hpo-service's own tables."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._write_lock = _write_lock_for(engine)

    @classmethod
    def from_url(cls, url: str) -> Store:
        return cls(make_engine(url))

    @classmethod
    def open(cls, url: str) -> Store:
        """The store at ``url``, its tables created if the database has none yet.

        Raises ``SchemaOutdatedError`` if they are on an older schema, and ``StorageError``
        if the database cannot be opened.
        """
        with opening_database():
            engine = make_engine(url)
            ensure_schema(engine)
        return cls(engine)

    def __reduce__(self) -> tuple[Any, ...]:
        # Ray pickles the experiment's callbacks into its files: never with the password.
        return (_store_without_password, (self.engine.url.render_as_string(hide_password=True),))

    @contextmanager
    def _session(self, write: bool = False) -> Iterator[Session]:
        """One transaction: committed at the end, rolled back on any error; a ``write`` one
        holds the store's write lock (on SQLite) throughout.

        A database error becomes ``StorageError`` with a one-line reason; ``IntegrityError``
        stays itself, for the callers that turn it into ``AlreadyExistsError``.
        """
        try:
            with (
                self._write_lock if write else nullcontext(),
                Session(self.engine, expire_on_commit=False) as session,
                session.begin(),
            ):
                yield session
        except IntegrityError:
            raise
        except SQLAlchemyError as error:
            raise StorageError(f"the database failed: {_one_line(error)}") from error

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
            n_trials=definition.planned_trials,  # the search and its confirmation runs
        )
        try:
            with self._session(write=True) as session:
                session.add(row)
        except IntegrityError as error:  # the unique name: the one authority on taken names
            raise _name_taken(definition.name) from error
        return self.get_study(definition.name)

    def check_name_free(self, name: str) -> None:
        """Raise ``AlreadyExistsError`` now if a study is called ``name``, for callers with
        costly work to do before ``create_study`` (which still refuses a name taken meanwhile)."""
        with self._session() as session:
            if session.scalar(select(exists().where(StudyRow.name == name))):
                raise _name_taken(name)

    def set_status(
        self,
        name: str,
        status: StudyStatus,
        error: str | None = None,
        only_from: Set[StudyStatus] | None = None,
    ) -> bool:
        """Move a study to ``status``, stamping when it started or finished.

        With ``only_from``, only a study in one of those states moves; returns whether it did.
        """
        with self._session(write=True) as session:
            row = self._study_row(session, name, for_update=True)
            if only_from is not None and row.status not in only_from:
                return False
            row.status = status
            if status == StudyStatus.RUNNING and row.started_at is None:
                row.started_at = utcnow()
            if status.is_finished:
                row.finished_at = utcnow()
            row.error = error
            _touch(session, row.id)
            return True

    def get_study(self, name: str) -> StudyRecord:
        """The study called ``name``; raises ``NotFoundError``."""
        with self._session() as session:
            row = self._study_row(session, name)
            return _study_record(row, _trial_counts(session, [row.id])[row.id])

    def study_detail(self, name: str) -> tuple[StudyRecord, TrialRecord | None, RunTimes]:
        """The study, its best trial (as ``best_trial``) and its trials' run times, read in one
        transaction: four queries, whatever the study's size."""
        with self._session() as session:
            row = self._study_row(session, name)
            counts, times = _counts_and_run_times(session, row.id)
            return _study_record(row, counts), _best_trial(session, row), times

    def study_version(self, name: str) -> StudyVersion:
        """The study's row id and revision, in one query; raises ``NotFoundError``."""
        with self._session() as session:
            query = select(StudyRow.id, StudyRow.revision).where(StudyRow.name == name)
            row = session.execute(query).first()
        if row is None:
            raise NotFoundError(f"no study named {name!r}")
        return StudyVersion(*row)

    def find_study(self, name: str) -> StudyRecord | None:
        """The study called ``name``, or ``None``."""
        try:
            return self.get_study(name)
        except NotFoundError:
            return None

    def study_page(
        self, status: StudyStatus | None = None, offset: int = 0, limit: int = 50
    ) -> tuple[list[tuple[StudyRecord, TrialRecord | None]], int]:
        """A page of studies (with ``status``), oldest first, each with its best trial (no
        learning curve), and how many studies there are in all: four queries, whatever the
        page's size."""
        query = select(StudyRow)
        if status is not None:
            query = query.where(StudyRow.status == status)
        with self._session() as session:
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = session.scalars(query.order_by(StudyRow.id).offset(offset).limit(limit)).all()
            ids = [row.id for row in rows]
            counts = _trial_counts(session, ids)
            best = {t.study_id: _trial_record(t, False) for t in session.scalars(_best_trials(ids))}
            for row in rows:  # several objectives: the picked point of each one's front
                if len(goals_of(row.resolved_definition)) > 1 and (picked := _picked(session, row)):
                    best[row.id] = picked
            page = [(_study_record(row, counts[row.id]), best.get(row.id)) for row in rows]
        return page, total

    def record_run_environment(self, name: str, environment: RunEnvironment) -> None:
        with self._session(write=True) as session:
            row = self._study_row(session, name)
            for field, value in environment.model_dump().items():
                setattr(row, field, value)
            _touch(session, row.id)

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
        """Delete a study and its trials; ``NotFoundError`` if it is gone, also when another
        caller deleted it meanwhile (the row is locked until this one commits)."""
        with self._session(write=True) as session:
            session.delete(self._study_row(session, name, for_update=True))

    # --- trials ----------------------------------------------------------------------------------

    def start_trial(
        self, study: str, number: int, params: dict[str, Any], confirms: int | None = None
    ) -> None:
        """Record a trial as running; ``confirms``: the search trial a confirmation run
        repeats."""
        with self._session(write=True) as session:
            study_row = self._study_row(session, study)
            session.add(
                TrialRow(
                    study_id=study_row.id,
                    number=number,
                    state=TrialState.RUNNING,
                    params=params,
                    confirms=confirms,
                )
            )
            _touch(session, study_row.id)

    def record_epoch(self, study: str, number: int, result: dict[str, Any]) -> None:
        """Store one epoch's evaluation; the trial's metrics become this epoch's."""
        with self._session(write=True) as session:
            trial = self._trial_row(session, study, number)
            scores = {m: result.get(m) for m in METRICS}
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
            trial.micro_batch_size = result.get("micro_batch_size", trial.micro_batch_size)
            for metric, value in scores.items():
                setattr(trial, metric, value)
            _touch(session, trial.study_id)

    def record_schedule(self, study: str, number: int, schedule: list[dict[str, Any]]) -> None:
        """The values population-based training gave the trial, from which epoch on."""
        with self._session(write=True) as session:
            trial = self._trial_row(session, study, number)
            trial.schedule = list(schedule)
            _touch(session, trial.study_id)

    def finish_trial(
        self, study: str, number: int, state: TrialState, error: str | None = None
    ) -> None:
        with self._session(write=True) as session:
            trial = self._trial_row(session, study, number)
            trial.state = state
            trial.finished_at = utcnow()
            trial.error = error
            _touch(session, trial.study_id)

    def interrupt_running_trials(self, study: str, reason: str) -> list[int]:
        """Record every trial still running as interrupted (its driver died); their numbers."""
        with self._session(write=True) as session:
            study_row = self._study_row(session, study)
            rows = session.scalars(
                select(TrialRow).where(
                    TrialRow.study_id == study_row.id, TrialRow.state == TrialState.RUNNING
                )
            ).all()
            for row in rows:
                row.state, row.error, row.finished_at = TrialState.INTERRUPTED, reason, utcnow()
            _touch(session, study_row.id)
            return [row.number for row in rows]

    def running_trial_numbers(self, study: str) -> list[int]:
        with self._session() as session:
            study_row = self._study_row(session, study)
            return list(
                session.scalars(
                    select(TrialRow.number).where(
                        TrialRow.study_id == study_row.id, TrialRow.state == TrialState.RUNNING
                    )
                )
            )

    def copy_epochs(
        self, study: str, source: int, target: int, last_epoch: int | None = None
    ) -> None:
        """Give trial ``target`` the learning curve of trial ``source`` (a resumed trial), up
        to ``last_epoch`` (all, if ``None``)."""
        with self._session(write=True) as session:
            source_row = self._trial_row(session, study, source)
            target_row = self._trial_row(session, study, target)
            for epoch in source_row.epoch_results:
                if last_epoch is not None and epoch.epoch > last_epoch:
                    continue
                values = {c: getattr(epoch, c) for c in ("epoch", "objective", "train_loss")}
                scores = {m: getattr(epoch, m) for m in METRICS}
                session.merge(EpochRow(trial_id=target_row.id, **values, **scores))
            _touch(session, target_row.study_id)

    def finished_trial_count(self, study: str) -> int:
        """Trials that count towards ``limits.trials``: the search's (not the confirmation
        runs) that are complete, early-stopped or failed."""
        with self._session() as session:
            study_row = self._study_row(session, study)
            query = select(func.count()).where(
                TrialRow.study_id == study_row.id,
                TrialRow.confirms.is_(None),
                TrialRow.state.in_(FINISHED_STATES),
            )
            return session.scalar(query) or 0

    def trials(self, study: str, with_curves: bool = False) -> list[TrialRecord]:
        """The study's trials by number, with their learning curves if asked."""
        with self._session() as session:
            study_row = self._study_row(session, study)
            query = select(TrialRow).where(TrialRow.study_id == study_row.id)
            if with_curves:
                query = query.options(selectinload(TrialRow.epoch_results))
            rows = session.scalars(query.order_by(TrialRow.number)).all()
            return [_trial_record(row, with_curves) for row in rows]

    def run_times(self, study: str) -> RunTimes:
        """The study's trials' run times, summed in SQL (what its spend and forecast are
        counted from): one query, a row per state, whatever the study's size."""
        with self._session() as session:
            return _counts_and_run_times(session, self._study_row(session, study).id)[1]

    def trial_page(
        self, study: str, offset: int = 0, limit: int = 100
    ) -> tuple[list[TrialRecord], int]:
        """A page of the study's trials by number (no learning curves), and how many it has
        in all: three queries, whatever the study's size."""
        with self._session() as session:
            study_row = self._study_row(session, study)
            query = select(TrialRow).where(TrialRow.study_id == study_row.id)
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            # Plain rows as dicts, not ORM objects: a third of the time for a page.
            page = query.with_only_columns(*TrialRow.__table__.columns)
            rows = session.execute(page.order_by(TrialRow.number).offset(offset).limit(limit))
            keys = list(rows.keys())
            page_rows = (dict(zip(keys, row, strict=True)) for row in rows)
            return [TrialRecord.model_validate(row) for row in page_rows], total

    def trial(self, study: str, number: int) -> TrialRecord:
        """One trial with its learning curve; raises ``NotFoundError``."""
        with self._session() as session:
            study_row = self._study_row(session, study)
            row = session.scalars(
                select(TrialRow)
                .where(TrialRow.study_id == study_row.id, TrialRow.number == number)
                .options(selectinload(TrialRow.epoch_results))
            ).first()
            if row is None:
                raise NotFoundError(f"study {study!r} has no trial {number}")
            return _trial_record(row, with_curve=True)

    def best_trial(self, study: str) -> TrialRecord | None:
        """The search's best trial that ran its whole budget, with its learning curve;
        early-stopped trials and confirmation runs never rank. With several objectives: the
        point of the Pareto front that the study's ``pick`` rule picks."""
        with self._session() as session:
            return _best_trial(session, self._study_row(session, study))

    def pareto_front(self, study: str) -> list[TrialRecord]:
        """The study's Pareto-optimal complete search trials over its objectives (no learning
        curves), best first on the primary objective: one query of its complete trials."""
        with self._session() as session:
            row = self._study_row(session, study)
            return _front(session, row)

    # --- API tokens ----------------------------------------------------------------------------

    def add_token(self, name: str, token_hash: str, prefix: str, scope: Scope) -> TokenRecord:
        """Store a token's hash; raises ``AlreadyExistsError`` if the name is taken."""
        row = ApiTokenRow(name=name, token_hash=token_hash, prefix=prefix, scope=scope)
        try:
            with self._session(write=True) as session:
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
        with self._session(write=True) as session:
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


FINISHED_STATES = [state for state in TrialState if state.is_finished]


class epoch_seconds(FunctionElement[float]):
    """A timestamp column as seconds since the epoch, in the database's own arithmetic."""

    type = Float()
    inherit_cache = True


@compiles(epoch_seconds, "sqlite")
def _epoch_seconds_sqlite(element: epoch_seconds, compiler: Any, **kw: Any) -> str:
    # The stored text is UTC; julianday keeps milliseconds; 2440587.5 is 1970-01-01 00:00.
    return f"((julianday({compiler.process(element.clauses, **kw)}) - 2440587.5) * 86400.0)"


@compiles(epoch_seconds, "postgresql")
def _epoch_seconds_postgresql(element: epoch_seconds, compiler: Any, **kw: Any) -> str:
    return f"CAST(EXTRACT(EPOCH FROM {compiler.process(element.clauses, **kw)}) AS FLOAT)"


def _touch(session: Session, study_id: int) -> None:
    """Count a write to the study or its trials: its next revision."""
    session.execute(
        update(StudyRow).where(StudyRow.id == study_id).values(revision=StudyRow.revision + 1)
    )


def _name_taken(name: str) -> AlreadyExistsError:
    return AlreadyExistsError(f"study {name!r} already exists")


def _trial_counts(session: Session, study_ids: Iterable[int]) -> dict[int, dict[TrialState, int]]:
    """Each study's trials by state, every state present (zero if none): one query."""
    counts = {study_id: dict.fromkeys(TrialState, 0) for study_id in study_ids}
    rows = session.execute(
        select(TrialRow.study_id, TrialRow.state, func.count())
        .where(TrialRow.study_id.in_(counts))
        .group_by(TrialRow.study_id, TrialRow.state)
    )
    for study_id, state, count in rows:
        counts[study_id][state] = count
    return counts


def _ranks(trial: Any) -> tuple[Any, ...]:
    """What makes a trial (``TrialRow`` or an alias of it) rank for its study's best: a
    complete search trial with an objective (confirmation runs never rank)."""
    return (
        trial.state == TrialState.COMPLETE,
        trial.objective.is_not(None),
        trial.confirms.is_(None),
    )


def _best_trials(study_ids: list[int]) -> Select[tuple[TrialRow]]:
    """The best search trial of each study that has one: best in the study's direction, the
    lowest number among equals (``_best_trial`` for one study, in a cheaper query).

    Each study's first trial in that order, found per study (a correlated subquery): ranking
    all the studies' trials together by a window took 2.4 times as long (50 studies of 1,000
    trials on SQLite: 230 ms against 95 ms).
    """
    ranked = aliased(TrialRow)

    def first_by(key: Any) -> Any:  # the study's first ranked trial by ``key``, then number
        # (SQLite cannot order a subquery by the outer study's direction: one per direction)
        return (
            select(ranked.id)
            .where(ranked.study_id == StudyRow.id, *_ranks(ranked))
            .order_by(key, ranked.number)
            .limit(1)
            .scalar_subquery()
        )

    maximize = StudyRow.direction == "maximize"
    first = case(
        (maximize, first_by(ranked.objective.desc())), else_=first_by(ranked.objective.asc())
    )
    return select(TrialRow).where(TrialRow.id.in_(select(first).where(StudyRow.id.in_(study_ids))))


def _best_trial(session: Session, row: StudyRow) -> TrialRecord | None:
    """The study's best trial with its learning curve (see ``Store.best_trial``): as
    ``_best_trials`` ranks it, in a query that is quicker to build for one study."""
    if len(goals_of(row.resolved_definition)) > 1:
        picked = _picked(session, row)
        number = picked.number if picked is not None else -1
        query = select(TrialRow).where(TrialRow.study_id == row.id, TrialRow.number == number)
    else:
        objective = TrialRow.objective
        key = objective.desc() if row.direction == "maximize" else objective.asc()
        query = select(TrialRow).where(TrialRow.study_id == row.id, *_ranks(TrialRow))
        query = query.order_by(key, TrialRow.number).limit(1)
    best = session.scalars(query.options(selectinload(TrialRow.epoch_results))).first()
    return _trial_record(best, with_curve=True) if best is not None else None


def _counts_and_run_times(
    session: Session, study_id: int
) -> tuple[dict[TrialState, int], RunTimes]:
    """The study's trials by state (every state present) and their run times summed as
    ``RunTimes.of_groups``: one query, a row per (state, ended or not)."""
    ended = TrialRow.finished_at.is_not(None)
    started_s = epoch_seconds(TrialRow.started_at)
    # An ended trial's run time; a running one's start.
    seconds = case((ended, epoch_seconds(TrialRow.finished_at) - started_s), else_=started_s)
    rows = session.execute(
        select(TrialRow.state, ended, func.count(), func.sum(seconds))
        .where(TrialRow.study_id == study_id)
        .group_by(TrialRow.state, ended)
    )
    groups = [(state, has_ended, count, float(total)) for state, has_ended, count, total in rows]
    counts = dict.fromkeys(TrialState, 0)
    for state, _, count, _ in groups:
        counts[state] += count
    return counts, RunTimes.of_groups(groups)


def _front(session: Session, row: StudyRow) -> list[TrialRecord]:
    """The study's Pareto front over its complete search trials (confirmation runs left out)."""
    query = select(TrialRow).where(
        TrialRow.study_id == row.id,
        TrialRow.state == TrialState.COMPLETE,
        TrialRow.confirms.is_(None),
    )
    trials = [_trial_record(t, False) for t in session.scalars(query)]
    return pareto_front(trials, goals_of(row.resolved_definition))


def _picked(session: Session, row: StudyRow) -> TrialRecord | None:
    """The trial that a study with several objectives picks from its Pareto front."""
    goals = goals_of(row.resolved_definition)
    return pick(_front(session, row), goals, picking_of(row.resolved_definition))


def _study_record(row: StudyRow, trial_counts: dict[TrialState, int]) -> StudyRecord:
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
        trial_counts=trial_counts,
        run_environment=None if row.model_type is None else RunEnvironment.model_validate(row),
    )


def _one_line(error: SQLAlchemyError) -> str:
    """The driver's own message, first line, without SQLAlchemy's SQL and parameters."""
    cause = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines() or [type(cause).__name__]
    return f"{type(cause).__name__}: {lines[0]}"


def _trial_record(row: TrialRow, with_curve: bool) -> TrialRecord:
    record = TrialRecord.model_validate(row)
    if not with_curve:
        return record
    curve = [EpochRecord.model_validate(e) for e in row.epoch_results]
    return record.model_copy(update={"learning_curve": curve})


def _store_without_password(url: str) -> Store:
    """A pickled ``Store``: usable where its URL holds no password, else it says why not."""
    if "***" in url:
        raise StorageError(
            f"a pickled store of {url} has no password: open it with Store.open(url) instead"
        )
    return Store.from_url(url)
