"""The `hpo` command line: bad input ends with exit code 2 and one clear line, never a traceback."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import yaml
from helpers import assert_clear_failure
from typer.testing import CliRunner, Result

from hpo_service.cli import app
from hpo_service.core.definition import StudyDefinition
from hpo_service.core.presets import list_presets
from hpo_service.core.records import StudyStatus
from hpo_service.db.store import Store

runner = CliRunner()


def hpo(*args: str) -> Result:
    return runner.invoke(app, list(args))


def write_definition(
    directory: Path, sentiment_files: tuple[Path, Path], **parameters: object
) -> Path:
    train, dev = sentiment_files
    document = {
        "name": "sentiment-cli",
        "dataset": {"train": str(train), "eval": str(dev)},
        "parameters": parameters
        or {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-4, "log": True}},
    }
    path = directory / "study.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_validate_good_definition(tmp_path: Path, sentiment_files: tuple[Path, Path]) -> None:
    result = hpo("validate", str(write_definition(tmp_path, sentiment_files)))
    assert result.exit_code == 0, result.output
    assert "ok" in result.output
    assert "sentiment-cli" in result.output
    assert "400 train / 120 eval" in result.output


def test_validate_relative_data_paths_are_under_the_definitions_folder(
    tmp_path: Path, sentiment_files: tuple[Path, Path]
) -> None:
    train, dev = sentiment_files
    (tmp_path / "data").mkdir()
    for source in (train, dev):
        (tmp_path / "data" / source.name).write_text(source.read_text())
    document = {
        "name": "relative",
        "dataset": {"train": "data/train.csv", "eval": "data/dev.csv"},
        "parameters": {"batch_size": {"type": "categorical", "choices": [8, 16]}},
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(document))
    result = hpo("validate", str(tmp_path / "study.yaml"))
    assert result.exit_code == 0, result.output


def test_validate_low_above_high(tmp_path: Path, sentiment_files: tuple[Path, Path]) -> None:
    path = write_definition(
        tmp_path, sentiment_files, learning_rate={"type": "float", "low": 1e-3, "high": 1e-5}
    )
    assert_clear_failure(hpo("validate", str(path)), "parameters.learning_rate", "0.001")


def test_validate_malformed_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: [sentiment\ndataset: {train: train.csv\n")
    assert_clear_failure(hpo("validate", str(path)), "broken.yaml", "YAML")


@pytest.mark.parametrize("text", ["- a list\n- not a mapping\n", "just a string\n", ""])
def test_validate_document_that_is_not_a_mapping(tmp_path: Path, text: str) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    assert_clear_failure(hpo("validate", str(path)), "study.yaml", "mapping")


def test_validate_a_key_given_twice(tmp_path: Path, sentiment_files: tuple[Path, Path]) -> None:
    path = write_definition(tmp_path, sentiment_files)
    path.write_text(path.read_text() + "name: sentiment-cli-again\n")  # YAML would keep this one
    assert_clear_failure(hpo("validate", str(path)), "study.yaml", "repeats the key 'name'")


def test_validate_a_file_that_is_not_utf8_text(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_bytes("name: café\n".encode("latin-1"))  # an editor's legacy encoding
    assert_clear_failure(hpo("validate", str(path)), "study.yaml", "UTF-8")


def test_validate_missing_file(tmp_path: Path) -> None:
    assert_clear_failure(hpo("validate", str(tmp_path / "nosuch.yaml")), "nosuch.yaml")


def test_validate_missing_dataset_file(tmp_path: Path) -> None:
    document = {
        "name": "no-data",
        "dataset": {"train": str(tmp_path / "missing.csv")},
        "parameters": {"batch_size": {"type": "categorical", "choices": [8, 16]}},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(document))
    assert_clear_failure(hpo("validate", str(path)), "dataset.train", "missing.csv")


def test_a_model_of_a_type_transformers_does_not_know_is_refused_before_anything_runs(
    tmp_path: Path, sentiment_files: tuple[Path, Path]
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "no-such-architecture"}')
    (model / "model.safetensors").write_bytes(b"")
    path = write_definition(tmp_path, sentiment_files)
    path.write_text(path.read_text() + f"model: {{name: {model}}}\n")
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    assert_clear_failure(
        hpo("run", str(path), "--database-url", url), "model.name", "no-such-architecture"
    )
    assert Store.open(url).study_names() == []  # nothing ran, nothing recorded


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_model_that_cannot_load_is_refused_before_anything_runs(
    command: str, tmp_path: Path, sentiment_files: tuple[Path, Path]
) -> None:
    path = write_definition(tmp_path, sentiment_files)
    path.write_text(path.read_text() + f"model: {{name: {tmp_path / 'no-such-model'}}}\n")
    args = ["--database-url", f"sqlite:///{tmp_path / 'hpo.db'}"] if command == "run" else []
    assert_clear_failure(hpo(command, str(path), *args), "model.name", "no-such-model")
    assert not (tmp_path / "hpo.db").exists()  # nothing started, nothing recorded


def test_validate_unknown_preset(tmp_path: Path, sentiment_files: tuple[Path, Path]) -> None:
    path = write_definition(tmp_path, sentiment_files)
    path.write_text(path.read_text() + "preset: nosuch\n")
    assert_clear_failure(hpo("validate", str(path)), "nosuch", "bert-paper")


def test_schema_is_json_with_parameters() -> None:
    result = hpo("schema")
    assert result.exit_code == 0, result.output
    schema = json.loads(result.stdout)
    assert "parameters" in schema["properties"]
    assert {"name", "dataset"} <= set(schema["required"])


def test_presets_lists_every_preset() -> None:
    result = hpo("presets")
    assert result.exit_code == 0, result.output
    names = list_presets()
    assert names
    for name in names:
        assert name in result.output


def test_best_of_unknown_study(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    Store.open(url)
    assert_clear_failure(hpo("best", "nosuch", "--database-url", url), "no study named", "nosuch")


@pytest.mark.parametrize("command", [["best", "x"], ["gate", "x", "--min", "0.5"]])
def test_reading_a_database_file_that_is_not_there_says_so_and_creates_none(
    tmp_path: Path, command: list[str]
) -> None:
    """Say, `hpo best` run in another folder than the one with hpo.db."""
    missing = tmp_path / "hpo.db"
    result = hpo(*command, "--database-url", f"sqlite:///{missing}")
    assert_clear_failure(result, f"no database at {missing}", "--server")
    assert not missing.exists()


@pytest.mark.parametrize(
    ("command", "url"),
    [
        (["best", "x"], "nosuchdriver://host/db"),
        (["gate", "x"], "not a url"),
        (["token", "list"], "sqlite:///{tmp}/no/such/folder/hpo.db"),
        (["db", "upgrade"], "sqlite:///{tmp}/not-a-database.db"),
        (["best", "x"], "postgresql://postgres@127.0.0.1:5432/no_such_database"),
    ],
)
def test_a_database_that_cannot_be_opened_is_one_line(
    command: list[str], url: str, tmp_path: Path
) -> None:
    (tmp_path / "not-a-database.db").write_text("a text file, not SQLite\n" * 100)
    result = hpo(*command, "--database-url", url.format(tmp=tmp_path))
    assert_clear_failure(result, "cannot open the database")


def test_serve_on_a_port_in_use_leaves_the_database_alone(
    tmp_path: Path, sentiment_files: tuple[Path, Path]
) -> None:
    """A second service on a taken port used to take over the first one's studies (its startup
    queued their running ones again) before it found that it could not listen."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    document = yaml.safe_load(write_definition(tmp_path, sentiment_files).read_text())
    store = Store.open(url)
    store.create_study(document, StudyDefinition.model_validate(document))
    store.set_status("sentiment-cli", StudyStatus.RUNNING)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = hpo("serve", "--host", "127.0.0.1", "--port", port, "--database-url", url)
    assert_clear_failure(result, f"cannot listen on 127.0.0.1:{port}", "--port")
    assert store.get_study("sentiment-cli").status == StudyStatus.RUNNING


def test_best_rejects_unknown_format(tmp_path: Path) -> None:
    result = hpo("best", "s", "--format", "xml", "--database-url", f"sqlite:///{tmp_path}/x.db")
    assert_clear_failure(result, "xml")


def test_trials_tables_mark_confirmation_runs_and_smaller_micro_batches() -> None:
    from datetime import UTC, datetime

    from hpo_service.cli.common import trial_label
    from hpo_service.core.records import TrialRecord, TrialState

    def trial(number: int, **extra: object) -> TrialRecord:
        scores = dict.fromkeys(("objective", "accuracy", "f1", "matthews_corrcoef", "eval_loss"))
        return TrialRecord(
            number=number,
            state=TrialState.COMPLETE,
            params={"seed": 10_001},
            epochs=1,
            started_at=datetime.now(UTC),
            finished_at=None,
            error=None,
            **scores,
            **extra,  # type: ignore[arg-type]
        )

    assert trial_label(trial(3)) == "3"
    assert trial_label(trial(7, confirms=2)) == "7 (confirms 2, seed 10001)"
    assert trial_label(trial(8, confirms=2, micro_batch_size=4)) == (
        "8 (confirms 2, seed 10001; micro-batch 4)"
    )


def test_trials_tables_say_why_each_failed_trial_failed() -> None:
    from records import trial_record

    from hpo_service.cli import common
    from hpo_service.core.records import TrialState

    diverged = "training diverged at epoch 2: eval_loss nan (a lower learning_rate may help)"
    trials = [
        trial_record(0, 0.9),
        trial_record(1, None, state=TrialState.FAILED, error=f"{diverged}\nsecond line"),
        trial_record(2, None, state=TrialState.FAILED),  # no error recorded
    ]
    with common.out.capture() as captured:
        definition = {
            "name": "s",
            "dataset": {"train": "train.csv"},
            "parameters": {"learning_rate": {"type": "categorical", "choices": [1e-3]}},
        }
        common.print_trials("s: completed", ["accuracy"], definition, trials)
    shown = captured.get()
    assert f"trial 1 failed: {diverged}\n" in shown
    assert "second line" not in shown
    assert "trial 0 failed" not in shown and "trial 2 failed" not in shown
