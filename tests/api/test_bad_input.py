"""What a careless user or an attacker sends a real `hpo serve`, on SQLite and PostgreSQL: every
bad request is a 4xx naming what is wrong and loses nothing already stored; a database outage is
a 503 that the service recovers from; random requests generated from the OpenAPI document never
get a 5xx."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from databases import BACKENDS, POSTGRES_URL, fresh_database
from servers import Service
from sqlalchemy import create_engine, make_url, text

from hpo_service.core.definition import ModelSpec
from hpo_service.core.errors import DefinitionError
from hpo_service.core.model_source import check_model
from hpo_service.core.presets import merge, resolve_definition
from hpo_service.core.records import Scope, StudyStatus
from hpo_service.db.store import Store
from hpo_service.service.tokens import create_token

SEARCH = {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-4, "log": True}}


def definition(files: tuple[Path, Path], **overrides: Any) -> dict[str, Any]:
    """A valid definition (the shipped model on the example data) with ``overrides`` on top."""
    document = {
        "name": "probe",
        "dataset": {"train": str(files[0]), "eval": str(files[1])},
        "parameters": SEARCH,
        "limits": {"trials": 2},
    }
    return merge(document, overrides)


def store_finished_study(url: str, files: tuple[Path, Path], name: str) -> None:
    """A completed study written straight to the database, so the scheduler leaves it alone."""
    document = definition(files, name=name)
    Store.open(url).create_study(document, resolve_definition(document), StudyStatus.COMPLETED)


@pytest.fixture(scope="module", params=BACKENDS)
def service(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    sentiment_files: tuple[Path, Path],
) -> Iterator[Service]:
    folder = tmp_path_factory.mktemp(f"bad-input-{request.param}")
    with fresh_database(request.param, folder) as url:
        store_finished_study(url, sentiment_files, "kept")
        with Service(url, folder / "work", [sentiment_files[0].parent]) as running:
            yield running


def stored(service: Service) -> list[dict[str, Any]]:
    """Every study the service holds, in full."""
    names = [s["name"] for s in service.client.get("/v1/studies?limit=200").json()["items"]]
    return [service.client.get(f"/v1/studies/{name}").json() for name in names]


def deep_json(levels: int) -> str:
    return '{"a": ' * levels + "1" + "}" * levels


BILLION_LAUGHS = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
)


def json_case(files: tuple[Path, Path], field: str, **overrides: Any) -> tuple[str, str, str]:
    # json.dumps writes NaN and Infinity, which json.loads (and so the service) reads.
    return json.dumps(definition(files, **overrides)), "application/json", field


def yaml_case(files: tuple[Path, Path], field: str, **overrides: Any) -> tuple[str, str, str]:
    return yaml.safe_dump(definition(files, **overrides)), "application/yaml", field


def bad_submissions(files: tuple[Path, Path]) -> dict[str, tuple[str, str, str]]:
    """Case id -> (body, content type, the field the answer must name)."""
    nan, inf = float("nan"), float("inf")
    return {
        "json-nested-60000": (deep_json(60_000), "application/json", "body"),
        "json-list-nested-60000": (
            '{"name": ' + "[" * 60_000 + "]" * 60_000 + "}",
            "application/json",
            "body",
        ),
        "yaml-nested-60000": ("name: " + "[" * 60_000 + "]" * 60_000, "application/yaml", "body"),
        "json-nested-40": (deep_json(40), "application/json", "body"),
        "yaml-alias-into-itself": ("name: &a [*a]\n", "application/yaml", "body"),
        "yaml-billion-laughs": (BILLION_LAUGHS, "application/yaml", "body"),
        "json-5000-digit-number": ('{"name": ' + "9" * 5000 + "}", "application/json", "body"),
        "yaml-impossible-date": ("name: 2024-13-45\n", "application/yaml", "body"),
        "nul-in-dataset-train": json_case(files, "dataset.train", dataset={"train": "a\x00.csv"}),
        "nul-in-dataset-train-yaml": yaml_case(files, "dataset.train", dataset={"train": "a\x00"}),
        "nul-in-model-name": json_case(files, "model.name", model={"name": "bert\x00"}),
        "nul-in-label-field": json_case(
            files, "dataset.label_field", dataset={"label_field": "\x00"}
        ),
        "nul-in-a-choice": json_case(
            files,
            "parameters.lr_scheduler",
            parameters={"lr_scheduler": {"type": "categorical", "choices": ["linear", "a\x00"]}},
        ),
        "trials-1e30": json_case(files, "limits.trials", limits={"trials": 1e30}),
        "trials-1e30-yaml": yaml_case(files, "limits.trials", limits={"trials": 1e30}),
        "trials-2**63": json_case(files, "limits.trials", limits={"trials": 2**63}),
        "seed-below-int64": json_case(
            files, "sampler.seed", sampler={"type": "tpe", "seed": -(2**63) - 1}
        ),
        "batch-size-2**64": json_case(
            files, "parameters.batch_size", parameters={"batch_size": 2**64}
        ),
        "nan-learning-rate": json_case(
            files,
            "parameters.learning_rate",
            parameters={"learning_rate": nan, "seed": {"type": "int", "low": 1, "high": 3}},
        ),
        "nan-learning-rate-yaml": yaml_case(
            files,
            "parameters.learning_rate",
            parameters={"learning_rate": nan, "seed": {"type": "int", "low": 1, "high": 3}},
        ),
        "infinite-range-high": json_case(
            files,
            "parameters.weight_decay",
            parameters={"weight_decay": {"type": "float", "low": 0.0, "high": inf}},
        ),
        "infinite-time-budget": json_case(
            files, "limits.time_budget_s", limits={"time_budget_s": inf}
        ),
        "infinite-time-budget-yaml": yaml_case(
            files, "limits.time_budget_s", limits={"time_budget_s": inf}
        ),
        "cpus-1e400": (  # json.loads reads 1e400 as infinity
            json_case(files, "", resources_per_trial={"cpus": 0.125})[0].replace("0.125", "1e400"),
            "application/json",
            "resources_per_trial.cpus",
        ),
        "grid-of-2**62-points": json_case(
            files,
            "parameters.batch_size",
            sampler={"type": "grid"},
            limits={"trials": None},
            parameters={"batch_size": {"type": "int", "low": 1, "high": 2**62}},
        ),
        "grid-step-1e-300": json_case(
            files,
            "parameters.learning_rate",
            sampler={"type": "grid"},
            limits={"trials": None},
            parameters={"learning_rate": {"type": "float", "low": 0, "high": 1, "step": 1e-300}},
        ),
        "json-repeated-key": (  # json.loads would keep the last "name" without a word
            '{"name": "first", ' + json_case(files, "")[0][1:],
            "application/json",
            "body",
        ),
        "yaml-repeated-key": (
            yaml_case(files, "")[0] + "name: again\n",
            "application/yaml",
            "body",
        ),
        # "\ud800" in JSON is a lone surrogate: no UTF-8 text holds it, so nothing could store it.
        "surrogate-in-description": json_case(files, "description", description="\ud800"),
        "surrogate-in-label-field": json_case(
            files, "dataset.label_field", dataset={"label_field": "\ud800"}
        ),
        "surrogate-in-train-path": json_case(
            files, "dataset.train", dataset={"train": "tr\ud800.csv"}
        ),
        "surrogate-key-in-enqueue": json_case(files, "enqueue.0", enqueue=[{"\ud800": 1}]),
        "yaml-binary-description": (
            yaml_case(files, "")[0] + "description: !!binary aGVsbG8=\n",
            "application/yaml",
            "description",
        ),
        "trials-2**31": json_case(files, "limits.trials", limits={"trials": 2**31}),
        "sampler-seed-2**63-1": json_case(
            files, "sampler.seed", sampler={"type": "tpe", "seed": 2**63 - 1}
        ),
        "fixed-seed-2**40": json_case(files, "parameters.seed", parameters={"seed": 2**40}),
        "cpus-1e-300": json_case(
            files, "resources_per_trial.cpus", resources_per_trial={"cpus": 1e-300}
        ),
        "asha-reduction-factor-near-1": json_case(
            files,
            "early_stopping.reduction_factor",
            early_stopping={"type": "asha", "reduction_factor": 1.0000000001},
        ),
        "objectives-as-a-mapping": json_case(
            files, "objectives", objectives={"metric": "accuracy"}
        ),
        "train-path-name-300-long": json_case(
            files, "dataset.train", dataset={"train": "a" * 300 + ".csv"}
        ),
        "model-path-name-300-long": json_case(
            files, "model.name", model={"name": "/tmp/" + "a" * 300}
        ),
        "train-of-unknown-user": json_case(
            files, "dataset.train", dataset={"train": "~no-such-user-here/train.csv"}
        ),
        "model-of-unknown-user": json_case(
            files, "model.name", model={"name": "~no-such-user-here/model"}
        ),
        "model-folder-missing": json_case(files, "model.name", model={"name": "/no/such/model"}),
        "model-not-cached-offline": json_case(
            files, "model.name", model={"name": "no-such-org/no-such-model"}
        ),
        "model-revision-not-cached": json_case(
            files, "model.name", model={"revision": "no-such-revision"}
        ),
    }


CASES = list(bad_submissions((Path("train.csv"), Path("dev.csv"))))


@pytest.mark.parametrize("case", CASES)
def test_bad_submissions_are_422_naming_the_field_and_lose_nothing(
    service: Service, sentiment_files: tuple[Path, Path], case: str
) -> None:
    body, content_type, field = bad_submissions(sentiment_files)[case]
    before = stored(service)
    answer = service.client.post(
        "/v1/studies", content=body, headers={"content-type": content_type}
    )
    assert answer.status_code == 422, answer.text
    fields = [".".join(map(str, item["loc"])) for item in answer.json()["detail"]]
    assert any(f == field or f.startswith(f"{field}.") for f in fields), answer.json()
    assert stored(service) == before
    assert [s["name"] for s in before] == ["kept"]


def test_a_model_folder_without_config_is_422(
    service: Service, sentiment_files: tuple[Path, Path], tmp_path: Path
) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a model")
    answer = service.client.post(
        "/v1/studies", json=definition(sentiment_files, model={"name": str(tmp_path)})
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["loc"] == ["model", "name"]
    assert "config.json" in answer.json()["detail"][0]["msg"]


@pytest.mark.parametrize(
    ("files", "shown"),
    [
        ({"config.json": "{not json", "model.safetensors": ""}, "cannot be read as JSON"),
        ({"config.json": "[1, 2]", "model.safetensors": ""}, "names no `model_type`"),
        ({"config.json": '{"hidden_size": 8}', "model.safetensors": ""}, "no `model_type`"),
        ({"config.json": '{"model_type": "bert"}'}, "holds no weights"),
        ({"config.json": '{"model_type": "bert"}', "tokenizer.json": "{}"}, "model.safetensors"),
    ],
    ids=["config-not-json", "config-a-list", "config-without-type", "no-weights", "tokenizer-only"],
)
def test_a_model_folder_that_cannot_load_is_refused_saying_why(
    files: dict[str, str], shown: str, tmp_path: Path
) -> None:
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    with pytest.raises(DefinitionError, match=re.escape(shown)) as caught:
        check_model(ModelSpec(name=str(tmp_path)))
    assert caught.value.field == "model.name"


def test_the_shipped_model_and_a_local_folder_pass_the_model_check(
    tiny_models: dict[str, Path],
) -> None:
    check_model(ModelSpec())
    check_model(ModelSpec(name=str(tiny_models["bert"])))
    with pytest.raises(DefinitionError, match="no-such-org/no-such-model"):
        check_model(ModelSpec(name="no-such-org/no-such-model"))


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/studies/%00"),
        ("GET", "/v1/studies/a%00b/trials"),
        ("GET", "/v1/studies/kept%00/trials/0"),
        ("GET", "/v1/studies/%00/best"),
        ("POST", "/v1/studies/%00/cancel"),
        ("DELETE", "/v1/studies/kept%00"),
        ("GET", "/v1/studies/..%2F..%2Fetc"),
        ("GET", "/v1/studies/kept/trials/99999999999999999999999"),
        ("GET", "/v1/studies/kept/trials/-1"),
        ("GET", "/v1/studies?offset=99999999999999999999999"),
    ],
)
def test_bad_paths_are_404_or_422(service: Service, method: str, path: str) -> None:
    before = stored(service)
    answer = service.client.request(method, path)
    assert answer.status_code in (200, 404, 422), answer.text
    assert stored(service) == before


def test_an_unknown_preset_of_any_length_is_a_clear_answer(
    service: Service, sentiment_files: tuple[Path, Path]
) -> None:
    for name in ("no-such-preset", "a" * 300):
        answer = service.client.post("/v1/studies", json=definition(sentiment_files, preset=name))
        assert answer.status_code in (404, 422), answer.text
        assert "unknown preset" in answer.text


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("PUT", "/v1/studies/kept", 405, "DELETE, GET"),
        ("DELETE", "/v1/studies", 405, "GET, POST"),
        ("GET", "/v1/studies/kept/cancel", 405, "POST"),
        ("GET", "/v1/no-such-endpoint", 404, None),
        ("GET", "/v1", 404, None),
        ("GET", "/v1/", 404, None),
        ("POST", "/v1/studies/kept/trials/0/more", 404, None),
    ],
)
def test_an_api_path_no_endpoint_serves_answers_json(
    service: Service, method: str, path: str, status: int, allow: str | None
) -> None:
    """Not the dashboard's HTML page that owns the other paths: the API's JSON errors."""
    answer = service.client.request(method, path)
    assert answer.status_code == status, answer.text
    assert answer.headers.get("allow") == allow
    assert answer.json()["detail"]


def test_one_of_many_concurrent_deletes_of_a_study_deletes_it(
    service: Service, sentiment_files: tuple[Path, Path]
) -> None:
    store_finished_study(service.database_url, sentiment_files, "doomed")
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda _: service.client.delete("/v1/studies/doomed").status_code, range(8))
        )
    assert sorted(answers) == [204] + [404] * 7, answers
    assert [s["name"] for s in stored(service)] == ["kept"]


def test_a_database_outage_is_a_503_and_the_service_recovers(
    tmp_path: Path, sentiment_files: tuple[Path, Path]
) -> None:
    """The service's PostgreSQL database refuses connections for a while, as in a failover.

    Auth is on, so the token check in front of every request meets the outage first.
    """
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with fresh_database("postgresql", tmp_path) as url:
        store_finished_study(url, sentiment_files, "kept")
        secret = create_token(Store.open(url), "ci", Scope.WRITE)[1]
        name = make_url(url).database
        with Service(url, tmp_path / "work", [sentiment_files[0].parent], HPO_AUTH="on") as service:
            service.client.headers["authorization"] = f"Bearer {secret}"
            before = stored(service)
            try:
                with admin.connect() as connection:
                    connection.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
                    connection.execute(
                        text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = :name"
                        ),
                        {"name": name},
                    )
                for method, path, body in [
                    ("GET", "/v1/studies", None),
                    ("GET", "/v1/studies/kept", None),
                    ("POST", "/v1/studies", definition(sentiment_files, name="during")),
                ]:
                    answer = service.client.request(method, path, json=body)
                    assert answer.status_code == 503, (path, answer.text)
                    detail = answer.json()["detail"]
                    assert detail.startswith("the database failed") and "\n" not in detail
                    assert name in detail  # the driver's reason: this database refuses
                # The login page is open: the app's own error handler answers there.
                login = service.client.post("/login", data={"token": secret})
                assert login.status_code == 503, login.text
                assert service.client.get("/readyz").status_code == 503
            finally:
                with admin.connect() as connection:
                    connection.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
            assert stored(service) == before
            assert service.client.get("/readyz").status_code == 200
    admin.dispose()


@pytest.mark.slow
def test_generated_requests_never_get_a_server_error(service: Service) -> None:
    """Schemathesis draws requests for every operation of /openapi.json, both ones that fit the
    document and ones that break it (a few hundred in all)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{service.url}/openapi.json")
    requests = st.one_of(
        schema.as_strategy(generation_mode=GenerationMode.POSITIVE),
        schema.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )
    before = stored(service)

    @given(case=requests)
    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    def no_server_error(case: Any) -> None:
        answer = case.call()
        assert answer.status_code < 500, f"{case.method} {case.formatted_path}: {answer.text}"

    no_server_error()
    assert [s["name"] for s in stored(service)] == [s["name"] for s in before]
