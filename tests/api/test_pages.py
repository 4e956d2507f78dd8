"""`GET /v1/studies`, `GET /v1/studies/{name}` and `GET /v1/studies/{name}/trials` on SQLite and
PostgreSQL: each costs the same few queries however many rows there are, and shows what reading
them one by one would."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from databases import BACKENDS, fresh_database
from fastapi.testclient import TestClient
from sqlalchemy import event

from hpo_service.api.app import create_app
from hpo_service.api.schemas import Budget, StudySummary, TrialSummary
from hpo_service.client import ServiceClient
from hpo_service.core.budget import forecast
from hpo_service.core.definition import StudyDefinition
from hpo_service.core.records import StudyStatus, TrialState
from hpo_service.core.settings import Settings
from hpo_service.db.store import Store

STATUSES = list(StudyStatus)
# Trials of each study: (state, objective); objectives tie, and a failed trial scores best.
TRIALS = [
    (TrialState.COMPLETE, 0.6),
    (TrialState.EARLY_STOPPED, 0.9),
    (TrialState.COMPLETE, 0.8),
    (TrialState.FAILED, 0.99),
    (TrialState.COMPLETE, 0.8),
    (TrialState.RUNNING, 0.95),
]


@pytest.fixture
def app(database_url: str) -> Iterator[tuple[TestClient, Store]]:
    with TestClient(create_app(Settings(database_url=database_url), schedule=False)) as client:
        yield client, client.app.state.store  # type: ignore[attr-defined]


@pytest.fixture(scope="module", params=BACKENDS)
def filled_app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, Store]]:
    """The API on 24 studies, read but never changed by its tests."""
    folder = tmp_path_factory.mktemp(f"page-{request.param}")
    with (
        fresh_database(request.param, folder) as url,
        TestClient(create_app(Settings(database_url=url), schedule=False)) as client,
    ):
        store = client.app.state.store  # type: ignore[attr-defined]
        add_studies(store, 0, 24)
        yield client, store


def add_studies(store: Store, first: int, count: int) -> None:
    """Studies ``first``..: every status, both directions, and 0 to 6 trials each."""
    for i in range(first, first + count):
        metric = "eval_loss" if i % 3 == 0 else "accuracy"
        definition = StudyDefinition.model_validate(
            {
                "name": f"study-{i:03d}",
                "dataset": {"train": "train.csv", "eval": "dev.csv"},
                "objective": {"metric": metric},
                "parameters": {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3}},
                "limits": {"trials": 6},
            }
        )
        store.create_study({"name": definition.name}, definition)
        store.set_status(definition.name, STATUSES[i % len(STATUSES)])
        for number, (state, objective) in enumerate(TRIALS[: i % (len(TRIALS) + 1)]):
            store.start_trial(definition.name, number, {"learning_rate": 1e-4 * (number + 1)})
            store.record_epoch(
                definition.name, number, {"epoch": 1, "objective": objective, metric: objective}
            )
            if state != TrialState.RUNNING:
                store.finish_trial(definition.name, number, state)


def one_by_one(store: Store, status: StudyStatus | None, offset: int, limit: int) -> dict:
    """The page as the API built it before: one study, then its best trial, at a time."""
    names = store.study_names(status)
    items = [
        StudySummary.of(store.get_study(name), store.best_trial(name)).model_dump(mode="json")
        for name in names[offset : offset + limit]
    ]
    return {"items": items, "total": len(names), "offset": offset, "limit": limit}


def queries_of(client: TestClient, store: Store, path: str) -> tuple[Any, int]:
    """The JSON answer to ``GET path`` and how many SQL statements it ran."""
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(store.engine, "before_cursor_execute", count)
    try:
        answer = client.get(path)
    finally:
        event.remove(store.engine, "before_cursor_execute", count)
    assert answer.status_code == 200, answer.text
    return answer.json(), len(statements)


def test_a_page_costs_the_same_queries_for_few_or_many_studies(
    app: tuple[TestClient, Store],
) -> None:
    client, store = app
    add_studies(store, 0, 3)
    few, few_queries = queries_of(client, store, "/v1/studies")
    add_studies(store, 3, 37)
    many, many_queries = queries_of(client, store, "/v1/studies")
    assert (len(few["items"]), len(many["items"])) == (3, 40)
    assert many_queries == few_queries <= 5
    _, filtered_queries = queries_of(client, store, "/v1/studies?status=running&limit=2")
    assert filtered_queries == few_queries


@pytest.mark.parametrize(
    ("status", "offset", "limit"),
    [(None, 0, 50), (None, 5, 7), (None, 20, 200), (StudyStatus.COMPLETED, 1, 3), (None, 99, 5)],
)
def test_a_page_shows_what_each_study_shows_alone(
    filled_app: tuple[TestClient, Store], status: StudyStatus | None, offset: int, limit: int
) -> None:
    client, store = filled_app
    query = f"offset={offset}&limit={limit}" + (f"&status={status.value}" if status else "")
    page, _ = queries_of(client, store, f"/v1/studies?{query}")
    assert page == one_by_one(store, status, offset, limit)
    assert any(item["best"] is not None for item in page["items"]) or offset >= page["total"]


def add_trials(store: Store, name: str, first: int, count: int) -> None:
    for number in range(first, first + count):
        store.start_trial(name, number, {"learning_rate": 1e-5 * (number + 1)})
        for epoch in (1, 2):
            store.record_epoch(name, number, {"epoch": epoch, "objective": number / 1000})
        store.finish_trial(name, number, TrialState.COMPLETE)


def test_trials_come_a_page_at_a_time_for_the_same_queries(app: tuple[TestClient, Store]) -> None:
    client, store = app
    add_studies(store, 0, 1)
    add_trials(store, "study-000", 0, 3)
    few, few_queries = queries_of(client, store, "/v1/studies/study-000/trials")
    add_trials(store, "study-000", 3, 247)
    first, many_queries = queries_of(client, store, "/v1/studies/study-000/trials")
    assert many_queries == few_queries <= 4
    assert (len(few["items"]), few["total"]) == (3, 3)
    assert (len(first["items"]), first["total"], first["limit"]) == (100, 250, 100)

    last, _ = queries_of(client, store, "/v1/studies/study-000/trials?offset=200&limit=100")
    assert [t["number"] for t in last["items"]] == list(range(200, 250))
    everything = [TrialSummary.of(t).model_dump(mode="json") for t in store.trials("study-000")]
    pages = [
        queries_of(client, store, f"/v1/studies/study-000/trials?offset={o}&limit=64")[0]["items"]
        for o in range(0, 250, 64)
    ]
    assert [t for page in pages for t in page] == everything

    service = ServiceClient("http://testserver")
    service._http = client  # the in-process app behind the real client's paging
    all_trials = service.all_trials("study-000", page_size=64)
    assert [t.model_dump(mode="json") for t in all_trials] == everything


def test_a_study_costs_the_same_queries_for_few_or_many_trials(
    app: tuple[TestClient, Store],
) -> None:
    client, store = app
    add_studies(store, 0, 1)  # its objective is eval_loss; trials 0..: complete, 0 the best
    add_trials(store, "study-000", 0, 3)
    few, few_queries = queries_of(client, store, "/v1/studies/study-000")
    add_trials(store, "study-000", 3, 247)
    many, many_queries = queries_of(client, store, "/v1/studies/study-000")
    assert many_queries == few_queries <= 5  # its version, then the four of its answer
    assert (few["best"]["trial"], many["best"]["trial"]) == (0, 0)
    assert many["trial_counts"]["complete"] == 250 and many["progress"]["finished"] == 250
    record = store.get_study("study-000")
    alone = StudySummary.of(record, store.best_trial("study-000")).model_dump(mode="json")
    assert {key: many[key] for key in alone} == alone
    definition = StudyDefinition.model_validate(record.resolved_definition)
    outlook = forecast(store.run_times("study-000"), definition, datetime.now(UTC))
    budget = Budget.of(outlook, definition, record.status.is_active).model_dump(mode="json")
    assert many["budget"] == budget


def test_one_trial_comes_with_its_curve(app: tuple[TestClient, Store]) -> None:
    client, store = app
    add_studies(store, 0, 1)
    add_trials(store, "study-000", 0, 3)
    trial = client.get("/v1/studies/study-000/trials/2").json()
    assert trial["number"] == 2
    assert [point["epoch"] for point in trial["learning_curve"]] == [1, 2]
    missing = client.get("/v1/studies/study-000/trials/3")
    assert missing.status_code == 404 and "no trial 3" in missing.json()["detail"]
    for bad in ("-1", str(2**63), "x"):
        answer = client.get(f"/v1/studies/study-000/trials/{bad}")
        assert answer.status_code == 422 and "number" in answer.text, answer.text
    for query in ("offset=-1", f"offset={2**63}", "limit=0", "limit=1001"):
        answer = client.get(f"/v1/studies/study-000/trials?{query}")
        assert answer.status_code == 422, answer.text
        # Every 422's shape: the parameter's location and what is wrong, not the value echoed.
        [problem] = answer.json()["detail"]
        assert set(problem) == {"loc", "msg"} and problem["loc"] == ["query", query.split("=")[0]]
    long_name = "a" * 3000
    answer = client.get(f"/v1/studies/{long_name}")
    assert answer.status_code == 422 and long_name not in answer.text


@pytest.mark.parametrize("path", ["/v1/studies/study-000", "/v1/studies/study-000/trials"])
def test_an_answer_is_kept_until_the_study_or_its_trials_change(
    app: tuple[TestClient, Store], path: str
) -> None:
    client, store = app
    add_studies(store, 0, 1)
    add_trials(store, "study-000", 0, 3)
    built, built_queries = queries_of(client, store, path)
    kept, kept_queries = queries_of(client, store, path)
    assert kept == built and kept_queries == 1 < built_queries  # its version only
    store.start_trial("study-000", 3, {"learning_rate": 1e-4})  # a trial starts running
    running, _ = queries_of(client, store, path)
    assert running != kept
    if path.endswith("/trials"):
        assert [t["state"] for t in running["items"]][-1] == "running"
        assert queries_of(client, store, path)[1] == 1  # kept again
    else:  # its spend counts the running trial's time until now: built at every read
        assert running["trial_counts"]["running"] == 1
        assert queries_of(client, store, path)[1] == built_queries
    store.finish_trial("study-000", 3, TrialState.FAILED)
    assert queries_of(client, store, path)[0] != running
    store.delete_study("study-000")
    assert client.get(path).status_code == 404
