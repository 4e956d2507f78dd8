"""The REST API, version 1: studies, their trials and best configurations, presets."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool

from hpo_service.api.answers import AnswerCache
from hpo_service.api.schemas import (
    Budget,
    Message,
    ParetoFront,
    Pick,
    Preset,
    StudyDetail,
    StudyPage,
    StudySummary,
    TrialDetail,
    TrialPage,
    TrialSummary,
    ValidationErrors,
    objectives_of,
)
from hpo_service.core.budget import forecast
from hpo_service.core.definition import NAME_PATTERN, StudyDefinition
from hpo_service.core.errors import DefinitionError, PayloadTooLargeError
from hpo_service.core.pareto import describe, pick
from hpo_service.core.presets import list_presets, load_preset, parse_document
from hpo_service.core.records import StudyStatus
from hpo_service.core.settings import Settings
from hpo_service.db.store import Store
from hpo_service.service.best import Format, best_config, render
from hpo_service.service.studies import cancel_study, delete_study, submit_study


async def get_store(request: Request) -> Store:
    return request.app.state.store


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_answers(request: Request) -> AnswerCache:
    return request.app.state.answers


StoreDep = Annotated[Store, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
AnswersDep = Annotated[AnswerCache, Depends(get_answers)]
# A name no study can have (a NUL byte, a slash) is a 422 before any query.
StudyName = Annotated[str, Path(pattern=NAME_PATTERN, description="The study's name.")]

router = APIRouter(prefix="/v1")

# The largest offset or trial number asked for: within every database's 32-bit integers.
MAX_OFFSET = 2**31 - 1
EXAMPLE_DEFINITION = {
    "name": "sst2-minilm",
    "preset": "default",
    "model": {"name": "sentence-transformers/all-MiniLM-L6-v2"},
    "dataset": {
        "train": "SST-2/train.tsv",
        "eval": "SST-2/dev.tsv",
        "text_fields": ["sentence"],
        "label_field": "label",
        "max_train_samples": 2000,
    },
    "objective": {"metric": "accuracy"},
    "parameters": {"num_train_epochs": 3},
    "early_stopping": {"type": "asha", "grace_period": 1},
    "limits": {"trials": 20, "concurrent_trials": 2},
}
MEDIA_TYPES: dict[Format, str] = {
    "json": "application/json",
    "yaml": "application/yaml",
    "env": "text/plain",
    "training-args": "application/json",
}
ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": Message, "description": "No study of that name."},
    409: {"model": Message, "description": "The study's state does not allow this."},
}


@router.post(
    "/studies",
    status_code=status.HTTP_201_CREATED,
    response_model=StudySummary,
    summary="Submit a study",
    responses={
        409: {"model": Message, "description": "A study of that name exists."},
        413: {"model": Message, "description": "The body is over the size limit."},
        422: {"model": ValidationErrors, "description": "One entry per bad field."},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "A study definition (see `hpo schema`), as JSON or YAML.",
            "content": {
                "application/json": {"example": EXAMPLE_DEFINITION},
                "application/yaml": {"example": "name: sst2-minilm\npreset: default\n..."},
            },
        }
    },
)
async def create_study(
    request: Request, response: Response, store: StoreDep, settings: SettingsDep
) -> StudySummary:
    """Queue a study; it starts when a slot is free, in order of submission."""
    body = await read_body(request, settings.max_body_bytes)
    document = _parse_body(body, request.headers.get("content-type", ""))
    record = await run_in_threadpool(submit_study, document, store, settings)
    scheduler = getattr(request.app.state, "scheduler", None)
    if scheduler is not None:  # it starts now if a slot is free, not at the next look
        scheduler.wake()
    response.headers["Location"] = f"/v1/studies/{record.name}"
    return StudySummary.of(record, None)


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body; ``PayloadTooLargeError`` (413) past ``limit`` bytes, declared or
    streamed."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"the body is over the limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise PayloadTooLargeError(f"the body is over the limit of {limit} bytes")
    return bytes(body)


def _parse_body(body: bytes, content_type: str) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DefinitionError("body", "is not UTF-8 text") from error
    return parse_document(text, source="body", syntax="json" if "json" in content_type else "yaml")


@router.get("/studies", response_model=StudyPage, summary="List studies")
def list_studies(
    store: StoreDep,
    status: Annotated[StudyStatus | None, Query(description="Only studies in this state.")] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> StudyPage:
    """Studies in order of submission, a page at a time."""
    page, total = store.study_page(status, offset, limit)
    items = [StudySummary.of(study, best) for study, best in page]
    return StudyPage(items=items, total=total, offset=offset, limit=limit)


@router.get("/studies/{name}", response_model=StudyDetail, responses=ERRORS)
def get_study(name: StudyName, store: StoreDep, answers: AnswersDep) -> Response:
    """Status, trial counts, progress, best so far, timestamps and error of one study."""

    def build() -> tuple[str, bool]:
        record, best, run_times = store.study_detail(name)
        summary = StudySummary.of(record, best)
        definition = StudyDefinition.model_validate(record.resolved_definition)
        outlook = forecast(run_times, definition, datetime.now(UTC))
        body = StudyDetail(
            **summary.model_dump(),
            definition=record.definition,
            resolved_definition=record.resolved_definition,
            budget=Budget.of(outlook, definition, record.status.is_active),
        ).model_dump_json()
        # A running trial's time, and so the spend, goes on by itself: built at every read.
        return body, not run_times.running

    return _json(answers.answer(("study", name), store.study_version(name), build))


@router.get("/studies/{name}/trials", response_model=TrialPage, responses=ERRORS)
def list_trials(
    name: StudyName,
    store: StoreDep,
    answers: AnswersDep,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """The study's trials by number, a page at a time: parameters, state, objective, metrics,
    epochs and duration."""

    def build() -> tuple[str, bool]:
        page, total = store.trial_page(name, offset, limit)
        items = [TrialSummary.of(t) for t in page]
        answer = TrialPage(items=items, total=total, offset=offset, limit=limit)
        return answer.model_dump_json(), True

    key = ("trials", name, offset, limit)
    return _json(answers.answer(key, store.study_version(name), build))


def _json(body: str) -> Response:
    """An answer serialized already (FastAPI would validate the model again to serialize it)."""
    return Response(body, media_type="application/json")


@router.get("/studies/{name}/trials/{number}", response_model=TrialDetail, responses=ERRORS)
def get_trial(
    name: StudyName, number: Annotated[int, Path(ge=0, le=MAX_OFFSET)], store: StoreDep
) -> TrialDetail:
    """One trial with its learning curve (one evaluation per epoch)."""
    return TrialDetail.of(store.trial(name, number))


@router.get("/studies/{name}/pareto-front", response_model=ParetoFront, responses=ERRORS)
def get_pareto_front(name: StudyName, store: StoreDep) -> ParetoFront:
    """The study's Pareto front over its objectives, and the trial its `pick` rule picks (with
    one objective: its best trials, equal on it)."""
    record = store.get_study(name)
    goals, rule = record.goals, record.picking
    front = store.pareto_front(name)
    picked = pick(front, goals, rule)
    return ParetoFront(
        objectives=objectives_of(record),
        pick=Pick(
            rule=rule.rule,
            tolerance=rule.tolerance,
            description=describe(goals, rule),
            trial=None if picked is None else picked.number,
        ),
        items=[TrialSummary.of(t) for t in front],
    )


@router.get(
    "/studies/{name}/best",
    responses={
        **ERRORS,
        200: {
            "description": "The best configuration.",
            "content": {media_type: {} for media_type in MEDIA_TYPES.values()},
        },
    },
)
def get_best(
    name: StudyName,
    store: StoreDep,
    format: Annotated[Format, Query(description="json, yaml, env or training-args")] = "json",
) -> Response:
    """The best trial that ran its full budget, as a versioned document for CI: JSON or YAML,
    `KEY=VALUE` lines for a CI environment file, or the `TrainingArguments` keywords alone."""
    return Response(render(best_config(store, name), format), media_type=MEDIA_TYPES[format])


@router.post("/studies/{name}/cancel", response_model=StudySummary, responses=ERRORS)
def cancel(name: StudyName, store: StoreDep) -> StudySummary:
    """Cancel a queued or running study: running trials stop and no new ones start."""
    record = cancel_study(name, store)
    return StudySummary.of(record, store.best_trial(name))


@router.delete("/studies/{name}", status_code=status.HTTP_204_NO_CONTENT, responses=ERRORS)
def delete(name: StudyName, store: StoreDep, settings: SettingsDep) -> Response:
    """Delete a finished study with its trials, and Optuna's copy of it."""
    delete_study(name, store, settings.database_url)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/presets", response_model=list[Preset], summary="Search-space presets")
def presets() -> list[Preset]:
    """The presets in search_spaces/, each with the source it follows."""
    return [
        Preset(name=name, source=source, document=load_preset(name))
        for name, source in list_presets().items()
    ]
