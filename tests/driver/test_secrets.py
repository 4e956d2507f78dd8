"""Database credentials stay out of every file a study writes (Ray's experiment state included)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from databases import postgres_database
from helpers import run, tiny_study
from sqlalchemy import make_url

from hpo_service.core.errors import StorageError
from hpo_service.core.records import StudyStatus
from hpo_service.db.store import Store

pytestmark = pytest.mark.usefixtures("ray_runtime")
SECRET = "not-on-disk-7f3a"  # the test server trusts local connections, so any password works


def test_a_study_writes_the_database_password_nowhere(
    tiny_models: dict[str, Path], sentiment_files: tuple[Path, Path], tmp_path: Path
) -> None:
    with postgres_database() as url:
        with_password = make_url(url).set(password=SECRET).render_as_string(hide_password=False)
        document = tiny_study("secret", tiny_models["bert"], sentiment_files)
        status, _ = run(document, with_password, tmp_path)
    assert status == StudyStatus.COMPLETED
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".pkl" for p in written)  # Ray did save its experiment state
    assert not [p for p in written if SECRET.encode() in p.read_bytes()]


def test_a_pickled_store_carries_no_password() -> None:
    store = Store.from_url(f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:5432/test")
    data = pickle.dumps(store)
    assert SECRET.encode() not in data
    with pytest.raises(StorageError, match="no password"):
        pickle.loads(data)
