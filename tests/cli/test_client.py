"""The `hpo` client commands against a real `hpo serve` on SQLite: submit and follow a study, read
it back, cancel and delete it; every failure is exit code 2 and one clear line."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import assert_clear_failure, tiny_study
from servers import BIN, Service, free_port
from typer.testing import CliRunner, Result

from hpo_service.cli import app
from hpo_service.core.presets import merge
from hpo_service.core.records import Scope
from hpo_service.db.store import Store
from hpo_service.service.tokens import create_token

pytestmark = pytest.mark.slow  # end to end: a real service, Ray or CLI process

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
runner = CliRunner()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    folder = tmp_path_factory.mktemp("client")
    with Service(f"sqlite:///{folder / 'hpo.db'}", folder / "work", [EXAMPLES]) as running:
        yield running


def hpo(service: Service, *args: str) -> Result:
    return runner.invoke(app, [*args, "--server", service.url])


def write_study(
    folder: Path, model: Path, files: tuple[Path, Path], name: str, **overrides: Any
) -> Path:
    """A tiny BERT study written to ``folder``, with data paths relative to that folder."""
    document = tiny_study(name, model, files, **overrides)
    train, dev = files
    document["dataset"].update(
        train=os.path.relpath(train, folder), eval=os.path.relpath(dev, folder)
    )
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture(scope="module")
def submitted(
    service: Service,
    tiny_models: dict[str, Path],
    sentiment_files: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Result:
    """`hpo submit --wait` of a two-trial study, run to its end by the service."""
    folder = tmp_path_factory.mktemp("definitions")
    return submit_and_wait(service, folder, tiny_models["bert"], sentiment_files, "cli-done")


def submit_and_wait(
    service: Service,
    folder: Path,
    model: Path,
    files: tuple[Path, Path],
    name: str,
    **overrides: Any,
) -> Result:
    """`hpo submit --wait` of a tiny grid study over two learning rates (unless overridden)."""
    study = {
        "dataset": {"max_train_samples": 64, "max_eval_samples": 32, "max_seq_length": 32},
        "parameters": {"learning_rate": {"type": "categorical", "choices": [1e-3, 3e-3]}},
        "sampler": {"type": "grid"},
        "limits": {"trials": 2},
    }
    path = write_study(folder, model, files, name, **merge(study, overrides))
    return hpo(service, "submit", str(path), "--wait")


def test_submit_wait_follows_the_study_to_completion(service: Service, submitted: Result) -> None:
    assert submitted.exit_code == 0, submitted.output
    assert "submitted cli-done: queued" in submitted.output
    assert "cli-done completed: best accuracy" in submitted.output
    study = service.client.get("/v1/studies/cli-done").json()
    assert study["status"] == "completed"
    # The relative data paths were made absolute from the definition's folder.
    assert Path(study["definition"]["dataset"]["train"]).is_absolute()


def test_studies_lists_it(service: Service, submitted: Result) -> None:
    result = hpo(service, "studies")
    assert result.exit_code == 0, result.output
    [row] = [line for line in result.output.splitlines() if "cli-done" in line]
    assert "completed" in row and "2/2" in row and "accuracy" in row

    running = hpo(service, "studies", "--status", "running")
    assert running.exit_code == 0, running.output
    assert "cli-done" not in running.output


def test_studies_with_an_unknown_status(service: Service) -> None:
    assert_clear_failure(hpo(service, "studies", "--status", "nosuch"), "query.status")


def test_status_summarises_the_study(service: Service, submitted: Result) -> None:
    result = hpo(service, "status", "cli-done")
    assert result.exit_code == 0, result.output
    assert re.search(r"status\s+completed", result.output)
    assert "2/2 trials (100%)" in result.output
    assert "2 complete" in result.output
    assert re.search(r"best\s+accuracy \d\.\d{4} \(trial \d\): learning_rate=", result.output)
    assert re.search(r"spent\s+\d[.\de-]* CPU-h *\n", result.output), result.output
    assert "forecast" not in result.output  # it finished: nothing left to forecast


def test_trials_lists_both_trials(service: Service, submitted: Result) -> None:
    result = hpo(service, "trials", "cli-done")
    assert result.exit_code == 0, result.output
    assert "learning_rate" in result.output and "accuracy" in result.output
    numbers = re.findall(r"^\W*(\d+)\W+complete\W", result.output, flags=re.MULTILINE)
    assert sorted(numbers) == ["0", "1"], result.output


def test_best_from_the_server_as_yaml(service: Service, submitted: Result) -> None:
    result = runner.invoke(
        app, ["best", "cli-done", "--format", "yaml"], env={"HPO_SERVER_URL": service.url}
    )
    assert result.exit_code == 0, result.output
    document = yaml.safe_load(result.stdout)
    assert document["study"] == "cli-done"
    assert document["parameters"]["learning_rate"] in (1e-3, 3e-3)
    assert document == yaml.safe_load(
        service.client.get("/v1/studies/cli-done/best?format=yaml").text
    )


def test_cancel_of_a_finished_study_is_refused(service: Service, submitted: Result) -> None:
    result = hpo(service, "cancel", "cli-done")
    assert_clear_failure(result, "cli-done", "completed")
    assert len(result.output.splitlines()) == 1


def test_submit_of_a_bad_definition_names_the_field(
    service: Service,
    tmp_path: Path,
    tiny_models: dict[str, Path],
    sentiment_files: tuple[Path, Path],
) -> None:
    path = write_study(
        tmp_path,
        tiny_models["bert"],
        sentiment_files,
        "cli-bad",
        parameters={"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-5}},
    )
    assert_clear_failure(hpo(service, "submit", str(path)), "parameters.learning_rate")
    assert service.client.get("/v1/studies/cli-bad").status_code == 404


def test_submit_of_a_missing_file(service: Service, tmp_path: Path) -> None:
    assert_clear_failure(hpo(service, "submit", str(tmp_path / "nosuch.yaml")), "nosuch.yaml")


def test_unknown_study(service: Service) -> None:
    for command in ("status", "trials", "cancel", "delete", "best"):
        assert_clear_failure(hpo(service, command, "nosuch"), "no study named", "nosuch")


def test_unreachable_server() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(app, ["status", "anything", "--server", url])
    assert_clear_failure(result, f"cannot reach hpo-service at {url}")
    assert len(result.output.splitlines()) == 1


@pytest.mark.parametrize("name", ["ok1/trials", "", "../../x", ".hidden"])
def test_a_name_no_study_can_have_is_refused_before_asking_the_server(name: str) -> None:
    """The server would route some of these to other endpoints (`ok1/trials`) and answer with
    something else than the study."""
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: no request may be needed
    for command in ("status", "trials", "best", "gate", "pareto", "cancel", "delete"):
        result = runner.invoke(app, [command, name, "--server", url])
        assert_clear_failure(result, "is not a study name", repr(name))


@pytest.mark.parametrize("token", ["✓", "hpo_abc\n", "hpo abc"])
def test_a_token_that_cannot_be_one_is_refused_without_echoing_it(token: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(app, ["status", "x", "--server", url], env={"HPO_TOKEN": token})
    assert_clear_failure(result, "the API token (--token or HPO_TOKEN) is not one")
    assert token.strip() not in result.output


def test_server_that_is_not_a_url() -> None:
    result = runner.invoke(app, ["studies", "--server", "localhost:8000"])
    assert_clear_failure(result, "localhost:8000")


def test_tokens_for_a_service_that_requires_them(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    with Service(url, tmp_path / "work", [EXAMPLES], HPO_AUTH="on") as service:
        _, reader = create_token(Store.open(url), "reader", Scope.READ)
        assert_clear_failure(hpo(service, "studies"), "a bearer token is required")
        assert_clear_failure(hpo(service, "studies", "--token", "hpo_nosuch"), "invalid")
        result = runner.invoke(app, ["studies", "--server", service.url], env={"HPO_TOKEN": reader})
        assert result.exit_code == 0, result.output
        denied = hpo(service, "cancel", "anything", "--token", reader)
        assert_clear_failure(denied, "needs a token of scope write")


def test_cancel_stops_a_study_that_submit_is_waiting_for(
    service: Service,
    tiny_models: dict[str, Path],
    sentiment_files: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    path = write_study(
        tmp_path,
        tiny_models["bert"],
        sentiment_files,
        "cli-long",
        parameters={
            "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "num_train_epochs": 3,
        },
        limits={"trials": 40},
    )
    waiting = subprocess.Popen(
        [BIN / "hpo", "submit", str(path), "--wait", "--server", service.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        study = _poll(service, "cli-long", lambda s: s.get("status") in ("queued", "running"))
        result = hpo(service, "cancel", "cli-long")
        assert result.exit_code == 0, result.output
        assert "cli-long: cancelled" in result.output
        stdout, stderr = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
    assert waiting.returncode == 1, stdout + stderr
    assert "cli-long cancelled: cancelled by request" in stderr
    assert "Traceback" not in stdout + stderr
    # Running trials stop and no new trial starts.
    study = _poll(service, "cli-long", lambda s: s["trial_counts"].get("running", 0) == 0)
    assert study["status"] == "cancelled" and study["progress"]["finished"] < 40


def test_delete_then_the_study_is_gone(service: Service, submitted: Result) -> None:
    """Last of the tests on the finished study: it removes it."""
    result = hpo(service, "delete", "cli-done")
    assert result.exit_code == 0, result.output
    assert "deleted cli-done" in result.output
    assert_clear_failure(hpo(service, "status", "cli-done"), "no study named", "cli-done")


def _poll(service: Service, name: str, done: Any, timeout: float = 120) -> dict:
    """The study's answer once ``done(answer)`` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = service.client.get(f"/v1/studies/{name}")
        if answer.status_code == 200 and done(answer.json()):
            return answer.json()
        time.sleep(0.5)
    raise TimeoutError(f"{name}: {answer.text}")


@pytest.fixture(scope="module")
def two_objectives(
    service: Service,
    tiny_models: dict[str, Path],
    sentiment_files: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Result:
    """`hpo submit --wait` of a two-trial study on accuracy up and training time down."""
    return submit_and_wait(
        service,
        tmp_path_factory.mktemp("definitions"),
        tiny_models["bert"],
        sentiment_files,
        "cli-pareto",
        objectives=[{"metric": "accuracy"}, {"metric": "train_seconds"}],
        pick={"rule": "within", "tolerance": 0.1},
        parameters={
            "learning_rate": {"type": "categorical", "choices": [3e-3]},
            "num_train_epochs": {"type": "categorical", "choices": [1, 2]},
        },
    )


def test_the_pareto_front_over_rest_and_in_the_cli(
    service: Service, two_objectives: Result
) -> None:
    assert two_objectives.exit_code == 0, two_objectives.output
    study = service.client.get("/v1/studies/cli-pareto").json()
    assert study["objectives"] == [
        {"metric": "accuracy", "direction": "maximize"},
        {"metric": "train_seconds", "direction": "minimize"},
    ]
    assert study["objective"] == study["objectives"][0]
    front = service.client.get("/v1/studies/cli-pareto/pareto-front").json()
    assert front["objectives"] == study["objectives"]
    assert front["pick"]["rule"] == "within" and front["pick"]["tolerance"] == 0.1
    assert front["pick"]["trial"] == study["best"]["trial"]
    points = [(t["metrics"]["accuracy"], -t["metrics"]["train_seconds"]) for t in front["items"]]
    for a in points:  # no point of the front beats another on both objectives
        assert not any(b != a and b[0] >= a[0] and b[1] >= a[1] for b in points)
    best = service.client.get("/v1/studies/cli-pareto/best").json()
    assert best["trial"] == front["pick"]["trial"]
    assert best["pick"]["pareto_front"] == [t["number"] for t in front["items"]]

    shown = hpo(service, "pareto", "cli-pareto")
    assert shown.exit_code == 0, shown.output
    assert "accuracy" in shown.output and "train_seconds" in shown.output
    assert f"picked: trial {best['trial']}, of the Pareto front's trials within 0.1" in (
        " ".join(shown.output.split())
    )
    status = hpo(service, "status", "cli-pareto")
    assert status.exit_code == 0, status.output
    assert re.search(r"objective\s+maximize accuracy, minimize train_seconds", status.output)
    assert re.search(r"picked by\s+within 0.1 over the Pareto front", status.output)
    trials = hpo(service, "trials", "cli-pareto")
    assert trials.exit_code == 0 and "train_seconds" in trials.output, trials.output

    # The dashboard (served beside the API) sees a two-objective study, so it draws the front.
    listed = service.client.get("/api/studies").json()["study_summaries"]
    [mine] = [s for s in listed if s["study_name"] == "cli-pareto"]
    assert mine["directions"] == ["maximize", "minimize"]
