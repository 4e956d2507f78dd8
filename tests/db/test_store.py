"""The service's tables, on SQLite and PostgreSQL alike: studies, trials, ranking, schema."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import optuna
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Float, event, inspect, select, text
from sqlalchemy.orm import Session

from hpo_service.core.budget import RunTimes
from hpo_service.core.definition import METRICS, StudyDefinition
from hpo_service.core.errors import AlreadyExistsError, NotFoundError, SchemaOutdatedError
from hpo_service.core.records import RunEnvironment, StudyStatus, TrialState
from hpo_service.core.settings import normalize_database_url
from hpo_service.db.migrate import VERSION_TABLE, ensure_schema, head_revision, include_name
from hpo_service.db.store import Store, make_engine
from hpo_service.db.tables import Base, EpochRow, StudyRow, TrialRow


def definition(name: str = "study", metric: str = "accuracy") -> StudyDefinition:
    return StudyDefinition.model_validate(
        {
            "name": name,
            "dataset": {"train": "train.csv", "eval": "dev.csv"},
            "objective": {"metric": metric},
            "parameters": {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3}},
        }
    )


@pytest.fixture
def store(database_url: str) -> Store:
    engine = make_engine(normalize_database_url(database_url))
    ensure_schema(engine)
    return Store(engine)


def add_trial(
    store: Store, study: str, number: int, state: TrialState, objective: float, epochs: int = 2
) -> None:
    store.start_trial(study, number, {"learning_rate": 1e-4 * (number + 1)})
    for epoch in range(1, epochs + 1):
        store.record_epoch(
            study, number, {"epoch": epoch, "objective": objective, "accuracy": objective}
        )
    store.finish_trial(study, number, state, "boom" if state == TrialState.FAILED else None)


def test_studies_are_stored_once_by_name(store: Store) -> None:
    document = {"name": "study", "preset": None}
    record = store.create_study(document, definition())
    assert record.status == StudyStatus.QUEUED and record.definition == document
    with pytest.raises(AlreadyExistsError, match="'study' already exists"):
        store.create_study(document, definition())
    with pytest.raises(AlreadyExistsError, match="'study' already exists"):
        store.check_name_free("study")
    store.check_name_free("other")
    with pytest.raises(NotFoundError):
        store.get_study("nope")
    store.set_status("study", StudyStatus.RUNNING)
    store.set_status("study", StudyStatus.COMPLETED)
    record = store.get_study("study")
    assert record.started_at is not None and record.finished_at >= record.started_at
    assert store.study_names() == ["study"]
    assert store.study_names(StudyStatus.RUNNING) == []


def test_early_stopped_and_failed_trials_never_rank_best(store: Store) -> None:
    store.create_study({}, definition())
    add_trial(store, "study", 0, TrialState.COMPLETE, 0.70)
    add_trial(store, "study", 1, TrialState.EARLY_STOPPED, 0.95, epochs=1)
    add_trial(store, "study", 2, TrialState.FAILED, 0.99, epochs=1)
    add_trial(store, "study", 3, TrialState.COMPLETE, 0.80)

    best = store.best_trial("study")
    assert best is not None and best.number == 3
    assert [e.epoch for e in best.learning_curve] == [1, 2]
    counts = store.get_study("study").trial_counts
    assert counts[TrialState.COMPLETE] == 2 and counts[TrialState.EARLY_STOPPED] == 1


def test_best_follows_the_objective_direction(store: Store) -> None:
    store.create_study({}, definition(metric="eval_loss"))
    add_trial(store, "study", 0, TrialState.COMPLETE, 0.40)
    add_trial(store, "study", 1, TrialState.COMPLETE, 0.30)
    assert store.best_trial("study").number == 1


def test_equal_objectives_rank_the_earlier_trial_best(store: Store) -> None:
    store.create_study({}, definition())
    for number in range(3):
        add_trial(store, "study", number, TrialState.COMPLETE, 0.5 if number else 0.4)
    assert store.best_trial("study").number == 1


def test_every_metric_is_stored_per_epoch_and_per_trial(store: Store) -> None:
    """One column and one record field per entry of METRICS, in trials and in epochs."""
    for row, others in ((TrialRow, {"objective"}), (EpochRow, {"objective", "train_loss"})):
        scores = {c.name for c in row.__table__.columns if isinstance(c.type, Float)}
        assert scores - others == set(METRICS), row.__tablename__
    store.create_study({}, definition())
    store.start_trial("study", 0, {})
    values = {metric: 0.1 * (i + 1) for i, metric in enumerate(METRICS)}
    store.record_epoch("study", 0, {"epoch": 1, "objective": 0.1, **values})
    (trial,) = store.trials("study", with_curves=True)
    assert trial.metrics == values
    assert {m: getattr(trial.learning_curve[0], m) for m in METRICS} == values


def test_a_trial_that_fell_back_to_a_smaller_micro_batch_keeps_it(store: Store) -> None:
    store.create_study({}, definition())
    store.start_trial("study", 0, {"batch_size": 32})
    store.record_epoch("study", 0, {"epoch": 1, "objective": 0.1, "micro_batch_size": 8})
    store.record_epoch("study", 0, {"epoch": 2, "objective": 0.2})  # reported once is enough
    store.start_trial("study", 1, {"batch_size": 32})
    store.record_epoch("study", 1, {"epoch": 1, "objective": 0.1})
    assert [t.micro_batch_size for t in store.trials("study")] == [8, None]


def test_several_objectives_rank_by_the_pareto_front_and_the_pick_rule(store: Store) -> None:
    document = {
        **definition().model_dump(mode="json"),
        "objective": {"metric": "accuracy"},
        "objectives": [{"metric": "accuracy"}, {"metric": "train_seconds"}],
        "pick": {"rule": "within", "tolerance": 0.05},
    }
    store.create_study({"name": "study"}, StudyDefinition.model_validate(document))
    points = [(0.90, 40.0), (0.87, 10.0), (0.80, 30.0), (0.95, 5.0)]  # the last: early-stopped
    for number, (accuracy, seconds) in enumerate(points):
        store.start_trial("study", number, {})
        result = {"epoch": 1, "objective": accuracy, "accuracy": accuracy, "train_seconds": seconds}
        store.record_epoch("study", number, result)
        state = TrialState.EARLY_STOPPED if number == 3 else TrialState.COMPLETE
        store.finish_trial("study", number, state)
    assert [t.number for t in store.pareto_front("study")] == [0, 1]  # 2 is beaten by 1
    best = store.best_trial("study")  # within 0.05 of 0.90 accuracy, the fastest
    assert best is not None and best.number == 1 and best.learning_curve
    [(_, listed)] = store.study_page()[0]
    assert listed is not None and listed.number == 1


def test_run_times_are_summed_in_sql_as_in_python(store: Store) -> None:
    store.create_study({"name": "study"}, definition())
    t0 = datetime(2026, 11, 23, 8, 0, 0, 250_000, tzinfo=UTC)
    trials = [  # state, started, finished (None: running), minutes from t0
        (TrialState.COMPLETE, 0, 30.5),
        (TrialState.EARLY_STOPPED, 0, 12.25),
        (TrialState.FAILED, 5, 6),
        (TrialState.INTERRUPTED, 30, 36),
        (TrialState.RUNNING, 36, None),
        (TrialState.RUNNING, 40, None),
    ]
    times = []
    with Session(store.engine) as session, session.begin():
        study_id = session.scalars(select(StudyRow.id)).one()
        for number, (state, start, end) in enumerate(trials):
            started = t0 + timedelta(minutes=start)
            finished = None if end is None else t0 + timedelta(minutes=end)
            session.add(
                TrialRow(
                    study_id=study_id,
                    number=number,
                    state=state,
                    params={},
                    started_at=started,
                    finished_at=finished,
                )
            )
            times.append((state, started, finished))
    summed, expected = store.run_times("study"), RunTimes.of(times)
    assert (summed.finished, summed.running) == (expected.finished, expected.running) == (3, 2)
    for field in ("ended_s", "finished_s", "running_since_s"):
        assert getattr(summed, field) == pytest.approx(getattr(expected, field), abs=0.01)
    now = t0 + timedelta(hours=1)
    assert summed.seconds(now) == pytest.approx((30.5 + 12.25 + 1 + 6 + 24 + 20) * 60, abs=0.01)
    assert store.run_times("study") == store.run_times("study")  # the same query, the same sums
    # What `GET /v1/studies/{name}` reads in one transaction is what each reads alone.
    assert store.study_detail("study") == (store.get_study("study"), None, summed)


def test_deleting_a_study_deletes_its_trials(store: Store) -> None:
    store.create_study({}, definition())
    add_trial(store, "study", 0, TrialState.COMPLETE, 0.5)
    store.delete_study("study")
    with store.engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM hpo_trials")).scalar() == 0
        assert connection.execute(text("SELECT count(*) FROM hpo_trial_epochs")).scalar() == 0


def test_our_tables_live_beside_optunas(database_url: str) -> None:
    url = normalize_database_url(database_url)
    optuna.create_study(study_name="theirs", storage=url)  # Optuna's tables first
    engine = make_engine(url)
    ensure_schema(engine)

    tables = set(inspect(engine).get_table_names())
    assert {"studies", "trials", "alembic_version"} <= tables  # Optuna's
    assert {"hpo_studies", "hpo_trials", "hpo_trial_epochs", VERSION_TABLE} <= tables
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={"include_name": include_name, "version_table": VERSION_TABLE},
        )
        assert compare_metadata(context, Base.metadata) == []  # migration == models
    assert optuna.load_study(study_name="theirs", storage=url).study_name == "theirs"


def test_a_database_on_another_schema_revision_is_refused(database_url: str) -> None:
    engine = make_engine(normalize_database_url(database_url))
    ensure_schema(engine)
    with engine.begin() as connection:
        connection.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '0000'"))
    with pytest.raises(SchemaOutdatedError, match="hpo db upgrade"):
        ensure_schema(engine)
    assert head_revision(engine) != "0000"


def test_concurrent_writes_on_sqlite_queue_in_the_process_not_in_sqlite(sqlite_url: str) -> None:
    """Two stores on one SQLite file, 24 threads writing at once, and SQLite told not to wait at
    all for its lock: every write still lands, as the process queues its writers itself."""
    stores = [Store.open(sqlite_url) for _ in range(2)]
    for store in stores:
        event.listen(store.engine, "connect", _no_busy_wait)  # after make_engine's pragmas
        store.engine.dispose()

    def write(index: int) -> None:
        store = stores[index % 2]
        store.create_study({"name": f"s{index}"}, definition(f"s{index}"))
        store.start_trial(f"s{index}", 0, {"learning_rate": 1e-4})
        store.record_epoch(f"s{index}", 0, {"epoch": 1, "objective": 0.5, "accuracy": 0.5})

    with ThreadPoolExecutor(24) as pool:
        list(pool.map(write, range(48)))  # raises "database is locked" if a write met another
    assert len(stores[0].study_names()) == 48


def _no_busy_wait(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA busy_timeout=0")
    cursor.close()


def test_every_write_to_a_study_or_its_trials_moves_its_version_and_reads_do_not(
    store: Store,
) -> None:
    """The API keeps its answers about a study under its version: a write that left it
    unchanged would leave a stale answer served."""
    store.create_study({"name": "study"}, definition())
    store.create_study({"name": "other"}, definition("other"))
    other = store.study_version("other")
    environment = RunEnvironment(
        model_type="bert",
        dataset_fingerprint="sha256:0",
        torch_version="2",
        transformers_version="5",
        optuna_version="5",
        ray_version="2",
    )
    writes = {
        "set_status": lambda: store.set_status("study", StudyStatus.RUNNING),
        "record_run_environment": lambda: store.record_run_environment("study", environment),
        "start_trial": lambda: store.start_trial("study", 0, {"learning_rate": 1e-4}),
        "record_epoch": lambda: store.record_epoch(
            "study", 0, {"epoch": 1, "objective": 0.5, "accuracy": 0.5}
        ),
        "record_schedule": lambda: store.record_schedule(
            "study", 0, [{"epoch": 1, "learning_rate": 1e-4}]
        ),
        "finish_trial": lambda: store.finish_trial("study", 0, TrialState.COMPLETE),
        "start another": lambda: store.start_trial("study", 1, {"learning_rate": 2e-4}),
        "copy_epochs": lambda: store.copy_epochs("study", 0, 1),
        "interrupt_running_trials": lambda: store.interrupt_running_trials("study", "it died"),
    }
    version = store.study_version("study")
    for write, change in writes.items():
        change()
        moved = store.study_version("study")
        for read in (store.study_detail, store.trial_page, store.trials):
            read("study")
        assert store.study_version("study") == moved  # reads change nothing
        assert moved.id == version.id and moved.revision > version.revision, write
        version = moved
    assert not store.set_status("study", StudyStatus.QUEUED, only_from={StudyStatus.FAILED})
    assert store.study_version("study") == version  # nothing written
    assert store.study_version("other") == other
    store.delete_study("study")
    with pytest.raises(NotFoundError):
        store.study_version("study")
    store.create_study({"name": "study"}, definition())
    assert store.study_version("study").id != version.id  # the same name, another study


def test_reads_go_on_after_the_database_server_drops_the_connections(store: Store) -> None:
    """As after a PostgreSQL restart: the pooled connections are dead, the next read is not."""
    store.create_study({"name": "study"}, definition())
    with ThreadPoolExecutor(4) as pool:  # several connections in the pool
        list(pool.map(lambda _: store.study_version("study"), range(8)))
    if store.engine.dialect.name == "postgresql":
        with store.engine.connect() as connection:
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
    else:  # a SQLite file has no server: its connections stay usable
        assert store.engine.pool.checkedin() > 0
    versions = {store.study_version("study") for _ in range(8)}
    assert len(versions) == 1 and store.get_study("study").name == "study"
