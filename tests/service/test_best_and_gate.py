"""Best configurations into CI: the versioned document in every format, and `hpo gate` against
the database and against a running service."""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from helpers import tiny_study
from servers import Service
from transformers import TrainingArguments
from typer.testing import CliRunner

from hpo_service.cli import app
from hpo_service.core.presets import resolve_definition
from hpo_service.core.settings import Settings
from hpo_service.db.store import Store
from hpo_service.driver.runner import run_study

runner = CliRunner()


@pytest.fixture(scope="module")
def finished(
    ray_runtime: None,
    tiny_models: dict[str, Path],
    sentiment_files: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[str, Path]:
    """A database holding a completed study `tuned` (2 trials) and a queued one `waiting`."""
    folder = tmp_path_factory.mktemp("best")
    url = f"sqlite:///{folder / 'hpo.db'}"
    document = tiny_study(
        "tuned",
        tiny_models["bert"],
        sentiment_files,
        parameters={
            "learning_rate": {"type": "categorical", "choices": [1e-3, 3e-3]},
            "dropout": 0.15,
            "warmup_ratio": 0.1,
        },
        sampler={"type": "grid"},
        limits={"trials": None},
    )
    run_study(
        document, resolve_definition(document), Settings(database_url=url, work_dir=folder / "work")
    )
    waiting = tiny_study("waiting", tiny_models["bert"], sentiment_files)
    Store.open(Settings(database_url=url).database_url).create_study(
        waiting, resolve_definition(waiting)
    )
    return url, folder


def hpo(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_the_best_config_document(finished: tuple[str, Path], sentiment_files: tuple) -> None:
    url, _ = finished
    code, output = hpo("best", "tuned", "--database-url", url)
    assert code == 0, output
    document = json.loads(output)
    assert document["schema"] == "hpo-service/best-config/v3"
    assert document["confirmation"] is None  # no confirmation stage
    assert document["pick"] is None  # one objective
    assert document["objectives"] == [
        {"metric": "accuracy", "direction": "maximize", "value": document["metrics"]["accuracy"]}
    ]
    assert document["study"] == "tuned" and document["status"] == "completed"
    assert document["objective"]["metric"] == "accuracy"
    assert document["objective"]["value"] == document["metrics"]["accuracy"]
    assert set(document["metrics"]) == {
        "accuracy",
        "f1",
        "matthews_corrcoef",
        "eval_loss",
        "train_seconds",
    }
    assert document["metrics"]["train_seconds"] > 0
    assert document["parameters"]["learning_rate"] in (1e-3, 3e-3)
    assert document["parameters"]["dropout"] == 0.15
    assert document["model"]["type"] == "bert"
    assert document["model"]["config_overrides"] == {
        "hidden_dropout_prob": 0.15,
        "attention_probs_dropout_prob": 0.15,
    }
    train, dev = sentiment_files
    digest = hashlib.sha256()
    for path in (train, dev):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    assert document["dataset"]["fingerprint"] == f"sha256:{digest.hexdigest()}"
    for package in ("torch", "transformers", "optuna", "ray"):
        assert document["versions"][package] == version(package)
    assert document["finished_at"]

    code, as_yaml = hpo("best", "tuned", "--format", "yaml", "--database-url", url)
    assert code == 0 and yaml.safe_load(as_yaml) == document


def test_training_args_feed_transformers_directly(finished: tuple[str, Path]) -> None:
    url, folder = finished
    code, output = hpo("best", "tuned", "--format", "training-args", "--database-url", url)
    assert code == 0, output
    (folder / "training-args.json").write_text(output)
    with (folder / "training-args.json").open() as f:
        arguments = TrainingArguments(**json.load(f))
    best = json.loads(hpo("best", "tuned", "--database-url", url)[1])
    assert arguments.learning_rate == best["parameters"]["learning_rate"]
    assert arguments.per_device_train_batch_size == best["parameters"]["batch_size"]
    assert arguments.num_train_epochs == best["parameters"]["num_train_epochs"]
    assert arguments.warmup_steps == 0.1 and arguments.seed == 42


def test_env_lines_for_a_ci_environment_file(finished: tuple[str, Path]) -> None:
    url, _ = finished
    code, output = hpo("best", "tuned", "--format", "env", "--database-url", url)
    assert code == 0, output
    variables = dict(line.split("=", 1) for line in output.strip().splitlines())
    best = json.loads(hpo("best", "tuned", "--database-url", url)[1])
    assert variables["HPO_STUDY"] == "tuned"
    assert int(variables["HPO_TRIAL"]) == best["trial"]
    assert float(variables["HPO_PARAM_LEARNING_RATE"]) == best["parameters"]["learning_rate"]
    assert float(variables["HPO_METRIC_ACCURACY"]) == best["metrics"]["accuracy"]
    assert variables["HPO_DATASET_FINGERPRINT"].startswith("sha256:")


def test_an_unknown_format_is_a_clear_error(finished: tuple[str, Path]) -> None:
    code, output = hpo("best", "tuned", "--format", "xml", "--database-url", finished[0])
    assert code == 2 and "training-args" in output and "Traceback" not in output


def gate(url: str, *args: str) -> tuple[int, str]:
    return hpo("gate", *args, "--database-url", url)


def assert_usage_error(code: int, output: str, *expected: str) -> None:
    """Exit 2 (a broken invocation, not a failed gate) with one line naming what is wrong."""
    assert code == 2, output
    assert "Traceback" not in output and len(output.strip().splitlines()) == 1, output
    for text in expected:
        assert text in output, output


# Where the gate reads the study: the database, or a service (none listens there: the baseline
# and the options are checked before either is asked).
SOURCES = {
    "database": ["--database-url", "sqlite:///{tmp}/hpo.db"],
    "server": ["--server", "http://127.0.0.1:9"],
}
SPREAD = {"mean": 0.9, "std": 0.01, "worst": 0.89, "scores": [0.89, 0.9, 0.91]}


def confirmed_baseline(accuracy: dict[str, object]) -> bytes:
    document = {"metrics": {"accuracy": 0.9}, "confirmation": {"metrics": {"accuracy": accuracy}}}
    return json.dumps(document).encode()


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such file"),
        ("a folder", "is a directory"),
        (b"accuracy: 0.9\n", "not valid JSON"),
        (b"\xff\xfe{}", "is not UTF-8 text"),
        (b"[]", "must be an object, but got list"),
        (b"{}", "metrics: Field required"),
        (b'{"metrics": 5}', "metrics: Input should be a valid dictionary"),
        (
            confirmed_baseline({k: v for k, v in SPREAD.items() if k != "scores"}),
            "confirmation.metrics.accuracy.scores: Field required",
        ),
        (
            confirmed_baseline({**SPREAD, "mean": "0.9"}),  # text, even text that reads as one
            "confirmation.metrics.accuracy.mean: Input should be a valid number",
        ),
        (b'{"metrics": {"accuracy": "high"}}', "metrics.accuracy: Input should be a valid number"),
    ],
)
def test_a_baseline_that_is_not_a_best_config_document_is_a_usage_error(
    content: bytes | str | None, expected: str, source: str, tmp_path: Path
) -> None:
    baseline = tmp_path / "best.json"
    if content == "a folder":
        baseline.mkdir()
    elif isinstance(content, bytes):
        baseline.write_bytes(content)
    where = [arg.format(tmp=tmp_path) for arg in SOURCES[source]]
    code, output = hpo("gate", "tuned", "--baseline", str(baseline), *where)
    assert_usage_error(code, output, f"--baseline {baseline}: ", expected)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize(
    "option", [["--min", "nan"], ["--max", "nan"], ["--max-drop", "nan"], ["--min", "-inf"]]
)
def test_a_threshold_that_is_not_a_finite_number_is_a_usage_error(
    option: list[str], source: str, tmp_path: Path
) -> None:
    where = [arg.format(tmp=tmp_path) for arg in SOURCES[source]]
    code, output = hpo("gate", "tuned", *option, *where)
    assert_usage_error(code, output, f"{option[0]} must be a finite number, not {option[1]}")


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--min", "0.9", "--max", "0.8"], "--min 0.9 is above --max 0.8: no value could pass"),
        (["--max-drop", "0.01"], "--max-drop needs a --baseline to compare with"),
        (["--max-drop", "0"], "--max-drop needs a --baseline to compare with"),
    ],
)
def test_options_that_cannot_judge_anything_are_a_usage_error(
    options: list[str], expected: str, source: str, tmp_path: Path
) -> None:
    where = [arg.format(tmp=tmp_path) for arg in SOURCES[source]]
    code, output = hpo("gate", "tuned", *options, *where)
    assert_usage_error(code, output, expected)


def test_the_gate_passes_and_fails_on_thresholds(finished: tuple[str, Path]) -> None:
    url, _ = finished
    accuracy = json.loads(hpo("best", "tuned", "--database-url", url)[1])["metrics"]["accuracy"]
    code, output = gate(url, "tuned", "--min", str(accuracy - 0.01))
    assert code == 0 and "passes" in output
    code, output = gate(url, "tuned", "--min", str(accuracy + 0.01))
    assert code == 1 and "below the minimum" in output and len(output.strip().splitlines()) == 1
    code, output = gate(url, "tuned", "--metric", "eval_loss", "--max", "0.0001")
    assert code == 1 and "above the maximum" in output
    # One run has no spread: its worst seed is its value.
    assert gate(url, "tuned", "--min", str(accuracy - 0.01), "--on", "worst")[0] == 0
    # A band around the value passes, and --min equal to --max is a band of one value.
    band = ["--min", str(accuracy - 0.01), "--max", str(accuracy + 0.01)]
    assert gate(url, "tuned", *band)[0] == 0
    assert gate(url, "tuned", "--min", str(accuracy), "--max", str(accuracy))[0] == 0
    code, output = gate(url, "tuned", "--min", "0", "--on", "median")
    assert code == 2 and "--on must be one of mean, mean-std, worst" in output
    assert "Traceback" not in output
    for metric in ("", "perplexity"):  # "" used to judge the default metric
        code, output = gate(url, "tuned", "--min", "0", "--metric", metric)
        assert code == 2 and "--metric must be one of accuracy, f1" in output, output


def test_the_gate_fails_on_a_regression_from_a_baseline(finished: tuple[str, Path]) -> None:
    url, folder = finished
    best = json.loads(hpo("best", "tuned", "--database-url", url)[1])
    baseline = folder / "baseline.json"
    better = {
        **best,
        "metrics": {**best["metrics"], "accuracy": best["metrics"]["accuracy"] + 0.05},
    }
    baseline.write_text(json.dumps(better))
    code, output = gate(url, "tuned", "--baseline", str(baseline), "--max-drop", "0.01")
    assert code == 1 and "regressed" in output
    code, output = gate(url, "tuned", "--baseline", str(baseline), "--max-drop", "0.06")
    assert code == 0, output
    baseline.write_text(json.dumps(best))  # the same as now: no drop
    assert gate(url, "tuned", "--baseline", str(baseline))[0] == 0


def test_a_broken_baseline_or_threshold_against_a_completed_study_is_a_usage_error(
    finished: tuple[str, Path],
) -> None:
    url, folder = finished
    baseline = folder / "broken.json"
    for content in (b"[]", b'{"metrics": {"accuracy": "high"}}', confirmed_baseline({})):
        baseline.write_bytes(content)
        code, output = gate(url, "tuned", "--baseline", str(baseline))
        assert_usage_error(code, output, f"--baseline {baseline}: ")
    code, output = gate(url, "tuned", "--min", "nan")  # no comparison with NaN is true
    assert_usage_error(code, output, "--min must be a finite number, not nan")


def test_the_gate_fails_on_an_unfinished_or_missing_study(finished: tuple[str, Path]) -> None:
    url, _ = finished
    code, output = gate(url, "waiting", "--min", "0")
    assert code == 1 and "queued, not completed" in output
    code, output = gate(url, "nosuch", "--min", "0")
    assert code == 2 and "no study named" in output


def test_the_gate_against_a_running_service(
    finished: tuple[str, Path], sentiment_files: tuple[Path, Path]
) -> None:
    url, folder = finished
    # The service may start `waiting`; the gate only reads.
    with Service(url, folder / "served", [sentiment_files[0].parent]) as service:
        code, output = hpo("gate", "tuned", "--min", "0", "--server", service.url)
        assert code == 0, output
        code, output = hpo("gate", "tuned", "--min", "1.01", "--server", service.url)
        assert code == 1 and "below the minimum" in output
        code, output = hpo("best", "tuned", "--format", "training-args", "--server", service.url)
        assert code == 0 and TrainingArguments(**json.loads(output)).seed == 42
