"""The Optuna dashboard that `hpo serve` mounts at the root, seen over plain HTTP and in a real
headless Chromium, while a tiny study submitted over REST runs and after it completes.

Screenshots and the rendered DOM of each page go to ``$HPO_TEST_ARTIFACTS`` (default
``test-artifacts/`` in the checkout). Chromium must be installed (``make browser``); without it
the browser test fails rather than skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from servers import BIN, Service, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("HPO_TEST_ARTIFACTS", ROOT / "test-artifacts"))
STUDY = "dashboard-tiny-bert"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these Chromium keeps calling home, which a closed network refuses many times over.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1280,900",
    # Virtual time runs until the page is idle (bundle loaded, /api fetched) or 10 s pass.
    "--virtual-time-budget=10000",
]
MIN_PNG_BYTES = 8 * 1024  # a blank 1280x900 page is about 5 KB; rendered pages are 20 KB and up


@dataclass
class Running:
    """A served study: the server, the study's Optuna id, and its status when first listed."""

    service: Service
    optuna_id: int
    status_when_listed: str


@dataclass
class Page:
    dom: str
    screenshot: Path


def tiny_bert_study(model: Path) -> dict:
    """Two grid trials of two epochs on 64 sentences: a few seconds of training."""
    return {
        "name": STUDY,
        "model": {"name": str(model)},
        "dataset": {
            "train": "train.csv",  # relative to the service's first data root
            "eval": "dev.csv",
            "max_train_samples": 64,
            "max_eval_samples": 32,
            "max_seq_length": 32,
        },
        "parameters": {
            "learning_rate": {"type": "categorical", "choices": [1e-3, 5e-4]},
            "batch_size": 16,
            "num_train_epochs": 2,
        },
        "sampler": {"type": "grid"},
        "limits": {"trials": 2},
    }


@pytest.fixture(scope="module")
def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    pytest.fail(
        "chromium is not installed, so the dashboard cannot be checked in a browser: run "
        "`make browser` (apt-get install chromium) or `make test`, which does it first"
    )


@pytest.fixture(scope="module")
def running_study(
    tiny_models: dict[str, Path],
    sentiment_files: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Running]:
    """`hpo serve` on SQLite with the study submitted over REST, returned once the dashboard's
    API lists it (the study is running then, its trials still training)."""
    tmp = tmp_path_factory.mktemp("dashboard")
    data_root = sentiment_files[0].parent
    with Service(
        f"sqlite:///{tmp / 'hpo.db'}", tmp / "work", [data_root], HPO_RAY_NUM_CPUS="2"
    ) as service:
        answer = service.client.post("/v1/studies", json=tiny_bert_study(tiny_models["bert"]))
        assert answer.status_code == 201, answer.text
        assert answer.json()["status"] == "queued"
        optuna_id, status = _wait_until_listed(service, STUDY)
        yield Running(service, optuna_id, status)


def _wait_until_listed(service: Service, name: str, timeout: float = 120) -> tuple[int, str]:
    """Poll the dashboard's /api/studies until ``name`` shows; its Optuna id and our status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        summaries = service.client.get("/api/studies").json()["study_summaries"]
        ids = [s["study_id"] for s in summaries if s["study_name"] == name]
        if ids:
            return ids[0], service.client.get(f"/v1/studies/{name}").json()["status"]
        status = service.client.get(f"/v1/studies/{name}").json()["status"]
        assert status in {"queued", "running"}, f"study {name} is {status} before Optuna has it"
        time.sleep(0.5)
    raise TimeoutError(f"{name} not in /api/studies after {timeout} s: {_log_tail(service)}")


def _completed(service: Service) -> dict:
    study = service.wait_for(STUDY, {"completed", "failed", "cancelled"}, timeout=180)
    assert study["status"] == "completed", f"{study}\n{_log_tail(service)}"
    return study


def _log_tail(service: Service) -> str:
    return service.log_path.read_text(errors="replace")[-3000:]


def render(chromium: str, url: str, name: str) -> Page:
    """Load ``url`` in headless Chromium; its rendered DOM, and a screenshot saved as an
    artifact named ``name``.png (the DOM beside it as ``name``.html)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / f"{name}.png"
    screenshot.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="hpo-chromium-") as profile:
        result = subprocess.run(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--screenshot={screenshot}",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=90,
        )
    assert result.returncode == 0, f"chromium exited {result.returncode}: {result.stderr[-3000:]}"
    (ARTIFACTS / f"{name}.html").write_text(result.stdout)
    assert screenshot.is_file(), f"chromium wrote no screenshot of {url}: {result.stderr[-3000:]}"
    size = screenshot.stat().st_size
    assert size > MIN_PNG_BYTES, f"{screenshot} is only {size} bytes: a blank page?"
    return Page(result.stdout, screenshot)


def test_dashboard_in_a_browser_shows_the_study_while_running_and_when_done(
    chromium: str, running_study: Running
) -> None:
    service, optuna_id = running_study.service, running_study.optuna_id
    study_page = f"{service.url}/dashboard/studies/{optuna_id}"
    title = f"{STUDY} (id={optuna_id})"  # the study page's header

    # While it runs: the home page lists it, its page opens.
    assert running_study.status_when_listed == "running"
    home = render(chromium, f"{service.url}/dashboard", "dashboard-home-running")
    assert STUDY in home.dom, "the dashboard's home page does not list the running study"
    study = render(chromium, study_page, "dashboard-study-running")
    assert title in study.dom

    # Done: the home page lists it; its page shows the history, importance and best trial.
    _completed(service)
    home = render(chromium, f"{service.url}/dashboard", "dashboard-home")
    assert STUDY in home.dom, "the dashboard's home page does not list the study"
    assert "Optuna Dashboard" in home.dom
    study = render(chromium, study_page, "dashboard-study")
    assert title in study.dom, "the study's page does not show its name"
    for text in ("History", "Hyperparameter Importance", "Best Trial", "learning_rate"):
        assert text in study.dom, f"the study's page has no {text!r}"


def test_dashboard_answers_over_http_beside_the_api(running_study: Running) -> None:
    service, client = running_study.service, running_study.service.client
    _completed(service)

    page = client.get("/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "/static/bundle.js" in page.text
    # optuna-dashboard reads Accept-Encoding unconditionally (500 without it); browsers send it.
    bundle = client.get("/static/bundle.js", headers={"Accept-Encoding": "gzip"})
    assert bundle.status_code == 200
    assert len(bundle.content) > 100_000

    studies = client.get("/api/studies")
    assert studies.status_code == 200
    [summary] = [s for s in studies.json()["study_summaries"] if s["study_name"] == STUDY]
    assert summary["study_id"] == running_study.optuna_id
    assert summary["directions"] == ["maximize"]
    detail = client.get(f"/api/studies/{running_study.optuna_id}")
    assert detail.status_code == 200
    trials = detail.json()["trials"]
    assert [t["state"] for t in trials] == ["Complete", "Complete"]
    assert all(len(t["intermediate_values"]) == 2 for t in trials)

    # The service's own routes still answer beside the mount, and unknown /v1 paths stay ours.
    assert client.get("/healthz").json() == {"status": "ok"}
    ours = client.get(f"/v1/studies/{STUDY}")
    assert ours.status_code == 200 and ours.json()["status"] == "completed"
    listed = client.get("/v1/studies").json()
    assert [item["name"] for item in listed["items"]] == [STUDY]
    assert client.get("/v1/studies/no-such-study").status_code == 404
    assert client.get("/docs").status_code == 200


def test_optuna_dashboard_standalone_reads_the_same_database(running_study: Running) -> None:

    service = running_study.service
    _completed(service)
    port = free_port()
    standalone = subprocess.Popen(
        [
            BIN / "optuna-dashboard",
            service.database_url,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/api/studies", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and standalone.poll() is None
                time.sleep(0.3)
        names = [s["study_name"] for s in answer.json()["study_summaries"]]
        assert names == [STUDY]
    finally:
        standalone.terminate()
        standalone.wait(30)
