"""The service checks a submission's data once per unchanged files: a second study on the same
files does not read them again, an edited file is read and checked again."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpo_service.core.errors import AlreadyExistsError, DefinitionError
from hpo_service.core.settings import Settings
from hpo_service.db.store import Store
from hpo_service.service import studies


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The train files `load_labelled_data` was asked to read, in order (an empty cache)."""
    studies._check_files.cache_clear()
    seen: list[str] = []
    real = studies.load_labelled_data

    def counting(spec: Any) -> Any:
        seen.append(spec.train)
        return real(spec)

    monkeypatch.setattr(studies, "load_labelled_data", counting)
    yield seen
    studies._check_files.cache_clear()


@pytest.fixture
def folder(tmp_path: Path, sentiment_files: tuple[Path, Path]) -> Path:
    for source in sentiment_files:
        shutil.copy(source, tmp_path / source.name)
    (tmp_path / "model").mkdir()
    # All check_model looks for: a config naming its type, and weights.
    (tmp_path / "model" / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "model" / "model.safetensors").write_bytes(b"")
    return tmp_path


def submit(name: str, folder: Path, store: Store) -> None:
    document = {
        "name": name,
        "model": {"name": str(folder / "model")},
        "dataset": {"train": "train.csv", "eval": "dev.csv"},
        "parameters": {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-4}},
    }
    studies.submit_study(document, store, Settings(data_roots=[folder]))


def test_second_study_on_same_files_skips_reading_them(
    folder: Path, sqlite_url: str, reads: list[str]
) -> None:
    store = Store.open(sqlite_url)
    submit("first", folder, store)
    submit("second", folder, store)
    submit("third", folder, store)

    assert reads == [str(folder / "train.csv")]
    assert store.study_names() == ["first", "second", "third"]


def test_edited_file_is_checked_again_and_a_bad_edit_refused(
    folder: Path, sqlite_url: str, reads: list[str]
) -> None:
    store = Store.open(sqlite_url)
    train = folder / "train.csv"
    submit("before", folder, store)

    with train.open("a") as file:
        file.write("A fine new row.,positive\n")
    submit("appended", folder, store)
    assert len(reads) == 2

    # Same size and mtime as before, but a missing label: the replaced file is still re-read.
    stat = train.stat()
    lines = train.read_bytes().splitlines(keepends=True)
    _, label = lines[1].rstrip(b"\r\n").rsplit(b",", 1)
    lines[1] = lines[1].replace(b"," + label, b"," + b" " * len(label))  # blank, same length
    replacement = folder / "train.csv.new"
    replacement.write_bytes(b"".join(lines))
    assert replacement.stat().st_size == stat.st_size
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    replacement.replace(train)

    with pytest.raises(DefinitionError) as refused:
        submit("bad-edit", folder, store)
    assert refused.value.field == "dataset.label_field"
    assert "lack a label" in refused.value.message
    assert len(reads) == 3
    # A refusal is not remembered: the same bad file is refused again, not let through.
    with pytest.raises(DefinitionError):
        submit("bad-again", folder, store)
    assert store.study_names() == ["before", "appended"]


def test_a_taken_name_is_refused_before_its_data_are_read(
    folder: Path, sqlite_url: str, reads: list[str]
) -> None:
    store = Store.open(sqlite_url)
    submit("taken", folder, store)
    (folder / "train.csv").write_text("not,a,dataset\n")  # would be a 422 if it were read
    with pytest.raises(AlreadyExistsError):
        submit("taken", folder, store)
    assert reads == [str(folder / "train.csv")]  # the first submission's check only
