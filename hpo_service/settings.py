"""Settings from ``HPO_*`` environment variables, built by each entry point and passed down."""

from __future__ import annotations

from pathlib import Path

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def normalize_database_url(url: str) -> str:
    """Use psycopg 3 for ``postgresql://`` URLs and make SQLite file paths absolute."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            return f"sqlite:///{Path(path).expanduser().resolve()}"
    return url


class Settings(BaseSettings):
    """Where results are stored and where trials run."""

    model_config = SettingsConfigDict(env_prefix="HPO_", extra="ignore")

    database_url: str = "sqlite:///hpo.db"
    ray_address: str | None = None
    work_dir: Path = Path(".hpo")

    @field_validator("database_url")
    @classmethod
    def _normalize(cls, url: str) -> str:
        return normalize_database_url(url)

    @field_validator("work_dir")
    @classmethod
    def _absolute(cls, path: Path) -> Path:
        return path.expanduser().resolve()
