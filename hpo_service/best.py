"""The best configuration of a study, as a document for CI (JSON or YAML)."""

from __future__ import annotations

import json
from typing import Any, Literal

import yaml

from hpo_service.db.store import Store, StudyRecord, TrialRecord
from hpo_service.errors import NotFoundError

Format = Literal["json", "yaml"]


def best_config(store: Store, study: str) -> dict[str, Any]:
    """The best full-budget trial of ``study`` with its parameters and metrics.

    Raises ``NotFoundError`` if the study does not exist or has no complete trial yet.
    """
    record = store.get_study(study)
    best = store.best_trial(study)
    if best is None:
        raise NotFoundError(f"study {study!r} has no complete trial yet")
    return best_document(record, best)


def best_document(study: StudyRecord, trial: TrialRecord) -> dict[str, Any]:
    return {
        "study": study.name,
        "status": study.status.value,
        "trial": trial.number,
        "objective": {
            "metric": study.objective_metric,
            "direction": study.direction,
            "value": trial.objective,
        },
        "metrics": trial.metrics,
        "parameters": trial.params,
        "epochs": trial.epochs,
        "model": study.resolved_definition["model"],
        "finished_at": trial.finished_at.isoformat() if trial.finished_at else None,
    }


def render(document: dict[str, Any], fmt: Format) -> str:
    if fmt == "yaml":
        return yaml.safe_dump(document, sort_keys=False)
    return json.dumps(document, indent=2)
