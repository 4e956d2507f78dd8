"""Optuna's own copy of every study, in Optuna's tables of the same database."""

from __future__ import annotations

import contextlib
from typing import Any

import optuna


def optuna_storage(database_url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage on the service's database (tables created if missing)."""
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if database_url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 30}
    return optuna.storages.RDBStorage(database_url, engine_kwargs=engine_kwargs)


def delete_optuna_study(database_url: str, name: str) -> None:
    """Delete Optuna's copy of a study, if it has one."""
    # KeyError: the study never reached Optuna (it failed before its first trial).
    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=name, storage=optuna_storage(database_url))
