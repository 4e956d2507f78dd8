"""Settings from ``HPO_*`` environment variables, built by each entry point and passed down."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Set by the service in each driver it starts, so the driver dies with it.
PARENT_PID_VARIABLE = "HPO_SERVICE_PID"
# The object store of a local Ray, per study that may run on it at once.
LOCAL_OBJECT_STORE_BYTES = 1 << 30


def normalize_database_url(url: str) -> str:
    """Use psycopg 3 for ``postgresql://`` URLs and make SQLite file paths absolute."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            return f"sqlite:///{Path(path).expanduser().resolve()}"
    return url


def with_password(url: str, password: SecretStr) -> str:
    """``url`` with ``password`` in it, unless it holds one already (or is SQLite's)."""
    parts = urlsplit(url)
    if parts.password is not None or parts.scheme.startswith("sqlite"):
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    secret = quote(password.get_secret_value(), safe="")
    return urlunsplit(parts._replace(netloc=f"{userinfo}:{secret}@{hostport}"))


def without_password(url: str) -> str:
    """``url`` with its password left out (not masked: a URL that still connects where the
    password comes from ``HPO_DATABASE_PASSWORD``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo.split(':', 1)[0]}@{hostport}"))


def unreachable(address: str, timeout: float) -> str | None:
    """Why nothing answers at a ``host:port``, ``ray://host:port`` or ``http://host:port``
    address, or ``None`` if something does (or the address has no port to try, like ``auto``)."""
    location = urlsplit(address if "//" in address else f"//{address}")
    if location.hostname is None or location.port is None:
        return None
    try:
        socket.create_connection((location.hostname, location.port), timeout=timeout).close()
    except OSError as error:
        return str(error)
    return None


class Settings(BaseSettings):
    """Where results are stored, where trials run, and how the service serves."""

    model_config = SettingsConfigDict(env_prefix="HPO_", extra="ignore")

    database_url: str = "sqlite:///hpo.db"
    database_password: SecretStr | None = Field(
        default=None,
        description="The database's password, kept out of HPO_DATABASE_URL (a secret mounted "
        "as a variable); used where the URL names none.",
    )
    ray_address: str | None = None
    ray_jobs_address: str | None = Field(
        default=None,
        description="The Ray dashboard's URL (http://head:8265): run drivers as Ray jobs there.",
    )
    ray_fixed_size: bool | None = Field(
        default=None,
        description="Whether the Ray cluster never gains nodes: then a study whose trial fits on "
        "none of its nodes fails at once instead of waiting for one forever. Default: yes for a "
        "local Ray (`hpo run`'s, the service's own head), no with HPO_RAY_ADDRESS (it may "
        "autoscale).",
    )
    ray_num_cpus: int | None = Field(
        default=None,
        ge=1,
        description="CPUs of the local Ray (the service's head, or `hpo run`'s; default: all).",
    )
    work_dir: Path = Path(".hpo")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_running_studies: int = Field(
        default=1,
        ge=0,
        description="Studies this service runs at once; 0: it runs none (an API-only replica "
        "beside a service that runs them, or a paused queue).",
    )
    data_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=lambda: [Path.cwd()],
        description="Folders that submitted dataset paths may point into (os.pathsep-separated).",
    )
    auth: Literal["auto", "on"] = Field(
        default="auto",
        description="auto: tokens are required unless the service binds a loopback address.",
    )
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    scheduler_interval_s: float = Field(default=1.0, gt=0)

    @field_validator("database_url")
    @classmethod
    def _normalize(cls, url: str) -> str:
        return normalize_database_url(url)

    @model_validator(mode="after")
    def _with_password(self) -> Settings:
        if self.database_password is not None:
            self.database_url = with_password(self.database_url, self.database_password)
        return self

    @field_validator("work_dir")
    @classmethod
    def _absolute(cls, path: Path) -> Path:
        return path.expanduser().resolve()

    @field_validator("data_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            return [part for part in value.split(os.pathsep) if part]
        return value

    @field_validator("data_roots")
    @classmethod
    def _resolve_roots(cls, roots: list[Path]) -> list[Path]:
        return [root.expanduser().resolve() for root in roots]
