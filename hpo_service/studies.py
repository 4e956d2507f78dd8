"""What users do to studies through the service: submit, cancel, delete.

Shared by the REST API and the CLI; no HTTP here and no Ray (the service's scheduler runs them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpo_service.data import load_labelled_data
from hpo_service.db.optuna_storage import delete_optuna_study
from hpo_service.db.store import Store, StudyRecord
from hpo_service.db.tables import StudyStatus
from hpo_service.errors import AlreadyExistsError, ConflictError, DefinitionError
from hpo_service.presets import resolve_definition, with_paths_relative_to
from hpo_service.settings import Settings

ACTIVE = {StudyStatus.QUEUED, StudyStatus.RUNNING}


def submit_study(document: dict[str, Any], store: Store, settings: Settings) -> StudyRecord:
    """Check a submitted definition and its data, and queue the study.

    Relative dataset paths are taken from the first of ``settings.data_roots``; every path must
    lie inside one of them. Raises ``pydantic.ValidationError`` or ``DefinitionError`` (bad
    definition or data), ``NotFoundError`` (unknown preset) and ``AlreadyExistsError``.
    """
    document = with_paths_relative_to(document, settings.data_roots[0])
    definition = resolve_definition(document)
    for field in ("train", "eval"):
        location = getattr(definition.dataset, field)
        if location is not None:
            _check_inside(f"dataset.{field}", Path(location), settings.data_roots)
    if definition.name in store.study_names():
        raise AlreadyExistsError(f"study {definition.name!r} already exists")
    load_labelled_data(definition.dataset)
    return store.create_study(document, definition)


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
    if not store.set_status(name, StudyStatus.CANCELLED, "cancelled by request", only_from=ACTIVE):
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
    if status in ACTIVE:
        raise ConflictError(f"study {name!r} is {status.value}; cancel it before deleting it")
    store.delete_study(name)
    delete_optuna_study(database_url, name)
