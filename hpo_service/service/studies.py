"""What users do to studies through the service: submit, cancel, delete.

Shared by the REST API and the CLI; no HTTP here and no Ray (the service's scheduler runs them).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from hpo_service.core.definition import DatasetSpec
from hpo_service.core.errors import ConflictError, DefinitionError
from hpo_service.core.model_source import check_model
from hpo_service.core.presets import resolve_definition, with_paths_relative_to
from hpo_service.core.records import (
    ACTIVE_STATUSES,
    StudyRecord,
    StudyStatus,
    check_warm_start,
)
from hpo_service.core.settings import Settings
from hpo_service.data import load_labelled_data
from hpo_service.db.optuna_storage import delete_optuna_study
from hpo_service.db.store import Store


def submit_study(document: dict[str, Any], store: Store, settings: Settings) -> StudyRecord:
    """Check a submitted definition and its data, and queue the study.

    Relative dataset paths are taken from the first of ``settings.data_roots``; every path must
    lie inside one of them. Raises ``pydantic.ValidationError`` or ``DefinitionError`` (bad
    definition, model or data), ``NotFoundError`` (unknown preset) and ``AlreadyExistsError``
    (the store's answer, so two submissions of one name race safely).
    """
    document = with_paths_relative_to(document, settings.data_roots[0])
    definition = resolve_definition(document)
    for field in ("train", "eval"):
        location = getattr(definition.dataset, field)
        if location is not None:
            _check_inside(f"dataset.{field}", Path(location), settings.data_roots)
    store.check_name_free(definition.name)  # a taken name is a 409 before any file is read
    check_model(definition.model)
    check_warm_start(definition, store.find_study)
    check_data(definition.dataset)
    return store.create_study(document, definition)


def check_data(spec: DatasetSpec) -> None:
    """Read and check a study's data (raises ``DefinitionError``), once per unchanged files.

    A successful check of local files is remembered in this process under the dataset spec and
    each file's (path, size, mtime_ns, ctime_ns, inode): a second study on the same files skips
    reading them, and an edited or replaced file is checked again. Hub datasets and failed
    checks are never remembered.
    """
    if spec.hub is not None:
        load_labelled_data(spec)
        return
    _check_files(spec.model_dump_json(), _file_stamps(spec))


FileStamp = tuple[str, int, int, int, int] | None


def _file_stamps(spec: DatasetSpec) -> tuple[FileStamp, ...]:
    stamps: list[FileStamp] = []
    for location in (spec.train, spec.eval):
        try:
            path = Path(location).expanduser().resolve() if location else None
            info = path.stat() if path else None
        except OSError:  # missing or unreadable: the check itself says so
            info = None
        stamps.append(
            None
            if info is None
            else (str(path), info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)
        )
    return tuple(stamps)


@functools.lru_cache(maxsize=256)  # exceptions are not cached: a refused check runs again
def _check_files(spec_json: str, stamps: tuple[FileStamp, ...]) -> None:
    del stamps  # part of the cache key only
    load_labelled_data(DatasetSpec.model_validate_json(spec_json))


def _check_inside(field: str, path: Path, roots: list[Path]) -> None:
    resolved = path.expanduser().resolve()
    if not any(resolved.is_relative_to(root) for root in roots):
        allowed = ", ".join(str(root) for root in roots)
        raise DefinitionError(
            field, f"{path} is outside the folders datasets may come from ({allowed})"
        )


def cancel_study(name: str, store: Store) -> StudyRecord:
    """Cancel a queued or running study: no new trial starts, running ones stop.

    Raises ``NotFoundError`` and ``ConflictError`` (the study already finished).
    """
    if not store.set_status(
        name, StudyStatus.CANCELLED, "cancelled by request", only_from=ACTIVE_STATUSES
    ):
        status = store.get_study(name).status
        raise ConflictError(
            f"study {name!r} is {status.value}; only a queued or running one can be cancelled"
        )
    return store.get_study(name)


def delete_study(name: str, store: Store, database_url: str) -> None:
    """Delete a finished study, its trials and Optuna's copy.

    Raises ``NotFoundError`` and ``ConflictError`` (the study is queued or running).
    """
    status = store.get_study(name).status
    if status.is_active:
        raise ConflictError(f"study {name!r} is {status.value}; cancel it before deleting it")
    store.delete_study(name)
    delete_optuna_study(database_url, name)
