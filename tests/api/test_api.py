"""The REST API of a real `hpo serve` process, on SQLite and PostgreSQL: studies submitted,
scheduled, run and read back; bad input refused without a 500 and without losing data."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import optuna
import pytest
import yaml
from databases import BACKENDS, fresh_database
from helpers import tiny_study
from servers import Service

from hpo_service.core.settings import normalize_database_url

pytestmark = pytest.mark.slow  # end to end: a real service, Ray or CLI process

FINISHED = {"completed", "failed", "cancelled"}


@pytest.fixture(scope="module", params=BACKENDS)
def service(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    sentiment_files: tuple[Path, Path],
) -> Iterator[Service]:
    folder = tmp_path_factory.mktemp(f"api-{request.param}")
    with (
        fresh_database(request.param, folder) as url,
        Service(url, folder / "work", [sentiment_files[0].parent]) as running,
    ):
        yield running


@pytest.fixture(scope="module")
def finished_study(
    service: Service, tiny_models: dict[str, Path], sentiment_files: tuple[Path, Path]
) -> dict[str, Any]:
    """A two-trial study submitted as YAML and run to its end by the service."""
    document = tiny_study(
        "served",
        tiny_models["bert"],
        sentiment_files,
        parameters={
            "learning_rate": {"type": "categorical", "choices": [1e-3, 3e-3]},
            "num_train_epochs": 2,
        },
        sampler={"type": "grid"},
        limits={"trials": None},
    )
    answer = service.client.post(
        "/v1/studies",
        content=yaml.safe_dump(document),
        headers={"content-type": "application/yaml"},
    )
    assert answer.status_code == 201, answer.text
    assert answer.headers["location"] == "/v1/studies/served"
    assert answer.json()["status"] == "queued"
    return service.wait_for("served", FINISHED)


def test_a_submitted_study_runs_to_its_end(service: Service, finished_study: dict) -> None:
    assert finished_study["status"] == "completed", finished_study["error"]
    assert finished_study["progress"] == {"finished": 2, "total": 2, "fraction": 1.0}
    assert finished_study["trial_counts"]["complete"] == 2
    assert finished_study["best"]["params"]["learning_rate"] in (1e-3, 3e-3)
    assert finished_study["started_at"] <= finished_study["finished_at"]
    assert finished_study["definition"]["name"] == "served"

    trials = service.client.get("/v1/studies/served/trials").json()["items"]
    assert sorted(t["number"] for t in trials) == [0, 1]
    assert all(t["state"] == "complete" and t["epochs"] == 2 for t in trials)
    assert all(t["duration_s"] > 0 and t["metrics"]["eval_loss"] > 0 for t in trials)
    budget = finished_study["budget"]  # two one-CPU trials: their run times in CPU-hours
    trials_s = sum(t["duration_s"] for t in trials)
    assert budget["spent"]["cpu_hours"] == pytest.approx(trials_s / 3600, rel=1e-3)
    assert budget["spent"]["gpu_hours"] == 0
    assert budget["limits"] == {"cpu_hours": None, "gpu_hours": None}
    assert budget["remaining_trials"] == 0 and budget["at_end"] == budget["spent"]
    curve = service.client.get("/v1/studies/served/trials/1").json()["learning_curve"]
    assert [point["epoch"] for point in curve] == [1, 2]


def test_best_configuration_as_json_and_yaml(service: Service, finished_study: dict) -> None:
    as_json = service.client.get("/v1/studies/served/best").json()
    as_yaml = yaml.safe_load(service.client.get("/v1/studies/served/best?format=yaml").text)
    assert as_json == as_yaml
    assert as_json["trial"] == finished_study["best"]["trial"]
    assert as_json["objective"]["value"] == finished_study["best"]["objective"]


def test_optuna_holds_the_same_trials(service: Service, finished_study: dict) -> None:
    url = normalize_database_url(service.database_url)
    trials = optuna.load_study(study_name="served", storage=url).trials
    assert len(trials) == 2
    assert all(len(t.intermediate_values) == 2 for t in trials)


def test_list_filters_and_pages(service: Service, finished_study: dict) -> None:
    page = service.client.get("/v1/studies", params={"status": "completed", "limit": 1}).json()
    assert page["total"] >= 1 and len(page["items"]) == 1
    assert page["items"][0]["status"] == "completed"
    assert service.client.get("/v1/studies", params={"status": "bogus"}).status_code == 422
    assert service.client.get("/v1/studies", params={"limit": 0}).status_code == 422


def test_probes_presets_and_openapi(service: Service) -> None:
    assert service.client.get("/healthz").json() == {"status": "ok"}
    ready = service.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["database"] == "ok"
    names = {p["name"] for p in service.client.get("/v1/presets").json()}
    assert {"default", "bert-paper", "roberta-paper", "albert-paper"} <= names
    spec = service.client.get("/openapi.json").json()
    assert "/v1/studies" in spec["paths"]
    body = spec["paths"]["/v1/studies"]["post"]["requestBody"]["content"]
    assert {"application/json", "application/yaml"} <= set(body)


@pytest.mark.parametrize(
    ("body", "content_type", "field"),
    [
        ("name: [unclosed", "application/yaml", "body"),
        ('{"name": ', "application/json", "body"),
        ("[1, 2]", "application/json", "body"),
        ("- just\n- a list", "application/yaml", "body"),
        ('{"name": "x", "dataset": {"train": "t.csv"}, "bogus": 1}', "application/json", "bogus"),
        (
            '{"name": "x", "dataset": {"train": "t.csv"}, "limits": {"trials": "many"}}',
            "application/json",
            "limits.trials",
        ),
        ('{"name": "../etc", "dataset": {"train": "t.csv"}}', "application/json", "name"),
        ('{"name": "a/b", "dataset": {"train": "t.csv"}}', "application/json", "name"),
        (
            '{"name": "x", "dataset": {"train": "/etc/passwd"}, '
            '"parameters": {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-4}}}',
            "application/json",
            "dataset.train",
        ),
        (
            '{"name": "x", "dataset": {"train": "nope.csv"}, '
            '"parameters": {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-4}}}',
            "application/json",
            "dataset.train",
        ),
        (
            '{"name": "x", "dataset": {"train": "nope.csv"}, "warm_start": {"study": "nowhere"}, '
            '"parameters": {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-4}}}',
            "application/json",
            "warm_start.study",
        ),
        (
            '{"name": "x", "dataset": {"train": "nope.csv"}, '
            '"objectives": [{"metric": "accuracy"}, {"metric": "speed"}]}',
            "application/json",
            "objectives.1.metric",
        ),
    ],
)
def test_bad_submissions_are_422_naming_the_field(
    service: Service, body: str, content_type: str, field: str
) -> None:
    before = service.client.get("/v1/studies").json()["total"]
    answer = service.client.post(
        "/v1/studies", content=body, headers={"content-type": content_type}
    )
    assert answer.status_code == 422, answer.text
    fields = [".".join(map(str, item["loc"])) for item in answer.json()["detail"]]
    assert field in fields, answer.json()
    assert service.client.get("/v1/studies").json()["total"] == before


def test_an_oversized_body_is_413(service: Service) -> None:
    answer = service.client.post(
        "/v1/studies",
        content=json.dumps({"name": "big", "description": "x" * 2_000_000}),
        headers={"content-type": "application/json"},
    )
    assert answer.status_code == 413
    assert "limit" in answer.json()["detail"]


def test_unknown_studies_are_404(service: Service) -> None:
    for method, path in [
        ("GET", "/v1/studies/nope"),
        ("GET", "/v1/studies/nope/trials"),
        ("GET", "/v1/studies/nope/trials/0"),
        ("GET", "/v1/studies/nope/best"),
        ("POST", "/v1/studies/nope/cancel"),
        ("DELETE", "/v1/studies/nope"),
    ]:
        answer = service.client.request(method, path)
        assert answer.status_code == 404, (method, path, answer.text)
        assert "nope" in answer.json()["detail"]


def test_finished_studies_cannot_be_cancelled_and_keep_their_data(
    service: Service, finished_study: dict
) -> None:
    answer = service.client.post("/v1/studies/served/cancel")
    assert answer.status_code == 409
    assert "completed" in answer.json()["detail"]
    resubmitted = service.client.post("/v1/studies", json=finished_study["definition"])
    assert resubmitted.status_code == 409
    after = service.client.get("/v1/studies/served").json()
    assert (
        after["status"] == "completed" and after["trial_counts"] == finished_study["trial_counts"]
    )


def test_concurrent_submissions_land_exactly_once(
    service: Service, tiny_models: dict[str, Path], sentiment_files: tuple[Path, Path]
) -> None:
    def submit(name: str) -> int:
        document = tiny_study(name, tiny_models["bert"], sentiment_files, limits={"trials": 1})
        with httpx.Client(base_url=service.url, timeout=120) as client:
            return client.post("/v1/studies", json=document).status_code

    distinct = [f"burst-{i}" for i in range(50)]
    with ThreadPoolExecutor(max_workers=25) as pool:
        codes = list(pool.map(submit, distinct))
        same = list(pool.map(submit, ["contested"] * 10))
    try:
        assert codes == [201] * 50
        assert sorted(same) == [201] + [409] * 9
        names = [s["name"] for s in service.client.get("/v1/studies?limit=200").json()["items"]]
        assert sorted(n for n in names if n.startswith("burst-")) == sorted(distinct)
        assert names.count("contested") == 1
    finally:  # leave the scheduler free for the other tests
        for name in [*distinct, "contested"]:
            service.client.post(f"/v1/studies/{name}/cancel")


def test_cancel_stops_a_running_study_then_delete_removes_it(
    service: Service, tiny_models: dict[str, Path], sentiment_files: tuple[Path, Path]
) -> None:
    document = tiny_study(
        "long",
        tiny_models["bert"],
        sentiment_files,
        parameters={
            "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "num_train_epochs": 3,
        },
        limits={"trials": 40},
    )
    assert service.client.post("/v1/studies", json=document).status_code == 201
    service.wait_for("long", {"running"}, timeout=300)
    assert service.client.delete("/v1/studies/long").status_code == 409  # not while running

    cancelled = service.client.post("/v1/studies/long/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    # Running trials stop and no new trial starts.
    final = _settled(service, "long")
    assert final["trial_counts"]["running"] == 0
    assert final["progress"]["finished"] < 40

    assert service.client.delete("/v1/studies/long").status_code == 204
    assert service.client.get("/v1/studies/long").status_code == 404
    url = normalize_database_url(service.database_url)
    assert "long" not in optuna.get_all_study_names(storage=url)


def _settled(service: Service, name: str, timeout: float = 120) -> dict:
    """The study once its trial counts stop changing (its driver has stopped)."""
    deadline = time.monotonic() + timeout
    previous = None
    while time.monotonic() < deadline:
        study = service.client.get(f"/v1/studies/{name}").json()
        if study == previous and study["trial_counts"]["running"] == 0:
            return study
        previous = study
        time.sleep(3)
    raise TimeoutError(f"{name} kept changing: {previous}")


def test_prometheus_metrics_count_studies_and_trials(
    service: Service, finished_study: dict
) -> None:
    text = service.client.get("/metrics").text
    samples = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert float(samples['hpo_studies{status="completed"}']) >= 1
    assert float(samples['hpo_trials{state="complete"}']) >= 2
    assert float(samples["hpo_trial_duration_seconds_count"]) >= 2
    assert "hpo_queue_length" in samples
    assert any(key.startswith("http_requests_total{") for key in samples)


def test_the_api_process_never_imports_torch_or_transformers(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from fastapi.testclient import TestClient\n"
        "from hpo_service.api.app import create_app\n"
        "from hpo_service.core.settings import Settings\n"
        f"app = create_app(Settings(database_url='sqlite:///{tmp_path}/hpo.db'), schedule=False)\n"
        "client = TestClient(app)\n"
        "client.get('/v1/studies'); client.get('/v1/presets'); client.get('/dashboard')\n"
        "heavy = {'torch', 'transformers', 'ray'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
