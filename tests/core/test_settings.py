"""Settings from HPO_* variables: the database's password may come apart from its URL."""

from __future__ import annotations

import pytest
from sqlalchemy import make_url

from hpo_service.core.settings import Settings, without_password

URL = "postgresql+psycopg://hpo@db.internal:5432/hpo"


def test_the_password_comes_from_its_own_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPO_DATABASE_URL", URL)
    monkeypatch.setenv("HPO_DATABASE_PASSWORD", "p@ss/w:rd%")
    url = make_url(Settings().database_url)
    assert url.password == "p@ss/w:rd%"
    assert (url.username, url.host, url.database) == ("hpo", "db.internal", "hpo")


def test_a_password_in_the_url_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPO_DATABASE_URL", URL.replace("hpo@", "hpo:in-url@"))
    monkeypatch.setenv("HPO_DATABASE_PASSWORD", "from-variable")
    assert make_url(Settings().database_url).password == "in-url"


def test_sqlite_takes_no_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPO_DATABASE_URL", "sqlite:////srv/hpo.db")
    monkeypatch.setenv("HPO_DATABASE_PASSWORD", "unused")
    assert Settings().database_url == "sqlite:////srv/hpo.db"


def test_a_url_without_its_password_gets_it_back_from_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a Ray job's driver does: the URL without the password from the job, the password
    from the cluster's environment."""
    full = make_url(URL).set(password="p@ss/w:rd%").render_as_string(hide_password=False)
    bare = without_password(full)
    assert "p@ss" not in bare and make_url(bare).password is None
    monkeypatch.setenv("HPO_DATABASE_URL", bare)
    monkeypatch.setenv("HPO_DATABASE_PASSWORD", "p@ss/w:rd%")
    assert make_url(Settings().database_url) == make_url(full)
