"""The best configuration of a study as a versioned document for CI, and the gate on it.

Formats: ``json`` and ``yaml`` (the whole document), ``env`` (``KEY=VALUE`` lines for a CI
environment file) and ``training-args`` (JSON that ``TrainingArguments(**json.load(f))`` takes).
"""

from __future__ import annotations

import json
from typing import Any, Literal

import yaml

from hpo_service import __version__
from hpo_service.core.confirmation import RULE, Confirmed, confirmation_seeds, rank
from hpo_service.core.definition import StudyDefinition
from hpo_service.core.errors import NotFoundError
from hpo_service.core.pareto import describe, pick
from hpo_service.core.records import StudyRecord, TrialRecord
from hpo_service.core.training_args import dropout_fields, training_arguments, trial_values
from hpo_service.db.store import Store

# v2 added `confirmation` (null without a confirmation stage); v3 added `objectives` (every
# objective's value), `pick` (null with one objective) and `schedule` (null without
# population-based training). v1 and v2 readers keep working.
SCHEMA = "hpo-service/best-config/v3"
Format = Literal["json", "yaml", "env", "training-args"]
FORMATS: tuple[Format, ...] = ("json", "yaml", "env", "training-args")


def best_config(store: Store, study: str) -> dict[str, Any]:
    """The best configuration of ``study`` as a best-config document: the best mean over the
    confirmation seeds once a confirmation stage has results, else the best full-budget trial.

    Raises ``NotFoundError`` if the study does not exist or has no complete trial yet.
    """
    record = store.get_study(study)
    definition = StudyDefinition.model_validate(record.resolved_definition)
    if definition.confirm is not None:
        ranked = rank(store.trials(study), definition.objective.mode)
        if ranked:
            return best_document(record, store.trial(study, ranked[0].trial.number), ranked)
    if len(record.goals) > 1:  # the front once: the picked point and the document's list
        front = store.pareto_front(study)
        picked = pick(front, record.goals, record.picking)
        if picked is None:
            raise NotFoundError(f"study {study!r} has no complete trial yet")
        return best_document(record, store.trial(study, picked.number), front=front)
    best = store.best_trial(study)
    if best is None:
        raise NotFoundError(f"study {study!r} has no complete trial yet")
    return best_document(record, best)


def confirmation_section(ranked: list[Confirmed], seeds: list[int]) -> dict[str, Any]:
    """How the winner was confirmed: its spread over the fresh seeds, and every candidate's."""
    return {
        "rule": RULE,
        "seeds": seeds,
        **ranked[0].as_dict(),
        "candidates": [candidate.as_dict() for candidate in ranked],
    }


def pick_section(study: StudyRecord, front: list[TrialRecord]) -> dict[str, Any]:
    """How a study with several objectives picked its best point from its Pareto front."""
    rule = study.picking
    return {
        "rule": rule.rule,
        "tolerance": rule.tolerance,
        "description": describe(study.goals, rule),
        "pareto_front": [t.number for t in front],
    }


def best_document(
    study: StudyRecord,
    trial: TrialRecord,
    confirmed: list[Confirmed] | None = None,
    front: list[TrialRecord] | None = None,
) -> dict[str, Any]:
    """The document for ``trial``; with ``confirmed`` (best first, ``trial`` the first's search
    trial) its objective and metrics are the means over the confirmation runs; with ``front``
    (several objectives) it says which rule picked ``trial`` from that Pareto front."""
    definition = StudyDefinition.model_validate(study.resolved_definition)
    values = trial_values(trial.params)
    value, metrics, confirmation = trial.objective, trial.metrics, None
    if confirmed and definition.confirm is not None:
        confirmation = confirmation_section(confirmed, confirmation_seeds(definition.confirm))
        value = confirmation["objective"]["mean"]
        metrics = {**metrics, **{k: v["mean"] for k, v in confirmation["metrics"].items()}}
    environment = study.run_environment
    model_type = environment.model_type if environment else None
    overrides = (
        dict.fromkeys(dropout_fields(model_type or ""), values["dropout"])
        if values["dropout"] is not None
        else {}
    )
    return {
        "schema": SCHEMA,
        "study": study.name,
        "status": study.status.value,
        "trial": trial.number,
        "objective": {
            "metric": study.objective_metric,
            "direction": study.direction,
            "value": value,
        },
        "objectives": [
            {"metric": goal.metric, "direction": goal.mode, "value": metrics[goal.metric]}
            for goal in study.goals
        ],
        "pick": None if front is None else pick_section(study, front),
        "metrics": metrics,
        "confirmation": confirmation,
        "parameters": values,
        "schedule": trial.schedule,
        "training_arguments": training_arguments(trial.params),
        "model": {
            "name": definition.model.name,
            "revision": definition.model.revision,
            "type": model_type,
            "config_overrides": overrides,
        },
        "dataset": {
            "train": definition.dataset.train,
            "eval": definition.dataset.eval,
            "hub": definition.dataset.hub,
            "text_fields": definition.dataset.text_fields,
            "label_field": definition.dataset.label_field,
            "max_seq_length": definition.dataset.max_seq_length,
            "fingerprint": environment.dataset_fingerprint if environment else None,
        },
        "versions": {
            "hpo_service": __version__,
            "torch": environment.torch_version if environment else None,
            "transformers": environment.transformers_version if environment else None,
            "optuna": environment.optuna_version if environment else None,
            "ray": environment.ray_version if environment else None,
        },
        "epochs": trial.epochs,
        "finished_at": trial.finished_at.isoformat() if trial.finished_at else None,
    }


def render(document: dict[str, Any], fmt: Format) -> str:
    if fmt == "yaml":
        return yaml.safe_dump(document, sort_keys=False)
    if fmt == "env":
        return "".join(f"{key}={value}\n" for key, value in env_lines(document))
    if fmt == "training-args":
        return json.dumps(document["training_arguments"], indent=2)
    return json.dumps(document, indent=2)


def env_lines(document: dict[str, Any]) -> list[tuple[str, str]]:
    """``HPO_*`` variables: the study, trial, objective, metrics, parameters and model."""
    objective = document["objective"]
    pairs: list[tuple[str, Any]] = [
        ("HPO_STUDY", document["study"]),
        ("HPO_TRIAL", document["trial"]),
        ("HPO_OBJECTIVE_METRIC", objective["metric"]),
        ("HPO_OBJECTIVE_VALUE", objective["value"]),
        ("HPO_MODEL", document["model"]["name"]),
        ("HPO_DATASET_FINGERPRINT", document["dataset"]["fingerprint"]),
    ]
    pairs += [(f"HPO_METRIC_{k.upper()}", v) for k, v in document["metrics"].items()]
    pairs += [(f"HPO_PARAM_{k.upper()}", v) for k, v in document["parameters"].items()]
    return [(key, "" if value is None else str(value)) for key, value in pairs]
